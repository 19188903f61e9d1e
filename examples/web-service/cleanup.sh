#!/bin/sh
# shellcheck disable=SC2086  # $OURS and the id lists are meant to split into words
#
# Removes what this example made on the Docker engine for WEB_PREFIX (default conveyor-web):
# its containers (staging, production, leftover probes), its network and, unless
# --keep-images, its images (every revision: after this there is nothing to roll back to).
# Only objects labelled conveyor.example=web-service and conveyor.prefix=$WEB_PREFIX are touched.
#
#   ./cleanup.sh                               WEB_PREFIX=conveyor-web
#   WEB_PREFIX=web-test ./cleanup.sh --keep-images
set -eu

PREFIX=${WEB_PREFIX:-conveyor-web}
case $PREFIX in
    '' | [!a-z0-9]* | *[!a-z0-9_.-]*) echo "cleanup: WEB_PREFIX '$PREFIX' is not a valid prefix" >&2; exit 2 ;;
esac
KEEP_IMAGES=0
case ${1:-} in
    '') ;;
    --keep-images) KEEP_IMAGES=1 ;;
    *) echo "usage: $0 [--keep-images]" >&2; exit 2 ;;
esac
OURS="--filter label=conveyor.example=web-service --filter label=conveyor.prefix=$PREFIX"

CONTAINERS=$(docker ps -aq $OURS)
if [ -n "$CONTAINERS" ]; then
    echo "cleanup: removing containers: $(docker ps -a $OURS --format '{{.Names}}' | tr '\n' ' ')"
    docker rm -f $CONTAINERS >/dev/null
fi
if [ -n "$(docker network ls -q $OURS --filter "name=^$PREFIX\$")" ]; then
    echo "cleanup: removing network $PREFIX"
    docker network rm "$PREFIX" >/dev/null
fi
if [ "$KEEP_IMAGES" = 0 ]; then
    # Newest first, so an image built FROM another one goes before its parent; a second pass
    # catches anything that still had a child during the first.
    for pass in 1 2; do
        IMAGES=$(docker images -q $OURS | awk '!seen[$0]++')
        [ -n "$IMAGES" ] || break
        echo "cleanup: removing images: $(docker images $OURS --format '{{.Repository}}:{{.Tag}}' | tr '\n' ' ')"
        if [ "$pass" = 1 ]; then
            docker rmi -f $IMAGES >/dev/null 2>&1 && break
        else
            docker rmi -f $IMAGES >/dev/null
        fi
    done
fi
echo "cleanup: done for $PREFIX"
