#!/bin/sh
# acceptance stage: probes the STAGING container the way a client would, from a throwaway
# container on the same internal network (busybox wget from this revision's image; nothing is
# pulled, nothing is published), and writes
#   acceptance.xml  JUnit: staging runs this revision, / is HTML and shows the revision,
#                   /health is ok, a missing page is a 404
#   metrics.json    {"availability": ..., "latency_ms": ..., "requests": ...}
# The production gate needs every acceptance test to pass, availability >= 0.99 and
# latency_ms <= 250 (see pipeline.yaml). Like the tests, the metrics are judged there, not here.
#   WEB_PROBE_REQUESTS (50): health requests sent back to back for availability and latency
set -eu
. "$(dirname "$0")/lib.sh"

NAME=$(container_for staging)
ALIAS=$(alias_for staging)
REQUESTS=${WEB_PROBE_REQUESTS:-50}
case $REQUESTS in '' | 0 | *[!0-9]*) die "WEB_PROBE_REQUESTS must be a positive integer" ;; esac
rm -f metrics.json acceptance.xml
junit_begin .acceptance-results

require_docker

RUNNING=$(inspect "$NAME" '{{.State.Running}}')
if [ "$RUNNING" = true ]; then
    record staging_running pass "container $NAME is running"
else
    record staging_running fail "container $NAME is ${RUNNING:+not running}${RUNNING:-missing}"
fi
GOT_IMAGE=$(inspect "$NAME" '{{.Config.Image}}')
GOT_REV=$(label "$NAME" conveyor.revision)
if [ "$GOT_IMAGE" = "$IMAGE" ] && [ "$GOT_REV" = "$REVISION" ]; then
    record staging_runs_this_revision pass "$NAME runs $GOT_IMAGE (run $(label "$NAME" conveyor.run))"
else
    record staging_runs_this_revision fail "$NAME runs '${GOT_IMAGE:-nothing}' (revision '${GOT_REV:-?}'), not $IMAGE: another run deployed to staging meanwhile?"
fi

URL=http://$ALIAS:$PORT
log "probing $URL from a throwaway container on network $NETWORK ($REQUESTS requests)"
PROBE_OUT=$(probe "$URL" "$REVISION" "$REQUESTS" 0 2>&1) && PROBE_RC=0 || PROBE_RC=$?
CHECKS=0 AVAILABILITY='' LATENCY='' SENT='' ANSWERED=''
while read -r kind name value; do
    case $kind in
        check) record "$name" "${value%% *}" "${value#* }"; CHECKS=$((CHECKS + 1)) ;;
        metric)
            case $name in
                availability) AVAILABILITY=$value ;;
                latency_ms) LATENCY=$value ;;
                requests) SENT=$value ;;
                answered) ANSWERED=$value ;;
            esac ;;
        *) [ -z "$kind" ] || log "probe: $kind $name $value" ;;
    esac
done <<EOT
$PROBE_OUT
EOT
[ "$CHECKS" -gt 0 ] || record probe_ran fail "the probe container failed (exit $PROBE_RC): $(printf '%s' "$PROBE_OUT" | tail -n 3)"

# metrics.json: numbers only; without a measurement it is an empty object, so the gate reports
# the metrics as missing instead of judging made-up numbers.
if [ -n "$AVAILABILITY" ] && [ -n "$LATENCY" ]; then
    printf '{"availability": %s, "latency_ms": %s, "requests": %s, "answered": %s}\n' \
        "$AVAILABILITY" "$LATENCY" "$SENT" "$ANSWERED" > metrics.json
else
    echo '{}' > metrics.json
fi

junit_write web-service.acceptance acceptance.xml && STATUS=0 || STATUS=1
rm -f .acceptance-results
TOTAL=$(grep -c '<testcase' acceptance.xml || true)
FAILED=$(grep -c '<failure' acceptance.xml || true)

echo "================ acceptance summary ================"
echo "staging      $NAME: ${GOT_IMAGE:-nothing} at $URL"
echo "requests     ${ANSWERED:-0}/${SENT:-0} answered ok (availability ${AVAILABILITY:-?}; gate: min 0.99)"
echo "latency      ${LATENCY:-?} ms per request (mean; gate: max 250)"
echo "tests        $((TOTAL - FAILED))/$TOTAL acceptance tests passed (gate: all)"
echo "metrics.json $(cat metrics.json)"
echo "===================================================="
exit "$STATUS"
