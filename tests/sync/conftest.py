"""Real services for the sync tests, on 127.0.0.1 only, started here and stopped after.

- an S3 server: moto in server mode (`moto_server`, from the dev extra);
- a GCS server: gcp-storage-emulator (pure Python, from PyPI);
- an sshd on a free port that a throwaway non-root user logs in to with a key made here, which
  is how SkyPilot's ssh alias reaches a cluster; rsync runs over it for real.

A missing service fails the tests loudly: nothing here skips.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.manifest import write_manifest
from services import free_port, gcs_server as gcs_server_, moto_server, stop, wait_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BIN = Path(sys.executable).parent


def need(path: Path | str | None, what: str) -> str:
    if not path or not Path(path).exists():
        pytest.fail(f"{what} is required for these tests and was not found ({path})")
    return str(path)


# -- checkpoints -----------------------------------------------------------------------------------

def make_checkpoint(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict:
    """A checkpoint folder of random files with its manifest written last, as the trainer does."""
    import random
    rnd = random.Random(f"{folder.name}-{seed}")
    for rel, size in sizes.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(size))
    return write_manifest(folder, {"step": folder.name})


@pytest.fixture
def ckpt():
    return make_checkpoint


# -- S3 (moto server) ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_server():
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the loopback S3 server; returns (boto3 client, bucket name)."""
    import boto3
    for k, v in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"ckpt-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


# -- GCS (gcp-storage-emulator) ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def gcs_server():
    with gcs_server_() as url:
        yield url


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """A fresh bucket on the loopback GCS emulator; returns (bucket object, bucket name)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # never probe a cloud metadata server from a test
    from google.cloud import storage
    name = f"ckpt-{secrets.token_hex(4)}"
    bucket = storage.Client().create_bucket(name)
    return bucket, name


# -- sshd + rsync ------------------------------------------------------------------------------------

SSH_USER = "launcher-synctest"


class Remote:
    """A machine reachable as `host` through `ssh_config`, like a SkyPilot cluster's alias."""

    def __init__(self, host: str, ssh_config: Path, home: Path):
        self.host, self.ssh_config, self.home = host, ssh_config, home

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), self.host, command], capture_output=True, text=True,
                              timeout=30)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """sshd on a free loopback port; the login is a non-root user with a key made here.

    Run as root (CI), the test creates a throwaway user and removes it after; run as a normal
    user, sshd itself runs unprivileged and that user logs in to it.
    """
    sshd_bin = need(shutil.which("sshd") or "/usr/sbin/sshd", "sshd (apt install openssh-server)")
    need(shutil.which("rsync"), "rsync (apt install rsync)")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    if os.geteuid() == 0:
        try:  # left over from a run that was killed: start clean
            pwd.getpwnam(SSH_USER)
            subprocess.run(["userdel", "-r", SSH_USER], capture_output=True)
        except KeyError:
            pass
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", SSH_USER], check=True)
        subprocess.run(["usermod", "-p", "*", SSH_USER], check=True)  # unlocked, but no password
        user = SSH_USER
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
    home = Path(pwd.getpwnam(user).pw_dir)
    # sshd reads the key list as the user logging in, so it lives where that user can read it.
    auth = (home if os.geteuid() == 0 else d) / ".ssh-synctest" / "authorized_keys"
    auth.parent.mkdir(mode=0o755, exist_ok=True)
    shutil.copy(d / "client_key.pub", auth)
    os.chmod(auth, 0o644)
    port = free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {auth}
AllowUsers {user}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
""")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"))
    wait_port(port, proc, "sshd")
    host = "synctest-cluster"
    cfg = d / "ssh_config"  # what SkyPilot generates for a cluster: an alias with its key
    cfg.write_text(f"""\
Host {host}
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {d}/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")
    remote = Remote(host, cfg, home)
    r = remote.ssh("rsync --version")
    try:
        if r.returncode != 0:
            pytest.fail(f"ssh to the test sshd failed: {r.stderr.strip()} (sshd log: {(d / 'sshd.log').read_text()[-500:]})")
        yield remote
    finally:
        stop(proc)
        if os.geteuid() == 0:
            subprocess.run(["userdel", "-r", SSH_USER], capture_output=True)


@pytest.fixture
def remote_run(sshd):
    """A fresh run folder in the ssh user's home (readable over ssh); removed after."""
    run = sshd.home / f"run-{secrets.token_hex(4)}"
    run.mkdir(mode=0o755)
    if os.geteuid() == 0:
        shutil.chown(run, SSH_USER, SSH_USER)
    yield run
    shutil.rmtree(run, ignore_errors=True)
