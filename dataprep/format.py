"""Stage 5, format: a cleaned record becomes one line of train.jsonl / val.jsonl.

`data.format: text` writes {"text"}; `input_output` writes {"input", "output"} (the key names are
configurable). Chat turns, and input/output pairs when `data.chat_template` is on, are rendered
with the tokenizer's own chat template: the prompt is every turn up to the last assistant turn plus
the generation prompt, the answer is that last assistant turn. Without a chat template, a pair's
prompt is written with `data.prompt_template` (Alpaca's "### Instruction: / ### Response:" by
default), so a base model learns where the prompt ends; the answer stays as it is, and the
tokenizer puts the loss on it alone.
"""
from __future__ import annotations

from launcher.dataspec import PROMPT_TEMPLATES, DataConfig


class Formatter:
    def __init__(self, cfg: DataConfig, tokenizer):
        self.cfg = cfg
        self.tok = tokenizer
        self.prompt = PROMPT_TEMPLATES.get(cfg.prompt_template, cfg.prompt_template)

    def _template(self, turns: list[dict], generation_prompt: bool) -> str:
        if not getattr(self.tok, "chat_template", None):
            from .errors import DataError

            raise DataError("chat data needs a tokenizer with a chat template; this one has none "
                            "(set data.chat_template: false and use input/output or text data)")
        return self.tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    def pair(self, rec: dict) -> tuple[str, str] | str:
        """(prompt, answer), or a drop reason."""
        if "messages" in rec:
            turns = rec["messages"]
            # a chat that ends on the user's turn (a ShareGPT export cut mid-conversation) trains on
            # its last answer; the turns after it have nothing to learn
            last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)
            if last is None:
                return "chat_without_final_answer"
            return self._template(turns[:last], True), turns[last]["content"]
        if "text" in rec:
            return "", rec["text"]
        if self.cfg.chat_template:
            return self._template([{"role": "user", "content": rec["input"]}], True), rec["output"]
        # replace, not str.format: a user's template may hold other braces (JSON, code)
        return self.prompt.replace("{input}", rec["input"]), rec["output"]

    def __call__(self, rec: dict) -> dict | str:
        c = self.cfg
        if c.format == "text":
            if "text" in rec:
                return {c.text_key: rec["text"]}
            if "messages" in rec:
                # the template closes the last turn and tokenizing adds the end-of-sequence token:
                # where those are one token (SmolLM2's <|im_end|>) it would come twice
                text = self._template(rec["messages"], False).rstrip()
                eos = getattr(self.tok, "eos_token", None)
                return {c.text_key: text.removesuffix(eos) if eos else text}
            p = self.pair(rec)
            if isinstance(p, str):
                return p
            return {c.text_key: p[0] + p[1]}
        p = self.pair(rec)
        if isinstance(p, str):
            return p
        return {c.input_key: p[0], c.output_key: p[1]}
