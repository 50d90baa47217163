"""Real services on 127.0.0.1 for tests and benchmarks: a free port, waiting for a server to
listen, stopping it, and the S3 server (moto in server mode) that several of them use.

Plain functions, no pytest: `bench/` imports this module too. A service that cannot start raises
ServiceError, which a test shows as an error (never a skip).
"""
from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_exe(name: str, install: str) -> str:
    """An executable of this environment (preferred) or of PATH."""
    exe = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not exe:
        raise ServiceError(f"{name} is required and was not found ({install})")
    return exe


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise ServiceError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serve(argv: list[str], port: int, what: str) -> Iterator[str]:
    """Run a server listening on 127.0.0.1:`port`; yields its http URL, stops it after."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, what)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def moto_server() -> contextlib.AbstractContextManager[str]:
    """AWS's APIs (S3, ECR, ...) on loopback: moto in server mode, from the dev extra."""
    port = free_port()
    exe = find_exe("moto_server", "pip install 'moto[server]'")
    return serve([exe, "-H", "127.0.0.1", "-p", str(port)], port, "moto_server")


def gcs_server() -> contextlib.AbstractContextManager[str]:
    """Google Cloud Storage's API on loopback: gcp-storage-emulator, in memory."""
    port = free_port()
    exe = find_exe("gcp-storage-emulator", "pip install gcp-storage-emulator")
    return serve([exe, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"], port, "gcp-storage-emulator")
