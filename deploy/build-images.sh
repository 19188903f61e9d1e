#!/usr/bin/env bash
# Builds conveyor/coordinator:local, conveyor/agent:local and conveyor/cdctl:local FROM scratch,
# with no registry:
# each image holds the release binary, exactly the shared libraries `ldd` says it links (at
# the same paths) plus the dynamic loader, and a few files (/etc/passwd, /etc/group,
# /etc/nsswitch.conf, /tmp, state directories). The agent image also gets Debian's static
# busybox with a symlink per applet, because stages run with `sh -c`.
#
#   deploy/build-images.sh                # cargo build --release --bins, then all three images
#   deploy/build-images.sh coordinator    # one image
#   NO_BUILD=1 deploy/build-images.sh     # use the binaries already in target/release
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target), TAG (default: local),
# KEEP_CONTEXT=1 keeps the staged build contexts and prints where they are.
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RELEASE=$TARGET/release
TAG=${TAG:-local}
UID_GID=10001:10001 # the `conveyor` user inside the images

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-images: error: %s\n' "$*" >&2; exit 1; }

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(coordinator agent cdctl)
for image in "${images[@]}"; do
    case $image in coordinator | agent | cdctl) ;; *) die "unknown image '$image' (coordinator, agent, cdctl)" ;; esac
done

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed (Debian: libc-bin)"
# Without the buildx plugin the docker CLI cannot use BuildKit; the classic builder does
# everything these Dockerfiles need (FROM scratch, COPY, COPY --chown).
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

if [ -z "${NO_BUILD:-}" ]; then
    log "cargo build --release --bins (CARGO_TARGET_DIR=$TARGET)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release --bins)
fi

# stage_binary BIN ROOTFS: copies BIN to ROOTFS/usr/local/bin and every library it links to
# the same path under ROOTFS (symlinks resolved), the loader included.
stage_binary() {
    local bin=$1 rootfs=$2 line lib
    [ -x "$bin" ] || die "$bin is missing: build it first (cargo build --release --bins)"
    install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
    # "linux-vdso.so.1 (0x...)" (in the kernel, nothing to copy), or "statically linked".
    while read -r line; do
        lib=
        case $line in
            *"=> not found"*) die "$bin: a library is missing on this machine: $line" ;;
            *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
            /*) lib=${line%% (*} ;;
        esac
        [ -n "$lib" ] || continue
        [ -e "$lib" ] || die "$bin links $lib, which does not exist"
        if [ ! -e "$rootfs$lib" ]; then
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
            echo "    $lib" >&2
        fi
    done < <(ldd "$bin" 2>&1 || true)
}

# base_files ROOTFS STATE...: users, name service config and directories shared by both images.
# STATE directories (owned by the conveyor user) go into a separate tree copied with --chown.
base_files() {
    local rootfs=$1 state=$2
    shift 2
    mkdir -p "$rootfs/etc" "$rootfs/tmp" "$state"
    chmod 1777 "$rootfs/tmp"
    cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
conveyor:x:10001:10001:Conveyor:/var/lib/conveyor:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
    cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
conveyor:x:10001:
nogroup:x:65534:
GROUP
    # glibc resolves host names itself (files, then DNS: Docker's embedded resolver).
    echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
    local dir
    for dir in "$@"; do mkdir -p "$state$dir"; chmod 0750 "$state$dir"; done
}

stage_busybox() {
    local rootfs=$1 busybox=/bin/busybox applet
    if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
        log "installing Debian's busybox-static (a static /bin/busybox)"
        [ "$(id -u)" = 0 ] || die "/bin/busybox is missing or not static: run 'apt-get install -y busybox-static' as root"
        apt-get install -y busybox-static >&2 ||
            { apt-get update >&2 && apt-get install -y busybox-static >&2; } ||
            die "cannot install busybox-static"
    fi
    ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked; install busybox-static"
    install -D -m 0755 "$busybox" "$rootfs/bin/busybox"
    # One symlink per applet at its usual place (bin/sh, bin/cat, usr/bin/awk, sbin/...).
    while read -r applet; do
        case $applet in '' | bin/busybox | linuxrc) continue ;; esac
        [ -e "$rootfs/$applet" ] || [ -L "$rootfs/$applet" ] && continue
        mkdir -p "$rootfs/$(dirname "$applet")"
        ln -s /bin/busybox "$rootfs/$applet"
    done < <("$busybox" --list-full)
    [ -L "$rootfs/bin/sh" ] || die "busybox has no sh applet"
}

build_image() {
    local name=$1 ctx rootfs state
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/conveyor-$name-image.XXXXXX")
    rootfs=$ctx/rootfs
    state=$ctx/state
    log "staging conveyor/$name:$TAG in $ctx"
    case $name in
        coordinator)
            stage_binary "$RELEASE/cd-coordinator" "$rootfs"
            base_files "$rootfs" "$state" /var/lib/conveyor
            ;;
        agent)
            stage_binary "$RELEASE/cd-agent" "$rootfs"
            base_files "$rootfs" "$state" /var/lib/conveyor /var/lib/conveyor-agent /var/lib/conveyor-shared
            stage_busybox "$rootfs"
            ;;
        cdctl)
            stage_binary "$RELEASE/cdctl" "$rootfs"
            base_files "$rootfs" "$state" /var/lib/conveyor
            ;;
    esac
    cp "$DEPLOY/Dockerfile.$name" "$ctx/Dockerfile"
    log "docker build -t conveyor/$name:$TAG"
    docker build --pull=false -t "conveyor/$name:$TAG" \
        --label "org.opencontainers.image.revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)" \
        "$ctx"
    if [ -n "${KEEP_CONTEXT:-}" ]; then
        log "build context kept in $ctx"
    else
        rm -rf "$ctx"
    fi
}

for image in "${images[@]}"; do
    build_image "$image"
done
docker image ls --filter "reference=conveyor/*:$TAG"
