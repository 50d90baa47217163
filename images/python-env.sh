#!/bin/sh
# The Python both images run on, shared by images/gpu/Dockerfile and images/tpu/Dockerfile:
# the distribution's python3 in a venv at /opt/venv (Debian and Ubuntu mark the system Python as
# externally managed). A base that already has python3 with venv
# (the offline test base) skips apt entirely.
set -eu
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
  rm -rf /var/lib/apt/lists/*
fi
python3 -m venv /opt/venv
