"""The GPU trainer: fine-tunes with the Hugging Face Trainer on GPUs (and on the CPU for `--cloud local`).

train.py is the command (`python -m trainers.gpu.train`), launch.py builds the command line for
one device or many (accelerate launch), data.py reads the prepared data, callbacks.py makes
preemption and checkpoints safe, final.py writes OUT/final.
"""
