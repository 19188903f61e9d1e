#!/bin/sh
# Regenerates train.csv and holdout.csv. The committed files are the source of truth; this
# script only documents (and can reproduce) how they were made. Deterministic: a Park-Miller
# generator (exact in double precision) and Box-Muller, no awk rand().
#
# Two Gaussian classes with unit variance, centred at +(0.55, 1.55) (label 1) and
# -(0.55, 1.55) (label 0): both features together separate them well (~0.95 accuracy),
# x1 alone does not (~0.7), which is what MODEL_VARIANT=worse exploits.
set -eu
export LC_ALL=C
cd "$(dirname "$0")"
SEED=${SEED:-20240607}
gen() { # gen FILE ROWS SEED
    awk -v rows="$2" -v seed="$3" '
    function uniform() { seed = (seed * 16807) % 2147483647; return seed / 2147483647 }
    function gauss(  u, v) {
        u = uniform(); v = uniform()
        return sqrt(-2 * log(u)) * cos(6.283185307179586 * v)
    }
    BEGIN {
        print "x1,x2,label"
        for (i = 0; i < rows; i++) {
            y = i % 2; s = y ? 1 : -1
            printf "%.3f,%.3f,%d\n", s * 0.55 + gauss(), s * 1.55 + gauss(), y
        }
    }' > "$1"
}
gen train.csv 200 "$SEED"
gen holdout.csv 100 "$((SEED + 7777))"
