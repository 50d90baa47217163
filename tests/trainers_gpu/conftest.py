"""Fixtures for the GPU-trainer tests: the real tokenizer and a small packed data set."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpu_trainer_helpers import fruit_examples, pack


@pytest.fixture(scope="session")
def fruit_data(tmp_path_factory, tokenizer) -> Path:
    """DATA_DIR with train/ (48 examples packed into 64-token rows) and val/ (8 examples)."""
    from datasets import Dataset

    data = tmp_path_factory.mktemp("data")
    Dataset.from_list(pack(fruit_examples(tokenizer, 48), 64)).save_to_disk(str(data / "train"))
    Dataset.from_list(pack(fruit_examples(tokenizer, 8, offset=3), 64)).save_to_disk(str(data / "val"))
    return data
