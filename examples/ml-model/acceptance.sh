#!/bin/sh
# acceptance stage: evaluates the model in the STAGING slot on data/holdout.csv (rows the
# model never saw) and writes
#   metrics.json    {"accuracy": ..., "latency_ms": ..., ...}  -> the production gate's metrics
#   acceptance.xml  JUnit: the staging model loads, is this run's, scores every row validly
#
# Accuracy itself is not a test here: judging it is the gate's job (min 0.90, at most 0.02
# below what production was promoted with), so a worse model fails at the gate, with the
# accuracy as the reason. latency_ms is the mean wall time of one prediction request (load
# the model + score one row, as a scoring process would), over LATENCY_SAMPLES (20) requests
# (more when the clock is coarse).
set -eu
. "$(dirname "$0")/lib.sh"

MODEL=$ML_STORE/staging/model.txt
HOLDOUT=$HERE/data/holdout.csv
SAMPLES=${LATENCY_SAMPLES:-20}
MAX_LATENCY=${ACCEPT_MAX_LATENCY_MS:-1000}
case $SAMPLES in '' | *[!0-9]* | 0) die "LATENCY_SAMPLES must be a positive integer" ;; esac
rm -f metrics.json acceptance.xml
junit_begin .acceptance-results

log "evaluating staging model $MODEL on $(($(wc -l < "$HOLDOUT") - 1)) holdout rows"

ERR=$(model_error "$MODEL")
if [ -z "$ERR" ]; then
    record staging_model_loads pass "w1=$(model_get "$MODEL" w1) w2=$(model_get "$MODEL" w2) b=$(model_get "$MODEL" b)"
else
    record staging_model_loads fail "$ERR"
fi

STAGED_RUN=$(kv "$ML_STORE/staging/deployed.txt" run)
if [ "$STAGED_RUN" = "$RUN_ID" ]; then
    record staging_is_this_run pass "staging holds run $RUN_ID (revision $(kv "$ML_STORE/staging/deployed.txt" revision))"
else
    record staging_is_this_run fail "staging holds run '${STAGED_RUN:-none}', not this run '$RUN_ID' (another run deployed to staging meanwhile?)"
fi

EVAL=
if [ -z "$ERR" ] && EVAL=$(model_eval "$MODEL" "$HOLDOUT"); then
    ROWS=$(field rows "$EVAL") INVALID=$(field invalid "$EVAL")
    if [ "$ROWS" -gt 0 ] && [ "$INVALID" -eq 0 ]; then
        record holdout_predictions_valid pass "$ROWS rows scored, every prediction in {0,1}"
    else
        record holdout_predictions_valid fail "$INVALID of $ROWS holdout rows gave no valid 0/1 prediction"
    fi
else
    record holdout_predictions_valid fail "model not loadable: ${ERR:-evaluation failed}"
    EVAL=
fi

# Wall clock in microseconds, and its resolution: GNU date has %N; busybox and BSD date do not,
# so fall back to /proc/uptime (10 ms), then to whole seconds. With a coarse clock, requests
# are timed in batches until at least 10 clock ticks have passed.
if _t=$(date +%s%N 2>/dev/null) && case $_t in '' | *[!0-9]*) false ;; esac; then
    CLOCK_RES=1
    now_us() { _t=$(date +%s%N); echo $((_t / 1000)); }
elif [ -r /proc/uptime ]; then
    CLOCK_RES=10000
    now_us() { awk '{ printf "%.0f\n", $1 * 1000000 }' /proc/uptime; }
else
    CLOCK_RES=1000000
    now_us() { echo "$(date +%s)000000"; }
fi
LATENCY=
if [ -n "$EVAL" ]; then
    POINT=$(awk -F, 'NR == 2 { print $1, $2; exit }' "$HOLDOUT")
    START=$(now_us)
    i=0
    while :; do
        j=0
        while [ "$j" -lt "$SAMPLES" ]; do
            # shellcheck disable=SC2086
            model_predict "$MODEL" $POINT > /dev/null
            j=$((j + 1))
        done
        i=$((i + SAMPLES))
        END=$(now_us)
        [ $((END - START)) -lt $((10 * CLOCK_RES)) ] && [ "$i" -lt 2000 ] || break
    done
    SAMPLES=$i
    LATENCY=$(awk -v a="$START" -v b="$END" -v n="$SAMPLES" 'BEGIN { printf "%.3f", (b - a) / 1000 / n }')
    if awk -v l="$LATENCY" -v m="$MAX_LATENCY" 'BEGIN { exit !(l + 0 <= m + 0) }'; then
        record latency_within_budget pass "${LATENCY} ms per prediction request <= ${MAX_LATENCY} ms"
    else
        record latency_within_budget fail "${LATENCY} ms per prediction request > ${MAX_LATENCY} ms"
    fi
else
    record latency_within_budget fail "model not loadable, latency not measured"
fi

# metrics.json: numbers only; with no usable model it is an empty object, so the gate reports
# the accuracy metric as missing instead of judging a made-up number.
if [ -n "$EVAL" ]; then
    printf '{"accuracy": %s, "latency_ms": %s, "precision": %s, "recall": %s, "f1": %s, "holdout_rows": %s}\n' \
        "$(field accuracy "$EVAL")" "$LATENCY" "$(field precision "$EVAL")" "$(field recall "$EVAL")" \
        "$(field f1 "$EVAL")" "$(field rows "$EVAL")" > metrics.json
else
    echo '{}' > metrics.json
fi

junit_write ml-model.acceptance acceptance.xml && STATUS=0 || STATUS=1
rm -f .acceptance-results
TOTAL=$(grep -c '<testcase' acceptance.xml || true)
FAILED=$(grep -c '<failure' acceptance.xml || true)

echo "================ acceptance summary ================"
if [ -z "$ERR" ]; then
    echo "model        staging, run ${STAGED_RUN:-?}, variant $(model_get "$MODEL" variant), features $(model_get "$MODEL" features)"
else
    echo "model        staging: $ERR"
fi
if [ -n "$EVAL" ]; then
    echo "holdout      $(field correct "$EVAL")/$(field rows "$EVAL") correct (tp $(field tp "$EVAL"), fp $(field fp "$EVAL"), fn $(field fn "$EVAL"), tn $(field tn "$EVAL"))"
    echo "accuracy     $(field accuracy "$EVAL")   (production gate: min 0.90, max regression 0.02)"
    echo "precision    $(field precision "$EVAL")  recall $(field recall "$EVAL")  f1 $(field f1 "$EVAL")"
    echo "latency      $LATENCY ms per prediction request ($SAMPLES requests, clock resolution ${CLOCK_RES} us)"
fi
echo "tests        $((TOTAL - FAILED))/$TOTAL acceptance tests passed"
echo "metrics.json $(cat metrics.json)"
echo "===================================================="
exit "$STATUS"
