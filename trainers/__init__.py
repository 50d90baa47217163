import logging

# bitsandbytes warns at every import, on CPUs with AVX512-BF16, that an optional kernel package is
# missing: a line of noise at the top of every training, export and chat log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
