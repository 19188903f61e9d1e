#!/usr/bin/env bash
# Makes the certificates deploy/compose.yaml mounts, with the host's release cdctl:
#
#   deploy/certs/ca.pem, ca-key.pem                    the cluster CA (kept if it exists)
#   deploy/certs/coordinator-N.pem, -key.pem           role coordinator, SANs coordinator-N
#                                                      (+ localhost, 127.0.0.1, always)
#   deploy/certs/agent-N.pem, -key.pem                 role agent, name = the agent's --name
#   deploy/certs/operator.pem, operator-key.pem        role operator: cdctl on the host
#
# and deploy/.env, which compose reads: the project name, the absolute path of the repository
# and of its examples/ folder (mounted at that same path inside the agents, see README.md), and
# the user the `cdctl` tools container runs as (the owner of operator-key.pem).
#
#   deploy/gen-certs.sh              # issue what is missing
#   deploy/gen-certs.sh --force      # a new CA and new certificates for everything
#
# Environment: CDCTL (default: $CARGO_TARGET_DIR/release/cdctl, else <repo>/target/release/cdctl),
# CERTS_DIR (default: deploy/certs), COORDINATORS (default 3), AGENTS (default 2),
# CONTAINER_UID (default 10001, the user the images run as).
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
CDCTL=${CDCTL:-${CARGO_TARGET_DIR:-$REPO/target}/release/cdctl}
CERTS=${CERTS_DIR:-$DEPLOY/certs}
COORDINATORS=${COORDINATORS:-3}
AGENTS=${AGENTS:-2}
CONTAINER_UID=${CONTAINER_UID:-10001}

die() { printf 'gen-certs: error: %s\n' "$*" >&2; exit 1; }

force=
case ${1:-} in
    --force) force=1 ;;
    '') ;;
    *) die "usage: $0 [--force]" ;;
esac
[ -x "$CDCTL" ] || die "$CDCTL not found: cargo build --release --bins (or set CDCTL)"

if [ -n "$force" ]; then
    rm -f "$CERTS"/*.pem
fi
mkdir -p "$CERTS"
if [ ! -f "$CERTS/ca.pem" ]; then
    "$CDCTL" certs init --dir "$CERTS"
fi

# issue ROLE NAME [SAN...]: issue NAME's certificate unless it is already there.
issue() {
    local role=$1 name=$2
    shift 2
    [ -f "$CERTS/$name.pem" ] && [ -f "$CERTS/$name-key.pem" ] && return 0
    local args=(certs issue --dir "$CERTS" --role "$role" --name "$name")
    local san
    for san in "$@"; do args+=(--san "$san"); done
    "$CDCTL" "${args[@]}"
}

container_keys=()
for i in $(seq 1 "$COORDINATORS"); do
    # The compose service name is the container's host name: peers, agents and leader hints
    # reach node N as https://coordinator-N:7400.
    issue coordinator "coordinator-$i" "coordinator-$i"
    container_keys+=("$CERTS/coordinator-$i-key.pem")
done
for i in $(seq 1 "$AGENTS"); do
    issue agent "agent-$i"
    container_keys+=("$CERTS/agent-$i-key.pem")
done
issue operator operator

# The containers run as uid $CONTAINER_UID: their keys must be readable by it. As root,
# hand them over (mode 0600 stays); otherwise the only way is to make them world-readable.
chmod 0644 "$CERTS"/*.pem
chmod 0600 "$CERTS/ca-key.pem" "$CERTS/operator-key.pem"
if [ "$(id -u)" = 0 ]; then
    chown "$CONTAINER_UID:$CONTAINER_UID" "${container_keys[@]}"
    chmod 0600 "${container_keys[@]}"
else
    echo "gen-certs: not root: making the container keys readable by all so uid $CONTAINER_UID can read them" >&2
fi

# Compose reads .env from the folder of compose.yaml: the absolute path of examples/, which
# the agents mount at the same path so a pipeline's resolved source.path exists there too.
cat > "$DEPLOY/.env" <<ENV
# Written by deploy/gen-certs.sh.
COMPOSE_PROJECT_NAME=conveyor
CONVEYOR_REPO=$REPO
CONVEYOR_EXAMPLES=$REPO/examples
CONVEYOR_OPERATOR_USER=$(id -u):$(id -g)
ENV

echo "certificates in $CERTS:"
ls -l "$CERTS"
echo
echo "cdctl on this host:"
echo "  export CD_ENDPOINT=https://127.0.0.1:7400 CD_CERT_DIR=$CERTS"
