#!/usr/bin/env bash
# The Docker side of the tests: a local engine, a local base image and a local registry.
#
#   .ci/docker.sh          install (Debian's docker.io, docker-registry, debootstrap) if missing,
#                          start dockerd and the registry if not running, build the base image if
#                          missing; prints KEY=VALUE lines (what the tests read) and exits 0.
#   .ci/docker.sh stop     stop the dockerd and registry this script started (by their pid files).
#
# Idempotent: running it twice starts nothing twice. Everything listens on loopback only: dockerd on
# its unix socket (no TCP port, no bridge, no iptables rules: containers use the host's network
# namespace or none, as SkyPilot does with --net=host), the registry on 127.0.0.1.
# The base image is Debian bookworm made with debootstrap and `docker import`, because no image can
# be pulled here; it already has python3 and venv, so the image builds need no apt at all.
set -euo pipefail

STATE=${LAUNCHER_DOCKER_STATE:-/tmp/launcher-docker}
SOCK=/var/run/docker.sock
REGISTRY_PORT=${LAUNCHER_TEST_REGISTRY_PORT:-5055}
BASE_IMAGE=${LAUNCHER_TEST_BASE:-launcher-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$STATE"

log() { echo "docker.sh: $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # stop the process in pid file $1 (only ours), wait up to 20 s
  local pidfile=$1
  if alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}

if [ "${1:-start}" = "stop" ]; then
  stop_pid "$STATE/registry.pid"
  stop_pid "$STATE/dockerd.pid"
  log "stopped"
  exit 0
fi

# -- packages ---------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  # Other jobs on the machine may hold the apt locks: wait for them rather than fail.
  for i in $(seq 1 60); do
    if apt-get -o DPkg::Lock::Timeout=600 update -qq && \
       DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
         --no-install-recommends "${need[@]}" >"$STATE/apt.log" 2>&1; then
      break
    fi
    [ "$i" = 60 ] && { log "apt-get install ${need[*]} failed, see $STATE/apt.log"; exit 1; }
    sleep 10
  done
fi

# -- dockerd ----------------------------------------------------------------------------------
if ! docker -H "unix://$SOCK" info >/dev/null 2>&1; then
  log "starting dockerd (log: $STATE/dockerd.log)"
  nohup dockerd -H "unix://$SOCK" --bridge=none --iptables=false --ip-masq=false \
    --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.daemon.pid" \
    >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  for _ in $(seq 1 120); do
    docker -H "unix://$SOCK" info >/dev/null 2>&1 && break
    alive "$STATE/dockerd.pid" || { log "dockerd exited:"; tail -20 "$STATE/dockerd.log" >&2; exit 1; }
    sleep 0.5
  done
  docker -H "unix://$SOCK" info >/dev/null 2>&1 || { log "dockerd did not answer in 60 s"; exit 1; }
fi
export DOCKER_HOST="unix://$SOCK"

# -- base image -------------------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "building $BASE_IMAGE with debootstrap (a minute or two)"
  root="$STATE/rootfs"
  rm -rf "$root"
  # python3-venv brings ensurepip's bundled pip; ca-certificates lets a build that is not offline
  # reach PyPI. No apt lists are kept: images that need apt run `apt-get update` first, as usual.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || { log "debootstrap failed, see $STATE/debootstrap.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
fi

# -- registry ---------------------------------------------------------------------------------
if ! alive "$STATE/registry.pid"; then
  mkdir -p "$STATE/registry-data"
  cat >"$STATE/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry-data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
  nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
  echo $! >"$STATE/registry.pid"
  for _ in $(seq 1 40); do
    python3 - "$REGISTRY_PORT" <<'EOF' && break
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/", timeout=1)
EOF
    alive "$STATE/registry.pid" || { log "registry exited:"; tail -20 "$STATE/registry.log" >&2; exit 1; }
    sleep 0.25
  done
fi

echo "DOCKER_HOST=$DOCKER_HOST"
echo "LAUNCHER_TEST_REGISTRY=127.0.0.1:$REGISTRY_PORT"
echo "LAUNCHER_TEST_BASE=$BASE_IMAGE"
