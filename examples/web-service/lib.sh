#!/bin/sh
# Shared helpers for the web-service stage scripts. Sourced by them, not run on its own:
#     . "$(dirname "$0")/lib.sh"
# Plain POSIX sh; the host needs the docker CLI and a reachable engine, nothing else.
set -eu

export LC_ALL=C

STAGE=${CD_STAGE:-$(basename "$0" .sh)}
# shellcheck disable=SC2034  # RUN_ID, PORT and the names below are used by the stage scripts
RUN_ID=${CD_RUN_ID:-local}
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '[%s] %s\n' "$STAGE" "$*"; }
warn() { printf '[%s] warning: %s\n' "$STAGE" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$STAGE" "$*" >&2; exit 1; }
now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# --- names ---------------------------------------------------------------------------------
# Every Docker object this example makes is named from WEB_PREFIX (a run param, default
# conveyor-web), so isolated copies (tests, several teams on one engine) never clash:
#   image       $WEB_PREFIX:<revision>         one per revision, kept for rollbacks
#   network     $WEB_PREFIX                    internal bridge: no route off the host
#   containers  $WEB_PREFIX-staging, $WEB_PREFIX-production, reachable on that network as
#               web-staging and web-production (network aliases, port 8080)
# and carries the labels conveyor.example=web-service and conveyor.prefix=$WEB_PREFIX.
PREFIX=${WEB_PREFIX:-conveyor-web}
case $PREFIX in
    '' | [!a-z0-9]* | *[!a-z0-9_.-]*)
        die "WEB_PREFIX '$PREFIX' must be lower-case letters, digits, '.', '_' or '-', starting with a letter or digit" ;;
esac
[ "${#PREFIX}" -le 40 ] || die "WEB_PREFIX '$PREFIX' is longer than 40 characters"

# The revision is the image tag: it must be a valid Docker tag (it is also written into the
# page, so this keeps it free of HTML and sed metacharacters).
REVISION=${CD_REVISION:-}
[ -n "$REVISION" ] || die "CD_REVISION is not set (run under Conveyor, or export CD_REVISION=v1)"
case $REVISION in
    [!A-Za-z0-9_]* | *[!A-Za-z0-9_.-]*)
        die "revision '$REVISION' is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*): use a tag or commit id" ;;
esac
[ "${#REVISION}" -le 128 ] || die "revision '$REVISION' is longer than 128 characters (an image tag's limit)"

IMAGE=$PREFIX:$REVISION
NETWORK=$PREFIX
# shellcheck disable=SC2034
PORT=8080
LABELS="--label conveyor.example=web-service --label conveyor.prefix=$PREFIX"

container_for() { echo "$PREFIX-$1"; }   # container_for staging -> conveyor-web-staging
alias_for() { echo "web-$1"; }           # alias_for staging -> web-staging

# --- docker ----------------------------------------------------------------------------------

require_docker() {
    command -v docker >/dev/null 2>&1 ||
        die "the docker CLI is not on PATH: this stage needs an agent with Docker (CLI and engine)"
    _err=$(docker version --format '{{.Server.Version}}' 2>&1) ||
        die "cannot reach the Docker engine (DOCKER_HOST=${DOCKER_HOST:-default}): $_err"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# inspect OBJECT FORMAT: docker inspect of a container, empty output if there is none.
inspect() { docker container inspect --format "$2" "$1" 2>/dev/null || true; }

# label CONTAINER KEY: the value of a container label ('' if absent).
label() { inspect "$1" "{{index .Config.Labels \"$2\"}}" | sed 's/^<no value>$//'; }

ensure_network() {
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
        if [ "$(docker network inspect --format '{{.Internal}}' "$NETWORK")" != true ]; then
            warn "network $NETWORK exists and is not internal; containers on it can reach outside the host"
        fi
        return 0
    fi
    log "creating internal network $NETWORK"
    # --internal: no NAT, no published ports, no way off the host; containers reach each other.
    # shellcheck disable=SC2086
    docker network create --driver bridge --internal $LABELS "$NETWORK" >/dev/null ||
        docker network inspect "$NETWORK" >/dev/null 2>&1 ||   # created meanwhile by another stage
        die "cannot create network $NETWORK"
}

# probe CHECKS...: runs probe.sh in a throwaway container on $NETWORK (from the image of this
# revision, which has busybox wget; nothing is pulled), passing probe.sh's arguments. The script
# is passed as an argument, not bind-mounted, so it works when the engine is on another host.
probe() {
    # shellcheck disable=SC2086
    docker run --rm --name "$PREFIX-probe-$$" --network "$NETWORK" $LABELS \
        --label conveyor.role=probe --read-only --cap-drop ALL --security-opt no-new-privileges \
        --entrypoint /bin/busybox "$IMAGE" sh -c "$(cat "$HERE/probe.sh")" probe.sh "$@"
}

# --- JUnit reports ---------------------------------------------------------------------------
# junit_begin FILE; record NAME pass|fail [MESSAGE]...; junit_write SUITE OUT
# Results are kept as tab-separated lines, so messages may hold any text but tabs/newlines.

junit_begin() { JUNIT_RESULTS=$1; : > "$JUNIT_RESULTS"; }

record() {
    _name=$1 _status=$2; shift 2
    _msg=$(printf '%s' "$*" | tr '\t\n' '  ')
    printf '%s\t%s\t%s\n' "$_name" "$_status" "$_msg" >> "$JUNIT_RESULTS"
    if [ "$_status" = pass ]; then log "PASS $_name${_msg:+ ($_msg)}"; else log "FAIL $_name: $_msg"; fi
}

# junit_write SUITE OUT: writes the JUnit XML; returns 1 if any test failed (or none ran).
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
        exit (failed > 0 || n == 0)
    }' "$JUNIT_RESULTS" > "$2"
}
