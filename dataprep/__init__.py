"""Data preparation: raw text data (HTML, CSV, SQL dumps, JSONL ...) to tokenized, packed Arrow; see pipeline.py."""
