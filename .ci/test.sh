#!/usr/bin/env bash
# Runs the whole suite in its two environments (see the Makefile) and prints one total line.
# Services (Docker engine, local registry, Slurm, sshd, S3 server) are started by the tests'
# own fixtures on 127.0.0.1 and stopped after.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/reports
rc=0
.venv/bin/python -m pytest -q tests/launcher tests/dataprep tests/trainers_gpu tests/trainers_tpu \
  --junitxml=.cache/reports/train.xml || rc=$?
.venv-cloud/bin/python -m pytest -q tests/cloud tests/sync tests/images \
  --junitxml=.cache/reports/cloud.xml || rc=$?
.venv/bin/python - <<'PY'
import xml.etree.ElementTree as ET
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in (".cache/reports/train.xml", ".cache/reports/cloud.xml"):
    try:
        for s in ET.parse(f).getroot().iter("testsuite"):
            for k in t:
                t[k] += int(s.get(k, 0))
    except (OSError, ET.ParseError):
        t["errors"] += 1
failed = t["failures"] + t["errors"]
print(f"total: {t['tests'] - failed - t['skipped']} passed, {failed} failed, {t['skipped']} skipped")
PY
exit $rc
