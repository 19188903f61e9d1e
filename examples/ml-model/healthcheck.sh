#!/bin/sh
# monitor stage: checks that the PRODUCTION model loads, matches the digest recorded when it
# was deployed, and scores a few known points correctly. Exits non-zero otherwise; the stage
# has on_failure: rollback, so a failure here rolls production back to the previous model.
#
# SIMULATE_INCIDENT=1 (a run param) makes the check fail on purpose, to try the rollback path:
#   cdctl run start ml-model --param SIMULATE_INCIDENT=1
set -eu
. "$(dirname "$0")/lib.sh"

P=$ML_STORE/production
MODEL=$P/model.txt
FAILS=0
check() { # check NAME ok|fail MESSAGE
    if [ "$2" = ok ]; then log "ok   $1: $3"; else log "FAIL $1: $3"; FAILS=$((FAILS + 1)); fi
}

log "checking production model in $P"
ERR=$(model_error "$MODEL")
if [ -z "$ERR" ]; then check loads ok "w1=$(model_get "$MODEL" w1) w2=$(model_get "$MODEL" w2) b=$(model_get "$MODEL" b)"
else check loads fail "$ERR"; fi

if [ -f "$P/deployed.txt" ]; then
    WANT=$(kv "$P/deployed.txt" model_digest)
    GOT=$(model_digest "$MODEL" 2>/dev/null || true)
    if [ -n "$WANT" ] && [ "$WANT" = "$GOT" ]; then check digest ok "model.txt unchanged since deploy ($GOT)"
    else check digest fail "model.txt digest '${GOT:-none}' differs from the deployed one '${WANT:-none}'"; fi
    DEPLOYED_RUN=$(kv "$P/deployed.txt" run)
    log "production serves run $DEPLOYED_RUN (revision $(kv "$P/deployed.txt" revision), variant $(kv "$P/deployed.txt" variant), deployed $(kv "$P/deployed.txt" deployed_at))"
    [ "$DEPLOYED_RUN" = "$RUN_ID" ] || log "note: production serves run $DEPLOYED_RUN, not this run $RUN_ID"
else
    check deployed_record fail "no $P/deployed.txt"
fi

# Points far on either side of the boundary any usable model draws.
for pt in "2.0 3.0 1" "-2.0 -3.0 0" "1.5 2.5 1" "-1.5 -2.5 0"; do
    set -- $pt
    if OUT=$(model_predict "$MODEL" "$1" "$2") && [ "${OUT%% *}" = "$3" ]; then
        check "point($1,$2)" ok "-> $3 (p=${OUT#* })"
    else
        check "point($1,$2)" fail "expected $3, got '${OUT:-nothing}'"
    fi
done

if [ "${SIMULATE_INCIDENT:-0}" = 1 ]; then
    check simulated_incident fail "SIMULATE_INCIDENT=1: failing on purpose so on_failure: rollback runs"
fi

if [ "$FAILS" -gt 0 ]; then
    log "UNHEALTHY: $FAILS check(s) failed"
    exit 1
fi
log "healthy"
