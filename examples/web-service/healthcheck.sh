#!/bin/sh
# monitor stage: checks the PRODUCTION container after the deploy. Fails (exit 1) if it is not
# running, restarts, Docker reports it unhealthy, or any of WEB_MONITOR_CHECKS (5) health
# requests, WEB_MONITOR_INTERVAL (1) seconds apart, from a throwaway container on its network
# fails. The stage has on_failure: rollback, so a failure puts the previous release back.
#
# SIMULATE_INCIDENT=1 (a run param) makes the check fail on purpose, to try the rollback path:
#   cdctl run start web-service --revision v3 --param SIMULATE_INCIDENT=1 --watch
set -eu
. "$(dirname "$0")/lib.sh"

NAME=$(container_for production)
ALIAS=$(alias_for production)
CHECKS=${WEB_MONITOR_CHECKS:-5}
INTERVAL=${WEB_MONITOR_INTERVAL:-1}
case $CHECKS in '' | 0 | *[!0-9]*) die "WEB_MONITOR_CHECKS must be a positive integer" ;; esac
case $INTERVAL in '' | *[!0-9]*) die "WEB_MONITOR_INTERVAL must be a whole number of seconds" ;; esac
[ "$INTERVAL" -gt 0 ] || INTERVAL=1
FAILS=0
check() { # check NAME ok|fail MESSAGE
    if [ "$2" = ok ]; then log "ok   $1: $3"; else log "FAIL $1: $3"; FAILS=$((FAILS + 1)); fi
}

require_docker
log "checking production container $NAME"
STATE=$(inspect "$NAME" '{{.State.Status}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}')
if [ -z "$STATE" ]; then
    check running fail "no container $NAME"
else
    # shellcheck disable=SC2086  # status, restart count, health: three words
    set -- $STATE
    if [ "$1" = running ]; then check running ok "$NAME is running"; else check running fail "$NAME is $1"; fi
    if [ "$2" = 0 ]; then check restarts ok "no restarts"; else check restarts fail "restarted $2 times"; fi
    if [ "$3" != unhealthy ]; then check docker_health ok "Docker health: $3"; else check docker_health fail "Docker reports it unhealthy"; fi
fi

RUNNING_IMAGE=$(inspect "$NAME" '{{.Config.Image}}')
RUNNING_REV=$(label "$NAME" conveyor.revision)
log "production runs ${RUNNING_IMAGE:-nothing} (revision ${RUNNING_REV:-?}, run $(label "$NAME" conveyor.run), deployed $(label "$NAME" conveyor.deployed-at)); previous: $(label "$NAME" conveyor.previous-image)"
[ "$RUNNING_REV" = "$REVISION" ] || log "note: production runs revision ${RUNNING_REV:-?}, not this run's $REVISION"

if [ -n "$RUNNING_REV" ]; then
    log "probing http://$ALIAS:$PORT $CHECKS times, ${INTERVAL}s apart"
    OUT=$(probe "http://$ALIAS:$PORT" "$RUNNING_REV" "$CHECKS" "$INTERVAL" 2>&1) && RC=0 || RC=$?
    SEEN=0
    while read -r kind name value; do
        case $kind in
            check)
                SEEN=1
                if [ "${value%% *}" = pass ]; then check "$name" ok "${value#* }"; else check "$name" fail "${value#* }"; fi ;;
            metric) [ "$name" != availability ] || AVAIL=$value; [ "$name" != answered ] || ANSWERED=$value; [ "$name" != requests ] || SENT=$value ;;
        esac
    done <<EOT
$OUT
EOT
    if [ "$SEEN" = 0 ]; then
        check probe fail "the probe container failed (exit $RC): $(printf '%s' "$OUT" | tail -n 3)"
    elif [ "${ANSWERED:-0}" = "${SENT:-x}" ]; then
        check availability ok "$ANSWERED/$SENT health requests answered"
    else
        check availability fail "${ANSWERED:-0}/${SENT:-?} health requests answered (availability ${AVAIL:-?})"
    fi
fi

if [ "${SIMULATE_INCIDENT:-0}" = 1 ]; then
    check simulated_incident fail "SIMULATE_INCIDENT=1: failing on purpose so on_failure: rollback runs"
fi

if [ "$FAILS" -gt 0 ]; then
    log "UNHEALTHY: $FAILS check(s) failed"
    exit 1
fi
log "healthy"
