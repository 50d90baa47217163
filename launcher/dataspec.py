"""The `data:` section of the job spec: where raw data comes from and how it becomes training data.

Part of the ground floor with `launcher/spec.py`: plain pydantic models with only pydantic as a
dependency, so that `dataprep` depends on the spec and not the reverse, and the launcher, the images
and the trainers all read a job file without importing the pipeline. `Section` is the base of every
section of the spec.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# data.prompt_template: how an input/output pair's prompt is written when no chat template is used.
PROMPT_TEMPLATES = {
    "alpaca": "### Instruction:\n{input}\n\n### Response:\n",
    "pygmalion": "<|user|>{input}<|model|>",
    "none": "{input}",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_ENCODING_ALIASES = {"utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf-8-bom": "utf-8-sig", "ansi": "cp1252"}


class Source(Section):
    path: str | None = Field(None, description="A file, a glob (data/*.jsonl) or a folder, relative to the job file.")
    format: Literal["auto", "jsonl", "csv", "tsv", "html", "text", "sql", "parquet", "hf_dataset"] = Field(
        "auto", description="Input format; auto guesses from each file's extension, under any .gz/.bz2/.xz "
                            "(a folder's or glob's files of unknown extension are listed as rejects, not read); "
                            "a set format applies to every file. jsonl also reads a .json array of objects.")
    text: str | None = Field(None, description="Field or column that holds plain text (unsupervised data).")
    input: str | None = Field(None, description="Field or column that holds the prompt (supervised data).")
    output: str | None = Field(None, description="Field or column that holds the answer (supervised data).")
    messages: str | None = Field(None, description="Field that holds a chat: a list of turns ({role, content} or {from, value}).")
    header: bool = Field(True, description="CSV/TSV: the first row names the columns (else name columns by number: 0, 1, ...).")
    encoding: str = Field("utf-8", description="Text encoding of the files (utf-8, latin-1, cp1252 ...).")
    delimiter: str | None = Field(None, description="CSV: field separator (default , for csv, or ; | tab when the header "
                                                 "has no comma and one of those; tab for tsv).")
    table: str | None = Field(None, description="SQL dump: the table to read (default: the only table with rows).")
    splits: list[str] | None = Field(None, description="A saved DatasetDict (hf_dataset): the splits to read, e.g. [train] "
                                                       "(default: every split; the job makes its own train/validation split).")
    unit: Literal["file", "paragraph", "line"] = Field(
        "file", description="Plain text and HTML: one example per file, per paragraph, or per line.")
    url: str | None = Field(None, description="A live database URL (SQLAlchemy, e.g. postgresql://...) instead of a path.")
    query: str | None = Field(None, description="With url: the SELECT whose columns are read.")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        # what database and Windows tools call their encodings, as Python knows them
        v = _ENCODING_ALIASES.get(v.strip().lower().replace("_", "-"), v.strip())
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8, cp1252, latin-1, utf-16, shift_jis)") from None
        return v

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = {"tab": "\t", "\\t": "\t"}.get(v.lower() if len(v) > 1 else v, v)  # '\t' in YAML's single quotes is two characters
        if len(v) != 1:
            raise ValueError(f"must be one character (got {v!r}); for a tab write tab or \"\\t\"")
        return v

    @model_validator(mode="after")
    def _where(self) -> "Source":
        if not self.path and not self.url:
            raise ValueError("a source needs a path (file, glob or folder) or a url")
        if self.url and not self.query:
            raise ValueError("a url source needs a query (SELECT ...)")
        if bool(self.input) != bool(self.output):
            raise ValueError("set both input: and output: (supervised pairs), or text: alone")
        return self


class CleanConfig(Section):
    normalize: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalization form.")
    min_chars: int = Field(1, ge=0, description="Drop examples shorter than this (characters, all fields together).")
    max_chars: int = Field(1_000_000, gt=0, description="Drop examples longer than this.")
    boilerplate: Literal["drop", "cut", "off"] = Field(
        "drop", description="Synthetic-data boilerplate (As an AI language model...): drop the row, cut the sentence, or off.")
    boilerplate_extra: list[str] = Field(
        default_factory=list, description="More phrases to treat as boilerplate (case, apostrophes and punctuation ignored).")
    boilerplate_patterns: list[str] = Field(
        default_factory=list, description="More regular expressions to treat as boilerplate, searched in the text lowercased, "
                                          "apostrophes dropped, other punctuation as spaces (I'm sorry, -> im sorry).")
    boilerplate_default: bool = Field(True, description="Use the maintained default pattern families (dataprep/clean.py).")

    @model_validator(mode="after")
    def _bounds(self) -> "CleanConfig":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is more than max_chars ({self.max_chars}): "
                             "every example would be dropped")
        return self

    @field_validator("boilerplate_patterns")
    @classmethod
    def _patterns(cls, v):
        import re

        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"{p!r} is not a regular expression: {e}") from None
        return v


class DedupConfig(Section):
    exact: bool = Field(True, description="Drop exact duplicates (after normalization), keeping the first.")
    near: bool = Field(True, description="Drop near-duplicates (MinHash LSH), keeping the first.")
    threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity above which two examples are near-duplicates.")
    num_perm: int = Field(64, gt=0, description="MinHash permutations (more = more exact, slower).")


class ClusterConfig(Section):
    enabled: bool = Field(False, description="Cluster examples for a diversity report.")
    embedding: Literal["minilm", "tfidf"] = Field("tfidf", description="minilm (the MiniLM sentence model) or tfidf (no model).")
    k: int = Field(8, gt=0, description="Number of clusters (k-means).")
    max_share: float | None = Field(None, gt=0, le=1, description="Cap any one cluster's share of the data (drops the excess).")
    examples: int = Field(3, ge=0, description="Examples shown per cluster in the report.")


class DataConfig(Section):
    sources: list[Source] = Field(default_factory=list, description="Raw data to prepare, in order.")
    format: Literal["text", "input_output"] = Field(
        "input_output", description="Training format: plain `text`, or `input`/`output` pairs with the loss on the output only.")
    split: tuple[float, float] = Field(
        (0.99, 0.01), description="Train/validation ratio, as in the guide's 0.99,0.01; taken relative to their sum "
                                  "(normalised: [9, 1] is the same as [0.9, 0.1]), so they need not add up to 1.")
    seed: int = Field(42, description="Seed for the split and any sampling.")
    max_length: int = Field(2048, gt=0, description="Most tokens per training sequence (rows are not padded).")
    packing: bool = Field(True, description="Pack several examples into each sequence (no padding waste).")
    too_long: Literal["truncate", "drop"] = Field("truncate", description="An example longer than max_length: truncate or drop it.")
    chat_template: bool = Field(
        False, description="Render input/output pairs as a user/assistant chat with the tokenizer's chat template.")
    prompt_template: str = Field(
        "alpaca", description="Without chat_template: how a pair's prompt is written before its answer: alpaca "
                              "(### Instruction: / ### Response:), pygmalion (Pygmalion-2's <|user|> / <|model|>), "
                              "none (prompt and answer glued together), or your own text with {input} in it. "
                              "The loss stays on the answer only.")
    text_key: str = Field("text", description="Key of the formatted text in train.jsonl / val.jsonl.")
    input_key: str = Field("input", description="Key of the formatted prompt in train.jsonl / val.jsonl.")
    output_key: str = Field("output", description="Key of the formatted answer in train.jsonl / val.jsonl.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Deduplication.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Diversity clustering (optional).")
    chunk_size: int = Field(2000, gt=0, description="Examples tokenized per batch (memory grows with this, not the input).")
    workers: int = Field(0, ge=0, description="Processes that clean and sign examples for dedup; 0: one per core "
                                              "for inputs over 16 MB on 4 or more cores, else none.")

    @field_validator("prompt_template")
    @classmethod
    def _prompt_template(cls, v):
        if v not in PROMPT_TEMPLATES and "{input}" not in v:
            raise ValueError(f"must be one of {', '.join(PROMPT_TEMPLATES)}, or a text with {{input}} in it")
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v):
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError("both ratios must be > 0, e.g. [0.99, 0.01]")
        return v
