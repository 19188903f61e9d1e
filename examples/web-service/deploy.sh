#!/bin/sh
# deploy-staging / deploy-production stages:
#
#   ./deploy.sh staging       run $WEB_PREFIX:$CD_REVISION as container $WEB_PREFIX-staging
#   ./deploy.sh production    run $WEB_PREFIX:$CD_REVISION as container $WEB_PREFIX-production
#
# on the internal network $WEB_PREFIX (created if missing), reachable there as web-staging /
# web-production on port 8080. No port is published: nothing listens outside Docker's network.
#
# The new container starts beside the old one (as <name>-next), must answer /health from inside
# within WEB_READY_SECONDS (10); only then does it take the network alias and the old container
# is removed. If it does not become ready, it is removed and the old one keeps serving.
#
# Rollback needs nothing special: `cdctl rollback production` re-runs this same command with
# CD_REVISION set to the previous release (and CD_ROLLBACK=1), so it runs that revision's image,
# which is still on the engine (images are tagged by revision and never deleted here). The
# container records what it replaced in its labels (conveyor.previous-image/-revision).
set -eu
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 staging|production" >&2; exit 2; }
[ $# -eq 1 ] || usage
ENV_NAME=$1
case $ENV_NAME in staging | production) ;; *) usage ;; esac
NAME=$(container_for "$ENV_NAME")
ALIAS=$(alias_for "$ENV_NAME")
NEXT=$NAME-next
READY_SECONDS=${WEB_READY_SECONDS:-10}
case $READY_SECONDS in '' | *[!0-9]*) die "WEB_READY_SECONDS must be a whole number of seconds" ;; esac

require_docker
if [ "${CD_ROLLBACK:-0}" = 1 ]; then
    log "ROLLBACK run $RUN_ID: putting revision $REVISION back into $ENV_NAME"
fi
if ! image_exists "$IMAGE"; then
    if [ "${CD_ROLLBACK:-0}" = 1 ]; then
        die "no image $IMAGE on this Docker engine to roll back to (was it removed?). Rebuild it from revision $REVISION (./build.sh with CD_REVISION=$REVISION, or docker build), then run the rollback again"
    fi
    die "no image $IMAGE on this Docker engine: did this run's build stage run on an agent using the same engine?"
fi
ensure_network

# A deploy interrupted mid-switch may have left the new container serving as <name>-next
# with the old one gone: adopt it, so what serves keeps serving while it is replaced.
if [ -n "$(inspect "$NEXT" '{{.Id}}')" ]; then
    if [ -z "$(inspect "$NAME" '{{.Id}}')" ] && [ "$(inspect "$NEXT" '{{.State.Running}}')" = true ]; then
        log "$NEXT was left serving by an interrupted deploy; renaming it $NAME"
        docker rename "$NEXT" "$NAME"
    else
        log "removing $NEXT left by an interrupted deploy"
        docker rm -f "$NEXT" >/dev/null
    fi
fi

# What runs now, to note as the previous release.
PREV_IMAGE=$(inspect "$NAME" '{{.Config.Image}}')
PREV_REV=$(label "$NAME" conveyor.revision)
PREV_RUN=$(label "$NAME" conveyor.run)
if [ -n "$PREV_IMAGE" ]; then
    log "$ENV_NAME now runs $PREV_IMAGE (revision ${PREV_REV:-?}, run ${PREV_RUN:-?})"
    if [ "$PREV_IMAGE" = "$IMAGE" ]; then
        # A redeploy of the same revision (a retry): keep the note of the release before it.
        PREV_IMAGE=$(label "$NAME" conveyor.previous-image)
        PREV_REV=$(label "$NAME" conveyor.previous-revision)
        log "same image: redeploying it; previous release stays ${PREV_IMAGE:-none}"
    fi
else
    log "$ENV_NAME has no container $NAME yet"
fi

# Until the switch starts, a failed or cancelled deploy removes the new container again.
SWITCHING=0
trap '[ "$SWITCHING" = 1 ] || docker rm -f "$NEXT" >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT HUP
trap 'exit 143' TERM

log "starting $NEXT from $IMAGE"
# --init: Docker's bundled init runs as PID 1 and passes SIGTERM on to httpd (which ignores it
# as PID 1), so a replaced container stops at once rather than after `docker stop`'s grace.
# shellcheck disable=SC2086
docker run -d --name "$NEXT" --network "$NETWORK" --restart unless-stopped --init \
    --read-only --cap-drop ALL --security-opt no-new-privileges --pids-limit 64 \
    $LABELS --label conveyor.role=service \
    --label "conveyor.environment=$ENV_NAME" --label "conveyor.revision=$REVISION" \
    --label "conveyor.run=$RUN_ID" --label "conveyor.pipeline=${CD_PIPELINE:-}" \
    --label "conveyor.rollback=${CD_ROLLBACK:-0}" --label "conveyor.deployed-at=$(now_utc)" \
    --label "conveyor.previous-image=$PREV_IMAGE" --label "conveyor.previous-revision=$PREV_REV" \
    "$IMAGE" >/dev/null

# Ready: /health answers "ok" from inside the new container (its own loopback).
i=0
until [ "$(docker exec "$NEXT" /bin/busybox wget -q -O - "http://127.0.0.1:$PORT/health" 2>/dev/null)" = ok ]; do
    i=$((i + 1))
    if [ "$i" -gt $((READY_SECONDS * 4)) ] || [ "$(inspect "$NEXT" '{{.State.Running}}')" != true ]; then
        log "$NEXT did not become ready; its log:"
        docker logs --tail 20 "$NEXT" 2>&1 | sed 's/^/    | /'
        die "$IMAGE did not answer /health within ${READY_SECONDS}s; $ENV_NAME left as it was (${PREV_IMAGE:-nothing})"
    fi
    sleep 0.25 2>/dev/null || sleep 1
done
log "$NEXT is ready"

# Switch: the new container takes the alias, the old one goes, the new one takes the name.
SWITCHING=1
docker network disconnect "$NETWORK" "$NEXT"
docker network connect --alias "$ALIAS" "$NETWORK" "$NEXT"
if [ -n "$(inspect "$NAME" '{{.Id}}')" ]; then
    docker stop -t 5 "$NAME" >/dev/null 2>&1 || true
    docker rm -f "$NAME" >/dev/null
fi
docker rename "$NEXT" "$NAME"

ID=$(inspect "$NAME" '{{.Id}}')
log "deployed $IMAGE (revision $REVISION, run $RUN_ID) to $ENV_NAME: container $NAME ($(echo "$ID" | cut -c1-12)), http://$ALIAS:$PORT/ on network $NETWORK"
if [ -n "$PREV_IMAGE" ]; then
    log "previous release: $PREV_IMAGE (revision ${PREV_REV:-?}); kept on the engine for rollback"
fi
{
    echo "environment=$ENV_NAME"
    echo "container=$NAME"
    echo "container_id=$ID"
    echo "image=$IMAGE"
    echo "image_id=$(inspect "$NAME" '{{.Image}}')"
    echo "revision=$REVISION"
    echo "run=$RUN_ID"
    echo "rollback=${CD_ROLLBACK:-0}"
    echo "previous_image=$PREV_IMAGE"
    echo "previous_revision=$PREV_REV"
    echo "url=http://$ALIAS:$PORT/"
    echo "network=$NETWORK"
} | tee deployed.txt | sed 's/^/    /'
