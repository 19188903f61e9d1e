#!/bin/sh
# test stage: runs the image's own tests (/test.sh, from test.sh in this folder) in a throwaway
# container with no network, and turns its "ok NAME - detail" / "not ok NAME - detail" lines
# into reports/junit.xml, together with two checks made from the host (the image exists and is
# labelled with this revision). Exits non-zero if any test failed.
#     docker run --rm --network none -e EXPECT_REVISION=$CD_REVISION \
#         $WEB_PREFIX:$CD_REVISION /bin/sh /test.sh
set -eu
. "$(dirname "$0")/lib.sh"

REPORT=reports/junit.xml
mkdir -p reports
junit_begin reports/.results

require_docker
if ! image_exists "$IMAGE"; then
    record image_exists fail "no image $IMAGE on this Docker engine: did this run's build stage succeed here?"
    junit_write web-service.image "$REPORT" || true
    rm -f reports/.results
    die "no image $IMAGE"
fi
record image_exists pass "$IMAGE $(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19)"
GOT=$(docker image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$IMAGE")
if [ "$GOT" = "$REVISION" ]; then
    record image_labelled_with_revision pass "org.opencontainers.image.revision=$GOT"
else
    record image_labelled_with_revision fail "image says revision '$GOT', expected '$REVISION'"
fi

log "running /test.sh in $IMAGE"
# shellcheck disable=SC2086
OUT=$(docker run --rm --name "$PREFIX-test-$$" --network none $LABELS --label conveyor.role=test \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -e "EXPECT_REVISION=$REVISION" "$IMAGE" /bin/sh /test.sh 2>&1) && RC=0 || RC=$?
printf '%s\n' "$OUT" | sed 's/^/    | /'

# "ok NAME - detail" / "not ok NAME - detail" -> results; anything else is only logged.
COUNT=0
while IFS= read -r line; do
    case $line in
        'ok '*) rest=${line#ok }; status=pass ;;
        'not ok '*) rest=${line#not ok }; status=fail ;;
        *) continue ;;
    esac
    name=${rest%% - *}
    detail=${rest#"$name"}; detail=${detail# - }
    printf '%s\t%s\t%s\n' "in_image.$name" "$status" "$detail" >> "$JUNIT_RESULTS"
    COUNT=$((COUNT + 1))
done <<EOT
$OUT
EOT

if [ "$COUNT" -eq 0 ]; then
    record in_image_tests_ran fail "/test.sh printed no results (exit $RC): $(printf '%s' "$OUT" | tail -n 3)"
elif [ "$RC" -ne 0 ] && ! grep -q "	fail	" "$JUNIT_RESULTS"; then
    record in_image_tests_exit fail "/test.sh exited $RC without reporting a failed test"
fi

junit_write web-service.image "$REPORT" && STATUS=0 || STATUS=1
rm -f reports/.results
TOTAL=$(grep -c '<testcase' "$REPORT" || true)
FAILED=$(grep -c '<failure' "$REPORT" || true)
log "$((TOTAL - FAILED))/$TOTAL tests passed; report in $REPORT"
exit "$STATUS"
