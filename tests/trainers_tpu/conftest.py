"""Fixtures for the TPU trainer's tests: a two-layer cut of the real SmolLM2-135M.

The cut keeps SmolLM2's real embedding, first two layers, norm and tokenizer (same shapes, GQA,
tied embeddings, rope_theta 1e5) so that EasyLM compiles it in seconds on CPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tpu_test_helpers import cut_model


@pytest.fixture(scope="session")
def tiny_llama(smollm2_dir, tmp_path_factory) -> Path:
    return cut_model(Path(smollm2_dir), tmp_path_factory.mktemp("tiny") / "smollm2-2l", layers=2)
