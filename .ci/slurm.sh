#!/usr/bin/env bash
# .ci/slurm.sh -- single-node Slurm "cluster" on localhost that SkyPilot
# (PyPI `skypilot`, tested with 0.14.1) can use as its Slurm infra, offline except
# for package registries (PyPI / Debian apt).
#
# Idempotent: safe to re-run; already-running daemons are left alone.
# Must run as root on Debian 12 (bookworm). No systemd needed.
#
# What it sets up
#   * apt: slurm-wlm (slurmctld+slurmd 22.05), munge, openssh-server, rsync, curl
#   * a Unix user $SLURM_USER (default skytest) that SkyPilot SSHes in as
#   * sshd bound to 127.0.0.1:$SSH_PORT (default 2222), key auth only
#   * munged (unix socket), slurmctld :6817 and slurmd :6818 bound to 127.0.0.1
#     (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny)
#   * offline shims for the SkyPilot runtime install on the "node":
#       - ~$SLURM_USER/bin/curl serves astral.sh's uv installer from a local uv
#         (pip-installed from PyPI) instead of the internet
#       - the installed `uv` wrapper maps SkyPilot's hard-coded `--python 3.10`
#         to the system python3 when no python3.10 exists (uv would otherwise
#         try to download CPython from GitHub)
#       - SSL_CERT_FILE etc. so uv/pip trust the TLS-intercepting proxy's CA
#   * the SkyPilot client side under $SKY_CLIENT_HOME: ~/.slurm/config, ssh key,
#     ~/.sky/config.yaml
#
# Environment knobs (all optional):
#   BASE=/tmp/local-slurm   state dir (sshd config/keys, pid files, venv)
#   SKY_CLIENT_HOME=$BASE/home HOME used by the SkyPilot client (tests/cloud/test_slurm_e2e.py sets it)
#   SLURM_USER=skytest  SSH_PORT=2222  SLURM_CLUSTER=localcluster
#   NODE_CPUS=8 NODE_MEM_MB=16384  advertised node size (over-subscribes the VM on
#                                 purpose so several 2-CPU SkyPilot clusters fit)
#   SLURM_MAX_TIME=12:00:00       partition MaxTime (= lifetime cap of a SkyPilot cluster)
#   SKYPILOT_SPEC='skypilot==0.14.1'  INSTALL_SKYPILOT=0  SKY_VENV=$BASE/venv
#                                 (off by default: the project's .venv-cloud has skypilot)
#   NODE_PYTHON_ENV=/path/to/venv  a Python env the jobs run with on the node (Slurm has no
#                                 container); the ssh user is given traverse rights to it
#   CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt  CA file exported to the node's jobs
#
# Usage: .ci/slurm.sh          # install/configure/start (idempotent)
#        .ci/slurm.sh stop     # stop the daemons this script started
# Adapted from a checked recipe; the cloud tests (tests/cloud) call it from their fixtures.
set -euo pipefail

BASE=${BASE:-/tmp/local-slurm}
SKY_CLIENT_HOME=${SKY_CLIENT_HOME:-$BASE/home}
SLURM_USER=${SLURM_USER:-skytest}
SSH_PORT=${SSH_PORT:-2222}
SLURM_CLUSTER=${SLURM_CLUSTER:-localcluster}
NODE_CPUS=${NODE_CPUS:-8}
NODE_MEM_MB=${NODE_MEM_MB:-16384}
SLURM_MAX_TIME=${SLURM_MAX_TIME:-12:00:00}
SKYPILOT_SPEC=${SKYPILOT_SPEC:-skypilot==0.14.1}
SKY_VENV=${SKY_VENV:-$BASE/venv}
INSTALL_SKYPILOT=${INSTALL_SKYPILOT:-0}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
NODE=$(hostname -s)

log() { printf '[setup %s] %s\n' "$(date +%T)" "$*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # wait_for <seconds> <cmd...>
  local t=$1; shift
  for _ in $(seq "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  "$@"
}

stop_pidfile() { # stop a daemon we started, by its pid file
  if alive "$1"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
}

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
mkdir -p "$BASE"

if [ "${1:-}" = stop ]; then
  if [ -x "$SKY_VENV/bin/sky" ]; then  # our SkyPilot API server, if any
    HOME=$SKY_CLIENT_HOME SKYPILOT_API_SERVER_LOCAL_PORT=${SKYPILOT_API_SERVER_LOCAL_PORT:-46998} \
      timeout 60 "$SKY_VENV/bin/sky" api stop >/dev/null 2>&1 || true
  fi
  for f in "$BASE/sshd/sshd.pid" /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    stop_pidfile "$f"
    alive "$f" || rm -f "$f"   # stale pid files upset e.g. slurmctld's prerm
  done
  log "stopped sshd, slurmd, slurmctld, munged"
  exit 0
fi

# ---------------------------------------------------------------- packages
PKGS="slurm-wlm slurmctld slurmd slurm-client munge openssh-server openssh-client rsync curl ca-certificates python3 python3-venv"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  log "apt-get install $missing"
  # Wait for the dpkg lock instead of failing when another apt run holds it.
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $missing >/dev/null
fi

# ------------------------------------------------------------- hostname -> 127.0.0.1
if ! getent ahostsv4 "$NODE" | awk '{print $1}' | grep -qx '127.0.0.1'; then
  log "mapping $NODE to 127.0.0.1 in /etc/hosts"
  echo "127.0.0.1 $NODE" >> /etc/hosts
fi

# ------------------------------------------------------------------ test user
if ! id "$SLURM_USER" >/dev/null 2>&1; then
  log "creating user $SLURM_USER"
  useradd -m -s /bin/bash "$SLURM_USER"
fi
# '*' = no password but NOT locked, so key auth works with UsePAM=no.
usermod -p '*' "$SLURM_USER"
UHOME=$(getent passwd "$SLURM_USER" | cut -d: -f6)
install -d -m 700 -o "$SLURM_USER" -g "$SLURM_USER" "$UHOME/.ssh"

# --------------------------------------------------- offline runtime shims
OFF="$UHOME/.sky-offline"
install -d -o "$SLURM_USER" -g "$SLURM_USER" "$OFF" "$UHOME/bin"
if [ ! -x "$OFF/uv-real" ]; then
  log "installing uv (from PyPI) for the node-side SkyPilot runtime"
  python3 -m venv "$BASE/uv-venv"
  "$BASE/uv-venv/bin/pip" install -q uv > "$BASE/pip-uv.log" 2>&1 || { cat "$BASE/pip-uv.log"; exit 1; }
  install -m 755 "$BASE/uv-venv/bin/uv" "$OFF/uv-real"
  [ -x "$BASE/uv-venv/bin/uvx" ] && install -m 755 "$BASE/uv-venv/bin/uvx" "$OFF/uvx"
fi
cat > "$OFF/uv" <<EOF
#!/bin/bash
# uv wrapper: SkyPilot pins its runtime venv to '--python 3.10', which uv would
# download from GitHub when no local 3.10 exists. Map it to the system python3.
args=()
while [ \$# -gt 0 ]; do
  if [ "\$1" = "--python" ] && [ "\${2:-}" = "3.10" ] && ! command -v python3.10 >/dev/null 2>&1; then
    args+=(--python /usr/bin/python3); shift 2; continue
  fi
  args+=("\$1"); shift
done
exec $OFF/uv-real "\${args[@]}"
EOF
chmod 755 "$OFF/uv"
cat > "$UHOME/bin/curl" <<EOF
#!/bin/bash
# curl shim: answer SkyPilot's 'curl -LsSf https://astral.sh/uv/install.sh | sh'
# with a local installer (no internet here); pass everything else to real curl.
for a in "\$@"; do
  case "\$a" in
    https://astral.sh/uv/install.sh*)
      cat <<'INSTALLER'
#!/bin/sh
set -e
d="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"
mkdir -p "\$d"
ln -sf $OFF/uv "\$d/uv"
[ -x $OFF/uvx ] && ln -sf $OFF/uvx "\$d/uvx"
echo "uv installed (offline shim) into \$d"
INSTALLER
      exit 0;;
  esac
done
exec /usr/bin/curl "\$@"
EOF
chmod 755 "$UHOME/bin/curl"
# Environment for SSH login shells (SkyPilot runs 'bash --login -c ...'; srun and
# sbatch propagate it to job steps). ~/.profile already prepends ~/bin to PATH.
PROFILE_BLOCK="# >>> sky-local-slurm >>>
export SSL_CERT_FILE=$CA_BUNDLE REQUESTS_CA_BUNDLE=$CA_BUNDLE PIP_CERT=$CA_BUNDLE CURL_CA_BUNDLE=$CA_BUNDLE
export UV_PYTHON_DOWNLOADS=never PIP_DISABLE_PIP_VERSION_CHECK=1
# <<< sky-local-slurm <<<"
if ! grep -q '>>> sky-local-slurm >>>' "$UHOME/.profile" 2>/dev/null; then
  printf '\n%s\n' "$PROFILE_BLOCK" >> "$UHOME/.profile"
fi
chown -R "$SLURM_USER:$SLURM_USER" "$OFF" "$UHOME/bin" "$UHOME/.profile"

# -------------------------------------------------------------------- munge
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  (umask 077; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null)
  chown munge:munge /etc/munge/munge.key
fi
if ! alive /run/munge/munged.pid; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 test -S /run/munge/munge.socket.2
fi

# -------------------------------------------------------------------- slurm
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd
cat > /etc/slurm/slurm.conf.new <<EOF
# Generated by setup_local_slurm.sh: single node, loopback only.
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
# Bind slurmctld (NoCtldInAddrAny) and slurmd/srun (NoInAddrAny) to the address
# the hostname resolves to (127.0.0.1) instead of INADDR_ANY.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
SrunPortRange=60001-60200
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups/systemd in this VM: plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# Advertise more CPUs/memory than the VM has so several SkyPilot clusters
# (default 2 CPUs / 2 GB each) can be up at once.
SlurmdParameters=config_overrides
InactiveLimit=0
KillWait=5
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
# A finite MaxTime makes SkyPilot pass --time=MaxTime: leaked clusters die by themselves.
PartitionName=debug Nodes=$NODE Default=YES MaxTime=$SLURM_MAX_TIME DefMemPerCPU=1024 State=UP
EOF
conf_changed=0
if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; conf_changed=1
else
  rm -f /etc/slurm/slurm.conf.new
fi
if [ $conf_changed = 1 ]; then
  # Listening addresses etc. only change on restart, not on 'scontrol reconfigure'.
  stop_pidfile /run/slurmd.pid; stop_pidfile /run/slurmctld.pid
fi
if ! alive /run/slurmctld.pid; then
  log "starting slurmctld"
  /usr/sbin/slurmctld
fi
wait_for 30 scontrol ping
if ! alive /run/slurmd.pid; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi
wait_for 30 bash -c "sinfo -h -N -o '%t' | grep -Eq '^(idle|mix|alloc)'" || {
  scontrol update nodename="$NODE" state=resume || true
  wait_for 20 bash -c "sinfo -h -N -o '%t' | grep -Eq '^(idle|mix|alloc)'"
}

# -------------------------------------------------------------------- sshd
SSHD_DIR="$BASE/sshd"
install -d -m 700 "$SSHD_DIR"
install -d -m 755 /run/sshd
[ -f "$SSHD_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSHD_DIR/ssh_host_ed25519_key"
cat > "$SSHD_DIR/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/ssh_host_ed25519_key
PidFile $SSHD_DIR/sshd.pid
AllowUsers $SLURM_USER
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# SkyPilot multiplexes many sessions over one ControlMaster connection.
MaxSessions 100
MaxStartups 100:30:200
AllowTcpForwarding yes
PrintMotd no
LogLevel INFO
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
if alive "$SSHD_DIR/sshd.pid"; then
  kill -HUP "$(cat "$SSHD_DIR/sshd.pid")"
else
  log "starting sshd on 127.0.0.1:$SSH_PORT"
  /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log"
fi

# ------------------------------------------------------- SkyPilot client side
install -d -m 700 "$SKY_CLIENT_HOME/.ssh" "$SKY_CLIENT_HOME/.slurm" "$SKY_CLIENT_HOME/.sky"
KEY="$SKY_CLIENT_HOME/.ssh/sky-local-slurm"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C sky-local-slurm -f "$KEY"
touch "$UHOME/.ssh/authorized_keys"
grep -qF "$(cat "$KEY.pub")" "$UHOME/.ssh/authorized_keys" || cat "$KEY.pub" >> "$UHOME/.ssh/authorized_keys"
chown "$SLURM_USER:$SLURM_USER" "$UHOME/.ssh/authorized_keys"; chmod 600 "$UHOME/.ssh/authorized_keys"
cat > "$SKY_CLIENT_HOME/.slurm/config" <<EOF
# SkyPilot Slurm clusters (ssh_config syntax; Host = SkyPilot region name).
Host $SLURM_CLUSTER
    HostName 127.0.0.1
    Port $SSH_PORT
    User $SLURM_USER
    IdentityFile $KEY
    IdentitiesOnly yes
EOF
[ -f "$SKY_CLIENT_HOME/.sky/config.yaml" ] || cat > "$SKY_CLIENT_HOME/.sky/config.yaml" <<EOF
# Restrict the optimizer to Slurm; no cloud credentials exist here anyway.
allowed_clouds:
  - slurm
EOF

if [ "$INSTALL_SKYPILOT" = 1 ] && [ ! -x "$SKY_VENV/bin/sky" ]; then
  log "installing $SKYPILOT_SPEC into $SKY_VENV (uv, from PyPI)"
  [ -x "$SKY_VENV/bin/python" ] || python3 -m venv "$SKY_VENV"
  SSL_CERT_FILE=$CA_BUNDLE UV_CACHE_DIR=$BASE/uv-cache "$OFF/uv-real" pip install -q --compile-bytecode --python "$SKY_VENV/bin/python" "$SKYPILOT_SPEC"
fi

# ------------------------------------------------- the node's Python env
# Slurm runs the job without a container, directly with this env. Its interpreter may live
# under a private home (pyenv under /root): give the ssh user traverse (x) rights on the way.
if [ -n "${NODE_PYTHON_ENV:-}" ]; then
  real=$(readlink -f "$NODE_PYTHON_ENV/bin/python")
  for target in "$NODE_PYTHON_ENV" "$real"; do
    d=$(dirname "$target")
    while [ "$d" != / ]; do
      [ "$(stat -c %A "$d" | cut -c10)" = x ] || chmod o+x "$d"
      d=$(dirname "$d")
    done
  done
  runuser -u "$SLURM_USER" -- "$NODE_PYTHON_ENV/bin/python" -c 'import sys' \
    || { echo "user $SLURM_USER cannot run $NODE_PYTHON_ENV/bin/python" >&2; exit 1; }
fi

# -------------------------------------------------------------- self-check
log "self-check"
ssh -p "$SSH_PORT" -i "$KEY" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$SLURM_USER@127.0.0.1" \
    'bash --login -c "sinfo; srun -N1 -n1 hostname; command -v curl"'
log "done. pids: munged=$(cat /run/munge/munged.pid) slurmctld=$(cat /run/slurmctld.pid)" \
    "slurmd=$(cat /run/slurmd.pid) sshd=$(cat "$SSHD_DIR/sshd.pid")"
