#!/bin/sh
# HTTP probe, run INSIDE a throwaway container on the service's Docker network (lib.sh's probe()
# passes this file's text to `sh -c`; nothing is mounted). Uses only busybox.
#
#   probe.sh BASE_URL REVISION REQUESTS INTERVAL_SECONDS
#
# Checks GET / (HTML, shows REVISION), GET /health ("ok") and a missing page (404), then sends
# REQUESTS more GET /health, INTERVAL_SECONDS apart. Prints
#   check NAME pass|fail DETAIL       one per check
#   metric NAME VALUE                 requests, answered, availability, latency_ms
# latency_ms is the mean wall time of one request (a wget process: connect, GET, read), only
# when INTERVAL_SECONDS is 0. The clock is /proc/uptime (10 ms ticks), so with fast answers it
# keeps requesting until at least 20 ticks have passed (at most 1000 requests). Five failed
# requests in a row end the series early (the service is down: no need to wait out timeouts).
set -eu

BASE=$1 REV=$2 N=$3 INTERVAL=$4
BB=/bin/busybox
get() { $BB timeout 5 $BB wget "$@"; }   # busybox 1.35's `wget -T` crashes: timeout instead
check() { echo "check $1 $2 $3"; }
ticks() { # NOW: /proc/uptime in centiseconds (no leading zeros: $((...)) would read octal)
    read -r _up _idle < /proc/uptime
    NOW=${_up%.*}${_up#*.}
    while [ "${#NOW}" -gt 1 ] && [ "${NOW#0}" != "$NOW" ]; do NOW=${NOW#0}; done
}

if HEAD=$(get -S -q -O /dev/null "$BASE/" 2>&1) && printf '%s' "$HEAD" | $BB grep -qi 'content-type: *text/html'; then
    check index_is_html pass "GET / -> text/html"
else
    check index_is_html fail "GET / did not answer text/html: $(printf '%s' "$HEAD" | $BB tr '\n' ' ')"
fi
if BODY=$(get -q -O - "$BASE/" 2>&1); then
    SHOWN=$(printf '%s' "$BODY" | $BB sed -n 's/.*<code id="revision">\([^<]*\)<\/code>.*/\1/p' | $BB head -n 1)
    if [ "$SHOWN" = "$REV" ]; then
        check index_shows_revision pass "GET / shows revision $REV"
    else
        check index_shows_revision fail "GET / shows revision '${SHOWN:-none}', expected '$REV'"
    fi
else
    check index_shows_revision fail "GET $BASE/ failed: $(printf '%s' "$BODY" | $BB tr '\n' ' ')"
fi
if HEALTH=$(get -q -O - "$BASE/health" 2>&1) && [ "$HEALTH" = ok ]; then
    check health_ok pass "GET /health -> ok"
else
    check health_ok fail "GET /health -> '$(printf '%s' "$HEALTH" | $BB tr '\n' ' ')'"
fi
if OUT=$(get -q -O /dev/null "$BASE/no-such-page" 2>&1); then
    check missing_page_404 fail "GET /no-such-page succeeded"
elif printf '%s' "$OUT" | $BB grep -q ' 404'; then
    check missing_page_404 pass "GET /no-such-page -> 404"
else
    check missing_page_404 fail "GET /no-such-page: $(printf '%s' "$OUT" | $BB tr '\n' ' ')"
fi

# Availability: REQUESTS health checks; latency: their mean time (back to back only).
SENT=0 ANSWERED=0 IN_A_ROW=0
ticks; START=$NOW
while :; do
    if [ "$(get -q -O - "$BASE/health" 2>/dev/null)" = ok ]; then
        ANSWERED=$((ANSWERED + 1)) IN_A_ROW=0
    else
        IN_A_ROW=$((IN_A_ROW + 1))
    fi
    SENT=$((SENT + 1))
    ticks; END=$NOW
    [ "$IN_A_ROW" -lt 5 ] || break
    if [ "$INTERVAL" != 0 ]; then
        [ "$SENT" -lt "$N" ] || break
        $BB sleep "$INTERVAL"
    else
        if [ "$SENT" -ge 1000 ]; then break; fi
        if [ "$SENT" -ge "$N" ] && [ $((END - START)) -ge 20 ]; then break; fi
    fi
done
echo "metric requests $SENT"
echo "metric answered $ANSWERED"
echo "metric availability $($BB awk -v a="$ANSWERED" -v n="$SENT" 'BEGIN { printf "%.4f", a / n }')"
if [ "$INTERVAL" = 0 ]; then
    echo "metric latency_ms $($BB awk -v t=$((END - START)) -v n="$SENT" 'BEGIN { printf "%.3f", t * 10 / n }')"
fi
