"""What the quickstart did: a few validation prompts answered before and after training, and the
train and eval loss.   python examples/quickstart/show.py runs/quickstart
"""
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from launcher.models import resolve_model
from launcher.spec import load_spec


def generate(model, tok, prompts, max_new_tokens=32):
    import torch

    answers = []
    for p in prompts:
        ids = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        answers.append(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def main(run_dir: str, n: int = 4) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(run_dir)
    spec = load_spec(out / "job.yaml")
    final = out / "final"
    rows = [json.loads(line) for line in (out / "data" / "val.jsonl").read_text().splitlines()[:n]]
    key_in, key_out = spec.data.input_key, spec.data.output_key
    prompts = [r[key_in] for r in rows]

    base_path = resolve_model(spec.model)
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    before = generate(model, tok, prompts)
    if (final / "adapter_config.json").exists():
        tuned = PeftModel.from_pretrained(model, final)
    else:
        tuned = AutoModelForCausalLM.from_pretrained(final)
    after = generate(tuned, tok, prompts)

    console = Console(width=160)
    table = Table(title=f"{spec.name}: validation prompts, before and after", show_lines=True)
    for col in ("prompt", "expected", "before", "after"):
        table.add_column(col, overflow="fold")
    for r, b, a in zip(rows, before, after):
        question = r[key_in].split("user\n")[-1].split("<|im_end|>")[0].strip()
        table.add_row(question, r[key_out], b, a)
    console.print(table)

    history = json.loads((final / "trainer_state.json").read_text())["log_history"]
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    console.print(f"train loss: {train[0][1]:.3f} (step {train[0][0]}) -> {train[-1][1]:.3f} (step {train[-1][0]})")
    console.print("eval loss:  " + " -> ".join(f"{loss:.3f} (step {step})" for step, loss in evals))
    if len(evals) >= 2 and evals[0][0] == 0:  # train.eval_on_start: the loss before any training
        verdict = "lower" if evals[-1][1] < evals[0][1] else "NOT lower"
        console.print(f"eval loss after training is {verdict} than before it ({evals[0][1]:.3f} -> {evals[-1][1]:.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
