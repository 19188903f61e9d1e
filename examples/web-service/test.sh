#!/bin/sh
# The image's own tests, baked in as /test.sh and run by the test stage (run-tests.sh):
#     docker run --rm --network none -e EXPECT_REVISION=v1 conveyor-web:v1 /bin/sh /test.sh
# Runs inside the image (busybox sh, as user nobody, no network but loopback): checks the
# busybox and its applets, the site files, then starts a second httpd on 127.0.0.1:18080 and
# requests /, /health and a missing page. Prints one line per test, "ok NAME - detail" or
# "not ok NAME - detail", and exits 1 if any failed. EXPECT_REVISION is the revision the page
# must show.
set -eu

BB=/bin/busybox
TEST_PORT=${TEST_PORT:-18080}
BASE=http://127.0.0.1:$TEST_PORT
FAILED=0 PASSED=0
ok() { PASSED=$((PASSED + 1)); echo "ok $1 - $2"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok $1 - $2"; }
# GET: busybox wget under a 5 s timeout (busybox 1.35's own `wget -T` crashes, so not that).
get() { $BB timeout 5 $BB wget "$@"; }
check() { # check NAME DETAIL COMMAND...: ok if COMMAND succeeds
    _n=$1 _d=$2; shift 2
    if "$@" >/dev/null 2>&1; then ok "$_n" "$_d"; else not_ok "$_n" "$_d"; fi
}

check busybox_runs "$($BB 2>&1 | $BB head -n 1)" $BB true
for applet in sh httpd wget; do
    if [ -L /bin/$applet ] && [ "$($BB readlink /bin/$applet)" = busybox ]; then
        ok "applet_$applet" "/bin/$applet -> busybox"
    else
        not_ok "applet_$applet" "/bin/$applet is not a link to busybox"
    fi
done

UID_NOW=$($BB id -u)
if [ "$UID_NOW" != 0 ]; then ok runs_unprivileged "uid $UID_NOW"; else not_ok runs_unprivileged "runs as root"; fi

check site_index_present "/www/index.html" [ -s /www/index.html ]
check site_health_present "/www/health" [ -s /www/health ]
if $BB grep -q '@[A-Z_]*@' /www/index.html 2>/dev/null; then
    not_ok site_rendered "/www/index.html still has placeholders: $($BB grep -o '@[A-Z_]*@' /www/index.html | $BB head -n 1)"
else
    ok site_rendered "no @PLACEHOLDER@ left in /www/index.html"
fi
if [ -z "${EXPECT_REVISION:-}" ]; then
    not_ok site_revision "EXPECT_REVISION not given: cannot check which revision the page shows"
elif $BB grep -q "<code id=\"revision\">$EXPECT_REVISION</code>" /www/index.html 2>/dev/null; then
    ok site_revision "index.html shows revision $EXPECT_REVISION"
else
    not_ok site_revision "index.html does not show revision $EXPECT_REVISION"
fi

# A second httpd on a test port, serving the same files the real one serves.
$BB httpd -f -p "127.0.0.1:$TEST_PORT" -h /www &
HTTPD=$!
trap '$BB kill "$HTTPD" 2>/dev/null || true' EXIT
i=0
until get -q -O /dev/null "$BASE/health" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || break
    $BB sleep 0.1
done

if BODY=$(get -q -O - "$BASE/" 2>&1) && [ -n "$BODY" ]; then
    ok serves_index "GET / -> $(printf '%s' "$BODY" | $BB wc -c) bytes"
    if [ -n "${EXPECT_REVISION:-}" ] && printf '%s' "$BODY" | $BB grep -q "<code id=\"revision\">$EXPECT_REVISION</code>"; then
        ok index_shows_revision "GET / shows revision $EXPECT_REVISION"
    else
        not_ok index_shows_revision "GET / does not show revision ${EXPECT_REVISION:-?}"
    fi
else
    not_ok serves_index "GET / failed: $BODY"
    not_ok index_shows_revision "GET / failed"
fi

if HEALTH=$(get -q -O - "$BASE/health" 2>&1) && [ "$HEALTH" = ok ]; then
    ok health_ok "GET /health -> ok"
else
    not_ok health_ok "GET /health -> '${HEALTH:-}'"
fi

if OUT=$(get -O /dev/null "$BASE/no-such-page" 2>&1); then
    not_ok missing_page_404 "GET /no-such-page succeeded"
elif printf '%s' "$OUT" | $BB grep -q ' 404'; then
    ok missing_page_404 "GET /no-such-page -> 404"
else
    not_ok missing_page_404 "GET /no-such-page: $(printf '%s' "$OUT" | $BB tr '\n' ' ')"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
