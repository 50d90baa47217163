"""Setup for the cloud tests: SkyPilot offline with real catalog excerpts, and the local Slurm cluster.

Before anything imports `sky`, SKY_RUNTIME_DIR points at a fresh folder holding the catalog
excerpts (launcher/catalogs, real rows of SkyPilot's v8 catalogs), and the local API
server is disabled: a test that would reach a server, or a cloud, fails at once instead of
launching anything. The Slurm end-to-end test starts its own API server in a separate process.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from common import REPO, quickstart_copy


_RUNTIME = Path(tempfile.mkdtemp(prefix="launcher-sky-runtime-"))
shutil.copytree(REPO / "launcher" / "catalogs", _RUNTIME / ".sky" / "catalogs" / "v8",
                ignore=shutil.ignore_patterns("README.md"))
_ISOLATED_HOME = Path(tempfile.mkdtemp(prefix="launcher-sky-home-"))  # no cloud credentials in it
for _tmp in (_RUNTIME, _ISOLATED_HOME):
    atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
os.environ["SKY_RUNTIME_DIR"] = str(_RUNTIME)
os.environ["HOME"] = str(_ISOLATED_HOME)
os.environ["SKYPILOT_DISABLE_LOCAL_API_SERVER"] = "1"
os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # no 1-second waits for an instance role
for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS"):
    os.environ.pop(var, None)


@pytest.fixture
def quickstart_job(tmp_path) -> Path:
    """A copy of the quickstart (job file and its data), a few training steps long."""
    return quickstart_copy(tmp_path / "quickstart")
