#!/bin/sh
# build stage: trains a two-feature logistic regression on data/train.csv with batch gradient
# descent (in awk) and writes $ML_STORE/runs/$CD_RUN_ID/model.txt.
#
#   MODEL_VARIANT=good   (default) uses both features
#   MODEL_VARIANT=worse  drops feature x2, as a broken feature pipeline would: the model still
#                        trains, passes its unit tests and deploys to staging, but its holdout
#                        accuracy (~0.7) is below the production gate's floor.
#   ML_EPOCHS (300), ML_LEARNING_RATE (0.5) tune the optimiser.
set -eu
. "$(dirname "$0")/lib.sh"

VARIANT=${MODEL_VARIANT:-good}
EPOCHS=${ML_EPOCHS:-300}
LR=${ML_LEARNING_RATE:-0.5}
case $VARIANT in
    good) USE_X2=1 ;;
    worse) USE_X2=0 ;;
    *) die "MODEL_VARIANT must be 'good' or 'worse', not '$VARIANT'" ;;
esac
case $EPOCHS in '' | *[!0-9]*) die "ML_EPOCHS must be a positive integer, not '$EPOCHS'" ;; esac
[ "$EPOCHS" -ge 1 ] || die "ML_EPOCHS must be at least 1"
awk -v v="$LR" 'BEGIN { exit !(v ~ /^[0-9]*\.?[0-9]+$/ && v + 0 > 0 && v + 0 <= 10) }' ||
    die "ML_LEARNING_RATE must be a number in (0, 10], not '$LR'"

DATA=$HERE/data/train.csv
[ -s "$DATA" ] || die "training data $DATA is missing"
mkdir -p "$RUN_DIR"
TMP=$RUN_DIR/model.txt.tmp.$$
trap 'rm -f "$TMP"' EXIT

log "run $RUN_ID, revision $REVISION, variant $VARIANT, $EPOCHS epochs, learning rate $LR"
[ "$USE_X2" = 1 ] || log "variant 'worse': feature x2 is dropped, the model sees x1 only"

awk -F, -v epochs="$EPOCHS" -v lr="$LR" -v use_x2="$USE_X2" -v out="$TMP" \
    -v run="$RUN_ID" -v rev="$REVISION" -v variant="$VARIANT" -v stamp="$(now_utc)" "$MATH_AWK"'
NR == 1 { next }                                     # header
NF == 3 { n++; x1[n] = $1 + 0; x2[n] = use_x2 ? $2 + 0 : 0; y[n] = $3 + 0 }
END {
    if (n < 10) { print "too few training rows: " n > "/dev/stderr"; exit 1 }
    printf "loaded %d training rows\n", n
    w1 = 0; w2 = 0; b = 0
    for (e = 1; e <= epochs; e++) {
        show = e == 1 || e % 50 == 0 || e == epochs
        g1 = 0; g2 = 0; gb = 0; loss = 0
        for (i = 1; i <= n; i++) {
            p = sigmoid(w1 * x1[i] + w2 * x2[i] + b)
            d = p - y[i]
            g1 += d * x1[i]; g2 += d * x2[i]; gb += d
            if (show) { q = y[i] ? p : 1 - p; loss -= xlog(q < 1e-12 ? 1e-12 : q) }
        }
        w1 -= lr * g1 / n; w2 -= lr * g2 / n; b -= lr * gb / n
        if (show)
            printf "epoch %4d/%d  loss %.4f  w1 %+.4f  w2 %+.4f  b %+.4f\n", e, epochs, loss / n, w1, w2, b
    }
    correct = 0
    for (i = 1; i <= n; i++) if ((sigmoid(w1 * x1[i] + w2 * x2[i] + b) >= 0.5) == y[i]) correct++
    printf "train accuracy %.4f (%d/%d)\n", correct / n, correct, n
    print "# conveyor ml-model: logistic regression, p(1) = sigmoid(w1*x1 + w2*x2 + b)" > out
    print "format 1" > out
    print "kind logistic" > out
    printf "w1 %.6f\n", w1 > out
    printf "w2 %.6f\n", w2 > out
    printf "b %.6f\n", b > out
    print "features " (use_x2 ? "x1,x2" : "x1") > out
    print "variant " variant > out
    printf "epochs %d\n", epochs > out
    printf "learning_rate %s\n", lr > out
    printf "train_rows %d\n", n > out
    printf "train_loss %.6f\n", loss / n > out
    printf "train_accuracy %.4f\n", correct / n > out
    print "run " run > out
    print "revision " rev > out
    print "trained_at " stamp > out
    close(out)
}' "$DATA"

ERR=$(model_error "$TMP")
[ -z "$ERR" ] || die "trained model is unusable: $ERR"
mv -f "$TMP" "$RUN_DIR/model.txt"
trap - EXIT
log "model written to $RUN_DIR/model.txt:"
sed 's/^/    /' "$RUN_DIR/model.txt"
