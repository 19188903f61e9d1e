#!/bin/sh
# test stage: unit tests of the model this run trained ($ML_STORE/runs/$CD_RUN_ID/model.txt).
# Writes reports/junit.xml and exits non-zero if any test failed.
#
# These are sanity checks, not a quality bar: a model that is merely worse still passes them
# (the production gate's accuracy metric is what stops it). UNIT_MIN_TRAIN_ACCURACY (0.6)
# is the floor below which training is considered broken.
set -eu
. "$(dirname "$0")/lib.sh"

MODEL=$RUN_DIR/model.txt
REPORT=reports/junit.xml
MIN_TRAIN=${UNIT_MIN_TRAIN_ACCURACY:-0.6}
mkdir -p reports
junit_begin reports/.results

log "testing $MODEL"

# 1. the run's model exists
if [ -s "$MODEL" ]; then
    record model_file_exists pass "$MODEL"
else
    record model_file_exists fail "no model at $MODEL: did the build stage of run $RUN_ID succeed with the same ML_STORE?"
fi

# 2. parameters are sane (format, kind, numeric and finite weights)
ERR=$(model_error "$MODEL")
if [ -z "$ERR" ]; then
    record parameters_sane pass "w1=$(model_get "$MODEL" w1) w2=$(model_get "$MODEL" w2) b=$(model_get "$MODEL" b)"
else
    record parameters_sane fail "$ERR"
fi

# 3. the model records the run that trained it
GOT=$(model_get "$MODEL" run)
if [ "$GOT" = "$RUN_ID" ]; then
    record provenance_matches_run pass "run $GOT"
else
    record provenance_matches_run fail "model says run '${GOT:-?}', expected '$RUN_ID'"
fi

# 4-5. predictions on the training set are all 0/1, and accuracy clears a low floor
if [ -z "$ERR" ] && EVAL=$(model_eval "$MODEL" "$HERE/data/train.csv"); then
    ROWS=$(field rows "$EVAL") INVALID=$(field invalid "$EVAL") ACC=$(field accuracy "$EVAL")
    if [ "$INVALID" -eq 0 ] && [ "$ROWS" -gt 0 ]; then
        record predictions_binary pass "$ROWS rows, every prediction in {0,1}"
    else
        record predictions_binary fail "$INVALID of $ROWS rows gave no valid 0/1 prediction"
    fi
    if awk -v a="$ACC" -v m="$MIN_TRAIN" 'BEGIN { exit !(a + 0 >= m + 0) }'; then
        record train_accuracy_floor pass "train accuracy $ACC >= $MIN_TRAIN"
    else
        record train_accuracy_floor fail "train accuracy $ACC < $MIN_TRAIN: training is broken"
    fi
else
    record predictions_binary fail "model not loadable: ${ERR:-evaluation failed}"
    record train_accuracy_floor fail "model not loadable: ${ERR:-evaluation failed}"
fi

# 6-7. fixed points far from any sensible decision boundary
known_point() { # NAME X1 X2 WANT
    if OUT=$(model_predict "$MODEL" "$2" "$3") && [ "${OUT%% *}" = "$4" ]; then
        record "$1" pass "($2, $3) -> $4 (p=${OUT#* })"
    else
        record "$1" fail "($2, $3): expected label $4, got '${OUT:-nothing}'"
    fi
}
known_point known_point_positive 2.0 3.0 1
known_point known_point_negative -2.0 -3.0 0

junit_write ml-model.unit "$REPORT" && STATUS=0 || STATUS=1
rm -f reports/.results
TOTAL=$(grep -c '<testcase' "$REPORT" || true)
FAILED=$(grep -c '<failure' "$REPORT" || true)
log "$((TOTAL - FAILED))/$TOTAL unit tests passed; report in $REPORT"
exit "$STATUS"
