"""The `data:` section of a job file: where raw data comes from and how it becomes training data.

Plain pydantic models with only pydantic as a dependency, so the launcher, the images and the
trainers can all read a job file without importing the pipeline itself.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Source(_Section):
    path: str = Field(description="A file, a glob (data/*.jsonl) or a folder, relative to the job file.")
    format: Literal["auto", "jsonl", "csv", "tsv", "html", "text", "sql", "parquet", "hf_dataset"] = Field(
        "auto", description="Input format; auto guesses from the file extension.")
    text: str | None = Field(None, description="Field or column that holds plain text (unsupervised data).")
    input: str | None = Field(None, description="Field or column that holds the prompt (supervised data).")
    output: str | None = Field(None, description="Field or column that holds the answer (supervised data).")


class DataConfig(_Section):
    sources: list[Source] = Field(default_factory=list, description="Raw data to prepare, in order.")
    format: Literal["text", "input_output"] = Field(
        "input_output", description="Training format: plain `text`, or `input`/`output` pairs with the loss on the output only.")
    split: tuple[float, float] = Field((0.99, 0.01), description="Train/validation ratio, as in the guide's 0.99,0.01.")
    seed: int = Field(42, description="Seed for the split and any sampling.")
    max_length: int = Field(2048, gt=0, description="Tokens per training sequence.")
    packing: bool = Field(True, description="Pack several examples into each sequence (no padding waste).")
