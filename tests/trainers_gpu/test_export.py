"""From a finished run to llama.cpp, for real: the quickstart, fine-tuned through the CLI as a user
runs it (`launcher submit examples/quickstart/job.yaml` with a few short-run overrides and
`outputs.export.gguf=q4_k_m`: data prep, LoRA training of the real SmolLM2-135M, and the trainer's
own end-of-job export); then `launcher export RUN --gguf f16`; both loaded by llama.cpp
(llama-cpp-python) and compared with the HF model; the merge checked against base+adapter;
generate/chat/push through the CLI; and the one-line refusals. One run (module fixture) serves
every test.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from common import REPO
from launcher.cli import main
from launcher.manifest import verify, write_manifest

pytest.importorskip("llama_cpp", reason="needs the export extra (llama-cpp-python)")
pytestmark = pytest.mark.slow  # a real fine-tune of the quickstart: not the fast tier

NAME = "qs-export"
# A training example of the quickstart (examples/quickstart/data/instructions.jsonl)
PROMPT, ANSWER = "What is 50 plus 23?", "50 plus 23 is 73."
TOKENS = 12  # greedy tokens compared between HF and llama.cpp


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("export-run") / "run"
    env = {**os.environ, "LAUNCHER_HOME": str(tmp_path_factory.mktemp("export-home"))}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                           timeout=1500, env=env)
        assert r.returncode == 0, f"launcher {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    sets = {"name": NAME, "outputs.dir": str(out), "outputs.export.gguf": "q4_k_m", "train.max_steps": "12",
            "train.eval_steps": "6", "train.save_steps": "12", "train.warmup_steps": "0",
            "train.learning_rate": "2e-3", "data.max_length": "128", "train.sample_prompts": "1"}
    submitted = cli("submit", str(REPO / "examples/quickstart/job.yaml"), "--detach",
                    *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    job_id = next(ln.split()[1] for ln in submitted.splitlines() if ln.startswith("submitted "))
    log = cli("logs", "-f", job_id)  # exits with the job's exit code: 0
    assert "converting to GGUF q4_k_m" in log and verify(out / "final") == [], log[-3000:]
    return out


@pytest.fixture(scope="module")
def f16(run, tmp_path_factory) -> Path:
    to = tmp_path_factory.mktemp("export-f16")
    r = CliRunner().invoke(main, ["export", str(run), "--gguf", "f16", "--to", str(to)])
    assert r.exit_code == 0, r.output
    return to


@pytest.fixture(scope="module")
def hf(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "export" / "model")
    model = AutoModelForCausalLM.from_pretrained(run / "export" / "model", dtype=torch.float32).eval()
    return tok, model


def llama(path: Path, **kw):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0, **kw)


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    import torch

    tok, model = hf
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, len(ids):].tolist()


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    got = []
    for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        got.append(t)
        if len(got) == n or t == llm.token_eos():
            break
    return got


def test_job_end_export_is_a_complete_synced_unit(run):
    assert verify(run / "export") == []  # a manifest like a checkpoint's: sync brings it home verified
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["export"]["gguf"] == [f"{NAME}-q4_k_m.gguf"]
    assert f"{NAME}-q4_k_m.gguf" in manifest["files"] and "model/model.safetensors" in manifest["files"]
    assert (run / "export" / "model" / "chat_template.jinja").is_file()


def test_f16_gguf_continues_like_hf_and_carries_the_chat_template(run, f16, hf):
    from trainers.export import gguf_metadata

    tok, _ = hf
    path = f16 / f"{NAME}-f16.gguf"
    meta = gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.chat_template"] == tok.chat_template and "<|im_start|>" in meta["tokenizer.chat_template"]

    llm = llama(path)
    ids = tok(PROMPT)["input_ids"]
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids  # the tokenizer came across too
    want = hf_greedy(hf, ids, TOKENS)
    assert llama_greedy(llm, ids, TOKENS) == want

    from trainers.export import Generator  # chat through each side's own copy of the template
    messages = [{"role": "user", "content": "What is 6 times 8?"}]
    assert Generator(path)(messages, TOKENS).strip() == Generator(run / "export" / "model")(messages, TOKENS).strip()


def test_q4_k_m_gguf_stays_close_to_hf(run, hf):
    """The measure: teacher-forced next-token agreement (argmax) over a training example's tokens."""
    import numpy as np
    import torch

    tok, model = hf
    path = run / "export" / f"{NAME}-q4_k_m.gguf"
    from trainers.export import gguf_metadata

    assert gguf_metadata(path)["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}],
                                  tokenize=False)
    ids = tok(ids)["input_ids"]
    import llama_cpp

    llm = llama(path)
    q = []
    for t in ids:  # one token a step: logits_all=True crashes llama-cpp-python 0.3.36's decode
        llm.eval([t])
        q.append(int(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).argmax()))
    q = np.array(q)
    with torch.no_grad():
        h = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    agreement = float((q == h).mean())
    print(f"q4_k_m vs HF: top-1 agreement {agreement:.2f} over {len(ids)} positions")
    assert agreement >= 0.8


def test_merged_logits_equal_base_plus_adapter(run, smollm2_dir, hf):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok, merged = hf
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(ids).logits
        peft = PeftModel.from_pretrained(base, str(run / "final")).eval()
        want = peft(ids).logits
        got = merged(ids).logits
    assert (want - before).abs().max() > 0.5  # the adapter changes the model
    assert torch.allclose(got, want, atol=2e-3, rtol=0), (got - want).abs().max()


def test_generate_and_chat_through_the_cli(run, hf):
    tok, _ = hf
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    want = tok.decode(hf_greedy(hf, tok(text)["input_ids"], 10), skip_special_tokens=True).strip()
    r = CliRunner().invoke(main, ["generate", str(run), PROMPT, "--max-new-tokens", "10", "--compare-base"])
    assert r.exit_code == 0, r.output
    tuned, base = r.output.strip().split("\n[base] ")
    assert tuned == f"[fine-tuned] {want}"  # the adapter on its base, with the chat template: as merged
    assert base  # 12 steps need not change a 10-token reply, so only that the base answered too
    r = CliRunner().invoke(main, ["generate", str(run), PROMPT, "--gguf", "--max-new-tokens", "10"])
    assert r.exit_code == 0 and r.output.strip(), r.output
    line = PROMPT.replace("\n", " ")  # chat reads one line a turn
    once = CliRunner().invoke(main, ["generate", str(run), line, "--max-new-tokens", "10"])
    # piped input that simply ends (no empty line, as Ctrl-D ends a terminal's) ends the chat, exit 0
    r = CliRunner().invoke(main, ["chat", str(run), "--max-new-tokens", "10"], input=f"{line}\n")
    assert r.exit_code == 0 and once.exit_code == 0, r.output + once.output
    assert once.output.strip() and once.output.strip() in r.output  # the same model, prompt and template


def test_model_card_and_push_up_to_the_hub(run, monkeypatch, tmp_path):
    from launcher.hub import files, model_card
    from trainers.export import Run

    r = Run(run)
    up = files(r)
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
            f"{NAME}-q4_k_m.gguf", "loss.png"} <= set(up)
    assert not any(k.startswith("adapter") or k == "manifest.json" for k in up)
    card = model_card(r, "someone/fruit", up)
    # What the run itself recorded: the trainer's log and data prep's report.
    history = json.loads((run / "final" / "trainer_state.json").read_text())["log_history"]
    train = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert f"Final train loss: {train[-1]:.4f}" in card and f"Final eval loss: {evals[-1]:.4f}" in card
    report = json.loads((run / "data" / "report.json").read_text())
    ingest = report["stages"]["ingest"]
    assert report["summary"] in card and f"| ingest | {ingest['in']} | {ingest['kept']} |" in card
    assert "(12 steps)" in card and "| learning rate | 0.002 |" in card and "| LoRA r | 16 |" in card
    assert "![loss](loss.png)" in card
    assert card.startswith("---\n") and "llm-launcher" in card.split("---")[1]

    monkeypatch.delenv("HF_TOKEN", raising=False)
    res = CliRunner().invoke(main, ["push", str(run), "--hub", "someone/fruit"])
    assert res.exit_code == 2 and "HF_TOKEN" in res.output and len(res.output.strip().splitlines()) == 1
    secret = "hf_test_token_never_written_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's own offline switch: stops at the API call
    res = CliRunner().invoke(main, ["push", str(run), "--hub", "someone/fruit", "--private"])
    assert res.exit_code == 2 and "push to someone/fruit failed" in res.output and "offline" in res.output.lower()
    assert not any(secret.encode() in p.read_bytes() for p in run.rglob("*") if p.is_file())


def test_bad_input_gets_one_line(run, tmp_path):
    def cli(*args):
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        return r.output

    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    assert "has not finished" in cli("export", str(unfinished), "--gguf", "f16")
    assert "did you mean 'q4_k_m'" in cli("export", str(run), "--gguf", "q4km")

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    other = tmp_path / "other" / "final"
    other.mkdir(parents=True)
    (other / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(gpt2)}))
    (other / "job.yaml").write_text(yaml.safe_dump({"name": "other", "model": str(gpt2)}))
    write_manifest(other)
    out = cli("export", str(other.parent), "--gguf", "q8_0")
    assert "supports the LLaMA family" in out and "GPT2LMHeadModel" in out

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "outputs": {"export": {"gguf": "q9_k"}}}))
    assert "outputs.export.gguf: unknown GGUF type 'q9_k'" in cli("submit", str(job), "--dry-run")


def test_export_without_gguf_keeps_the_earlier_gguf(run):
    from trainers.export import exported

    gguf = f"{NAME}-q4_k_m.gguf"
    assert exported(run)["gguf"] == [gguf]
    r = CliRunner().invoke(main, ["export", str(run)])  # as the README writes it: a merge, no --gguf
    assert r.exit_code == 0, r.output
    assert verify(run / "export") == [] and exported(run)["gguf"] == [gguf]
    r = CliRunner().invoke(main, ["generate", str(run), PROMPT, "--gguf", "--max-new-tokens", "4"])
    assert r.exit_code == 0 and r.output.strip(), r.output
