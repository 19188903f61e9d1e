#!/bin/sh
# build stage: the image $WEB_PREFIX:$CD_REVISION (default conveyor-web:<revision>).
#
# Prepares the build context in this workspace, then runs `docker build` on it:
#   ./busybox   a copy of the host's static busybox (Debian: apt-get install busybox-static;
#               WEB_BUSYBOX names another static busybox binary)
#   ./www/      the site in app/, with @REVISION@ replaced by the revision
# The image is tagged by revision and kept: deploys and rollbacks run it by that tag.
set -eu
. "$(dirname "$0")/lib.sh"

BUSYBOX=${WEB_BUSYBOX:-/bin/busybox}

require_docker

if [ ! -f "$BUSYBOX" ] || [ ! -x "$BUSYBOX" ]; then
    die "no busybox at $BUSYBOX: the image is built FROM scratch around a static busybox. On Debian or Ubuntu run 'apt-get install busybox-static' on this agent (or set WEB_BUSYBOX to a static busybox binary)"
fi
# A dynamically linked busybox (Debian's 'busybox' package) cannot run in a scratch image.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked and cannot run in an image built FROM scratch: run 'apt-get install busybox-static' (it replaces the 'busybox' package) or set WEB_BUSYBOX to a static busybox"
fi

cd "$HERE"
log "revision $REVISION, run $RUN_ID: building image $IMAGE"
log "busybox: $BUSYBOX ($("$BUSYBOX" 2>&1 | head -n 1))"

rm -rf busybox www
cp "$BUSYBOX" busybox
chmod 0755 busybox
mkdir www
for f in app/*; do
    sed "s/@REVISION@/$REVISION/g" "$f" > "www/${f#app/}"
done
chmod -R a+rX www test.sh

# shellcheck disable=SC2086
docker build --build-arg "REVISION=$REVISION" $LABELS --label "conveyor.revision=$REVISION" \
    -t "$IMAGE" .

ID=$(docker image inspect --format '{{.Id}}' "$IMAGE")
SIZE=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE: $ID, $((SIZE / 1024)) KiB"
printf 'image=%s\nid=%s\nrevision=%s\nrun=%s\nbuilt_at=%s\n' "$IMAGE" "$ID" "$REVISION" "$RUN_ID" "$(now_utc)" > image.txt
