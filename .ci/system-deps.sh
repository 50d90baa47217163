#!/usr/bin/env bash
# Debian packages the tests use as real components (sshd + rsync for checkpoint sync, sqlite3 for
# SQL dumps). Installs only what is missing; needs root or sudo. Docker and Slurm are set up by
# their own scripts (.ci/docker.sh, .ci/slurm.sh), which the test fixtures call.
set -euo pipefail
need=()
for pkg in openssh-server openssh-client rsync sqlite3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
