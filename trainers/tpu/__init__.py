"""The TPU trainer: full fine-tunes with EasyLM (JAX/Flax) on TPU VMs, from and back to a HF checkpoint.

`convert` moves weights between Hugging Face and EasyLM's streaming format, `data` turns the
prepared JSONL into EasyLM's json dataset, `flags` renders EasyLM's command line from the job spec,
`easylm_main` runs EasyLM with our run-time fixes, and `train` is the command that ties them together.
Nothing here imports JAX or EasyLM at import time: only `easylm_main` runs inside EasyLM's Python.
"""
