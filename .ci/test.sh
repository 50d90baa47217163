#!/usr/bin/env bash
# Runs the whole suite (or the groups named) in its two environments (see the Makefile) and prints one total line.
# Services (Docker engine, local registry, Slurm, sshd, S3 and GCS servers) are started by the
# tests' own fixtures on 127.0.0.1 and stopped after. tests/cloud changes HOME and SkyPilot's
# runtime folder for its whole process, so each cloud-side folder gets its own pytest process.
set -uo pipefail
cd "$(dirname "$0")/.."
reports=.cache/reports
rm -rf "$reports"; mkdir -p "$reports"
rc=0
free_gb() { df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4 / 1048576)}'; }
# The suite writes images, a registry, SkyPilot runtimes and checkpoints (about 10 GB at its peak);
# a full disk shows up as odd failures deep inside a tool, so say how much there was.
run() { # run NAME PYTHON PATHS...
  local name=$1 py=$2; shift 2
  echo "=== $name: $* ($(free_gb) GB free in ${TMPDIR:-/tmp})"
  local t0=$SECONDS
  "$py" -m pytest -q -p no:cacheprovider --durations=12 --junitxml="$reports/$name.xml" "$@" || rc=1
  echo "=== $name took $((SECONDS - t0))s"
}
# The groups, in the order they run; `.ci/test.sh GROUP...` runs only those (make test-train, test-cloud).
groups=("$@"); [ ${#groups[@]} -gt 0 ] || groups=(train sync cloud images)
for g in "${groups[@]}"; do
  case $g in
    # FAST_DONE=1 (.ci/run, after `make check`): the fast tier of these folders has just passed; not twice.
    train)  run train .venv/bin/python ${FAST_DONE:+-m "slow or docker or slurm or cloud or distributed"} \
              tests/launcher tests/dataprep tests/trainers_gpu tests/trainers_tpu ;;
    sync)   run sync .venv-cloud/bin/python tests/sync ;;
    cloud)  run cloud .venv-cloud/bin/python tests/cloud ;;
    images) run images .venv-cloud/bin/python tests/images ;;
    *) echo "unknown test group $g (train, sync, cloud, images)" >&2; exit 2 ;;
  esac
done
.venv/bin/python - "$reports" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in sorted(Path(sys.argv[1]).glob("*.xml")):
    for s in ET.parse(f).getroot().iter("testsuite"):
        for k in t:
            t[k] += int(s.get(k, 0))
failed = t["failures"] + t["errors"]
print(f"total: {t['tests'] - failed - t['skipped']} passed, {failed} failed, {t['skipped']} skipped")
PY
exit $rc
