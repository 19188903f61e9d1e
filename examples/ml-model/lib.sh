#!/bin/sh
# Shared helpers for the ml-model stage scripts. Sourced by them, not run on its own:
#     . "$(dirname "$0")/lib.sh"
# Plain POSIX sh + awk (works with dash, bash and busybox sh / busybox awk).
set -eu

export LC_ALL=C    # awk must print 0.95, never 0,95

# The model store: stages run in separate fresh workspaces (maybe on different agents), so the
# trained model travels through this directory, not through the workspace.
ML_STORE=${ML_STORE:-${TMPDIR:-/tmp}/conveyor-ml-store}
export ML_STORE
RUN_ID=${CD_RUN_ID:-local}
REVISION=${CD_REVISION:-unknown}
STAGE=${CD_STAGE:-$(basename "$0" .sh)}
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '[%s] %s\n' "$STAGE" "$*"; }
die() { printf '[%s] error: %s\n' "$STAGE" "$*" >&2; exit 1; }

case $RUN_ID in
    '' | . | .. | *[!A-Za-z0-9._-]*) die "CD_RUN_ID '$RUN_ID' is not usable in a path" ;;
esac
mkdir -p "$ML_STORE/runs" || die "cannot create model store $ML_STORE"
RUN_DIR=$ML_STORE/runs/$RUN_ID

now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# --- the model -------------------------------------------------------------------------------
# model.txt is "key value" lines; '#' lines are comments. Required: format 1, kind logistic,
# numeric w1 w2 b. p(label=1 | x1,x2) = 1 / (1 + exp(-(w1*x1 + w2*x2 + b))); label = p >= 0.5.

# exp() and log() written out in plain awk arithmetic: some awks (Debian's busybox-static,
# for one) are built without math support and stop at the first exp(), log() or ^.
MATH_AWK='
function xexp(x,   k, r, s, i) {
    if (!X_P2_READY) {
        X_P2[0] = 1
        for (i = 1; i <= 1100; i++) { X_P2[i] = X_P2[i - 1] * 2; X_P2[-i] = X_P2[-i + 1] / 2 }
        X_P2_READY = 1
    }
    if (x > 700) x = 700
    if (x < -700) x = -700
    k = x / 0.6931471805599453                   # x = k ln2 + r, |r| <= ln2 / 2
    k = k < 0 ? -int(0.5 - k) : int(k + 0.5)
    r = x - k * 0.6931471805599453
    # Taylor series to r^13 / 13! (error < 1e-16 for |r| <= 0.35), in Horner form
    s = 1 + r / 13; s = 1 + r / 12 * s; s = 1 + r / 11 * s; s = 1 + r / 10 * s
    s = 1 + r / 9 * s; s = 1 + r / 8 * s; s = 1 + r / 7 * s; s = 1 + r / 6 * s
    s = 1 + r / 5 * s; s = 1 + r / 4 * s; s = 1 + r / 3 * s; s = 1 + r / 2 * s
    return (1 + r * s) * X_P2[k]
}
function xlog(x,   k, t, t2, term, s, i) {   # x > 0
    k = 0
    while (x >= 2) { x /= 2; k++ }
    while (x < 1) { x *= 2; k-- }
    t = (x - 1) / (x + 1); t2 = t * t        # log(x) = 2 atanh(t), 0 <= t < 1/3
    term = t; s = 0
    for (i = 1; i <= 41; i += 2) { s += term / i; term *= t2 }
    return 2 * s + k * 0.6931471805599453
}
function sigmoid(z) {
    if (z > 30) z = 30
    if (z < -30) z = -30
    return 1 / (1 + xexp(-z))
}
'

# awk functions shared by every program below; the model file is passed as -v model=PATH.
MODEL_AWK=$MATH_AWK'
function is_num(v) { return v ~ /^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ }
function load_model(path,   line, f, n, r) {
    n = 0
    while ((r = (getline line < path)) > 0) {
        if (line ~ /^[ \t]*(#|$)/) continue
        split(line, f, " "); M[f[1]] = f[2]; n++
    }
    close(path)
    if (r < 0) return "cannot read " path
    if (n == 0) return "model file is empty"
    if (M["format"] != "1") return "unsupported format \"" M["format"] "\" (want 1)"
    if (M["kind"] != "logistic") return "unsupported kind \"" M["kind"] "\" (want logistic)"
    if (!is_num(M["w1"]) || !is_num(M["w2"]) || !is_num(M["b"]))
        return "parameters w1, w2, b must be numbers (got \"" M["w1"] "\", \"" M["w2"] "\", \"" M["b"] "\")"
    W1 = M["w1"] + 0; W2 = M["w2"] + 0; B = M["b"] + 0
    if (W1 > 1e6 || W1 < -1e6 || W2 > 1e6 || W2 < -1e6 || B > 1e6 || B < -1e6)
        return "parameters out of range (diverged training?)"
    if (W1 == 0 && W2 == 0) return "all weights are zero (model predicts a constant)"
    return ""
}
function score(x1, x2) { return sigmoid(W1 * x1 + W2 * x2 + B) }
function predict(x1, x2) { return score(x1, x2) >= 0.5 ? 1 : 0 }
'

# model_error FILE: prints why FILE is not a usable model; prints nothing if it is.
model_error() {
    [ -f "$1" ] || { echo "no model file at $1"; return 0; }
    awk -v model="$1" "$MODEL_AWK"'BEGIN { printf "%s", load_model(model) }' </dev/null
}

# model_get FILE KEY: prints the value of KEY (empty if absent).
model_get() {
    awk -v k="$2" '$1 == k { print $2; exit }' "$1" 2>/dev/null || true
}

# model_digest FILE: a checksum of the whole file (polynomial hash mod 2^31-1, exact in any
# awk), recorded at deploy time and checked by the healthcheck. cksum is not in every busybox.
model_digest() {
    awk 'BEGIN { for (i = 32; i < 127; i++) ord[sprintf("%c", i)] = i; h = 7 }
    {
        n = length($0)
        for (i = 1; i <= n; i++) { c = substr($0, i, 1); h = (h * 31 + ((c in ord) ? ord[c] : 1)) % 2147483647 }
        h = (h * 31 + 10) % 2147483647
    }
    END { printf "%d\n", h }' "$1"
}

# model_predict FILE X1 X2: prints the predicted label (0 or 1) and the probability.
model_predict() {
    awk -v model="$1" -v x1="$2" -v x2="$3" "$MODEL_AWK"'BEGIN {
        e = load_model(model); if (e != "") { print "error: " e; exit 1 }
        printf "%d %.4f\n", predict(x1, x2), score(x1, x2)
    }' </dev/null
}

# model_eval FILE CSV: scores every row of a "x1,x2,label" CSV (header line skipped) and prints
#   rows=N correct=N invalid=N tp=N fp=N fn=N tn=N accuracy=F precision=F recall=F f1=F
# "invalid" counts rows that are malformed or whose prediction is not 0/1.
model_eval() {
    awk -F, -v model="$1" "$MODEL_AWK"'
    BEGIN { e = load_model(model); if (e != "") { print "error: " e; exit 1 } }
    NR == 1 && !is_num($1) { next }
    {
        rows++
        if (NF != 3 || !is_num($1) || !is_num($2) || ($3 != "0" && $3 != "1")) { invalid++; next }
        p = predict($1 + 0, $2 + 0)
        if (p != 0 && p != 1) { invalid++; next }
        if (p == $3) correct++
        if (p == 1 && $3 == 1) tp++; else if (p == 1) fp++; else if ($3 == 1) fn++; else tn++
    }
    END {
        if (e != "") exit 1
        prec = (tp + fp) ? tp / (tp + fp) : 0; rec = (tp + fn) ? tp / (tp + fn) : 0
        printf "rows=%d correct=%d invalid=%d tp=%d fp=%d fn=%d tn=%d accuracy=%.4f precision=%.4f recall=%.4f f1=%.4f\n",
            rows, correct, invalid, tp, fp, fn, tn, rows ? correct / rows : 0, prec, rec,
            (prec + rec) ? 2 * prec * rec / (prec + rec) : 0
    }' "$2"
}

# kv FILE KEY: prints the value of a "key=value" line (deployed.txt); empty if absent.
kv() {
    awk -v k="$2" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }' "$1" 2>/dev/null || true
}

# field NAME "k=v k=v ...": prints v for k=NAME.
field() {
    printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2; exit }'
}

# --- JUnit reports ---------------------------------------------------------------------------
# junit_begin FILE; record NAME pass|fail [MESSAGE]...; junit_write SUITE FILE OUT
# Results are kept as tab-separated lines so messages can hold any text but tabs/newlines.

junit_begin() { JUNIT_RESULTS=$1; : > "$JUNIT_RESULTS"; }

record() {
    _name=$1 _status=$2; shift 2
    _msg=$(printf '%s' "$*" | tr '\t\n' '  ')
    printf '%s\t%s\t%s\n' "$_name" "$_status" "$_msg" >> "$JUNIT_RESULTS"
    if [ "$_status" = pass ]; then log "PASS $_name${_msg:+ ($_msg)}"; else log "FAIL $_name: $_msg"; fi
}

# junit_write SUITE OUT: writes the JUnit XML; returns 1 if any test failed.
junit_write() {
    mkdir -p "$(dirname "$2")"
    awk -F'\t' -v suite="$1" -v stamp="$(now_utc)" '
    function esc(s) {
        gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s)
        gsub(/"/, "\\&quot;", s); return s
    }
    { n++; name[n] = $1; status[n] = $2; msg[n] = $3; if ($2 != "pass") failed++ }
    END {
        print "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        printf "<testsuites name=\"%s\" tests=\"%d\" failures=\"%d\" errors=\"0\">\n", esc(suite), n, failed
        printf "  <testsuite name=\"%s\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"0\" timestamp=\"%s\">\n",
            esc(suite), n, failed, stamp
        for (i = 1; i <= n; i++) {
            printf "    <testcase classname=\"%s\" name=\"%s\" time=\"0\"", esc(suite), esc(name[i])
            if (status[i] == "pass") { print "/>"; continue }
            print ">"
            printf "      <failure message=\"%s\" type=\"AssertionError\">%s</failure>\n", esc(msg[i]), esc(msg[i])
            print "    </testcase>"
        }
        print "  </testsuite>"
        print "</testsuites>"
        exit (failed > 0)
    }' "$JUNIT_RESULTS" > "$2"
}

# --- store lock (deploys mutate shared slots) --------------------------------------------------
# A mkdir lock; a lock left by a dead process on this host is broken after a check.

store_lock() {
    _lock=$ML_STORE/.lock _tries=0
    while ! mkdir "$_lock" 2>/dev/null; do
        read -r _pid _host _owner < "$_lock/owner" 2>/dev/null || _pid=
        if [ -n "$_pid" ] && [ "$_host" = "$(uname -n)" ] && ! kill -0 "$_pid" 2>/dev/null; then
            log "breaking stale store lock of dead process $_pid (run $_owner)"
            rm -rf "$_lock"
            continue
        fi
        _tries=$((_tries + 1))
        [ "$_tries" -le 30 ] || die "model store $ML_STORE is locked by ${_owner:-?} (pid ${_pid:-?}); gave up after 30s"
        sleep 1
    done
    printf '%s %s %s\n' "$$" "$(uname -n)" "$RUN_ID" > "$_lock/owner"
    trap 'rm -rf "$ML_STORE/.lock"' EXIT
    trap 'exit 130' INT HUP
    trap 'exit 143' TERM
}
