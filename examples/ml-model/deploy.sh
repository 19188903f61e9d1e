#!/bin/sh
# deploy-staging / deploy-production stages, and the production rollback command.
#
#   ./deploy.sh staging                copy this run's model into $ML_STORE/staging/
#   ./deploy.sh production             copy it into $ML_STORE/production/; the model it replaces
#                                      moves to $ML_STORE/production.prev/, and a copy of every
#                                      promoted model is kept in $ML_STORE/releases/<run>/
#   ./deploy.sh production --rollback  put the previous model (production.prev, or
#                                      releases/$CD_RUN_ID when that names an earlier release)
#                                      back into production; the replaced model goes to
#                                      $ML_STORE/rolled-back/<run>/
#
# Each slot holds model.txt and deployed.txt (run, revision, variant, model digest, time).
# Every action is appended to $ML_STORE/history.log.
set -eu
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 staging|production [--rollback]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
SLOT=$1
ROLLBACK=0
if [ $# -eq 2 ]; then [ "$2" = --rollback ] && ROLLBACK=1 || usage; fi
case $SLOT in staging | production) ;; *) usage ;; esac
[ "$ROLLBACK" = 0 ] || [ "$SLOT" = production ] || die "only production keeps a previous model to roll back to"

S=$ML_STORE
store_lock

history() { printf '%s %s %s run=%s revision=%s by=%s\n' "$(now_utc)" "$SLOT" "$1" "$2" "$3" "$RUN_ID" >> "$S/history.log"; }
describe() { # describe DIR: "run R (revision V, variant X)"
    printf 'run %s (revision %s, variant %s, deployed %s)' "$(kv "$1/deployed.txt" run)" \
        "$(kv "$1/deployed.txt" revision)" "$(kv "$1/deployed.txt" variant)" "$(kv "$1/deployed.txt" deployed_at)"
}

if [ "$ROLLBACK" = 1 ]; then
    [ -d "$S/production" ] || die "nothing is deployed to production in $S"
    BAD_RUN=$(kv "$S/production/deployed.txt" run)
    BAD_DESC=$(describe "$S/production")
    # What to restore: if this is run as part of the run whose release should come back (a
    # re-deploy of an earlier successful deployment), that release; otherwise (e.g. the monitor
    # of the run now in production failed) the model production replaced, production.prev.
    if [ "$RUN_ID" != "$BAD_RUN" ] && [ -f "$S/releases/$RUN_ID/model.txt" ]; then
        FROM=$S/releases/$RUN_ID
    elif [ -f "$S/production.prev/model.txt" ]; then
        FROM=$S/production.prev
    else
        die "no previous production model to restore ($S/production.prev is empty); production left as is: $BAD_DESC"
    fi
    ERR=$(model_error "$FROM/model.txt")
    [ -z "$ERR" ] || die "model in $FROM is unusable, not restoring it: $ERR"
    NEW=$S/.production.new.$$
    rm -rf "$NEW"
    cp -R "$FROM" "$NEW"
    printf 'restored_at=%s\nrestored_by=%s\nreplaced_run=%s\n' "$(now_utc)" "$RUN_ID" "$BAD_RUN" >> "$NEW/deployed.txt"
    mkdir -p "$S/rolled-back"
    rm -rf "$S/rolled-back/${BAD_RUN:-unknown}"
    mv "$S/production" "$S/rolled-back/${BAD_RUN:-unknown}"
    mv "$NEW" "$S/production"
    GOOD_RUN=$(kv "$S/production/deployed.txt" run)
    GOOD_REV=$(kv "$S/production/deployed.txt" revision)
    # The promotion chain now ends at the restored release; the release before it becomes the
    # new production.prev, so a second rollback goes one release further back.
    touch "$S/production.chain"
    awk -v bad="$BAD_RUN" -v good="$GOOD_RUN" '
        { l[++n] = $0; if ($0 == good) k = n }
        END {
            if (k) { for (i = 1; i <= k; i++) print l[i]; exit }
            if (n && l[n] == bad) n--
            for (i = 1; i <= n; i++) print l[i]
            print good
        }' "$S/production.chain" > "$S/production.chain.tmp"
    mv "$S/production.chain.tmp" "$S/production.chain"
    BEFORE=$(awk '{ l[++n] = $0 } END { if (n >= 2) print l[n - 1] }' "$S/production.chain")
    rm -rf "$S/production.prev"
    if [ -n "$BEFORE" ] && [ -f "$S/releases/$BEFORE/model.txt" ]; then
        cp -R "$S/releases/$BEFORE" "$S/production.prev"
    fi
    history rollback "$GOOD_RUN" "$GOOD_REV"
    log "ROLLED BACK production: restored model of $(describe "$S/production")"
    log "replaced model of $BAD_DESC (kept in $S/rolled-back/${BAD_RUN:-unknown})"
    log "restored parameters: w1=$(model_get "$S/production/model.txt" w1) w2=$(model_get "$S/production/model.txt" w2) b=$(model_get "$S/production/model.txt" b)"
    if [ -d "$S/production.prev" ]; then log "next rollback would restore $(describe "$S/production.prev")"
    else log "no earlier release left to roll back to"; fi
    exit 0
fi

SRC=$RUN_DIR/model.txt
[ -f "$SRC" ] || die "no model for run $RUN_ID at $SRC (build stage not run, or a different ML_STORE)"
ERR=$(model_error "$SRC")
[ -z "$ERR" ] || die "refusing to deploy an unusable model: $ERR"

NEW=$S/.$SLOT.new.$$
OLD=$S/.$SLOT.old.$$
rm -rf "$NEW" "$OLD"
mkdir -p "$NEW"
cp "$SRC" "$NEW/model.txt"
{
    echo "slot=$SLOT"
    echo "run=$RUN_ID"
    echo "revision=$REVISION"
    echo "pipeline=${CD_PIPELINE:-}"
    echo "variant=$(model_get "$SRC" variant)"
    echo "model_digest=$(model_digest "$SRC")"
    echo "deployed_at=$(now_utc)"
} > "$NEW/deployed.txt"

if [ -d "$S/$SLOT" ]; then
    CUR_RUN=$(kv "$S/$SLOT/deployed.txt" run)
    if [ "$SLOT" = production ] && [ "$CUR_RUN" != "$RUN_ID" ]; then
        log "previous production model: $(describe "$S/production") -> kept in production.prev"
        rm -rf "$S/production.prev"
        mv "$S/production" "$S/production.prev"
    else
        # staging, or a retried production deploy of the same run: production.prev stays as is
        mv "$S/$SLOT" "$OLD"
    fi
fi
mv "$NEW" "$S/$SLOT"
rm -rf "$OLD"

if [ "$SLOT" = production ]; then
    mkdir -p "$S/releases"
    rm -rf "$S/releases/$RUN_ID"
    cp -R "$S/production" "$S/releases/$RUN_ID"
    LAST=$(tail -n 1 "$S/production.chain" 2>/dev/null || true)
    [ "$LAST" = "$RUN_ID" ] || echo "$RUN_ID" >> "$S/production.chain"
fi
history deploy "$RUN_ID" "$REVISION"
log "deployed model of run $RUN_ID (revision $REVISION) to $SLOT: $S/$SLOT"
sed 's/^/    /' "$S/$SLOT/deployed.txt"
# A copy in the workspace, for anyone looking at this stage's files.
cp "$S/$SLOT/deployed.txt" ./deployed.txt 2>/dev/null || true
