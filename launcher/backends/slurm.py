"""A Slurm cluster through SkyPilot (its `slurm` infra): the job runs on a node, without a container.

Plain Slurm gives SkyPilot no Docker (that needs the Pyxis plugin), no stop, no spot and no bucket
mounting; autodown works. The entry command runs directly with a Python env that already exists
on the node: $LAUNCHER_NODE_PYTHON in the submitting shell (default python3), which must have this
project installed (`pip install 'llm-launcher[gpu]'`).

SkyPilot gives each Slurm "cluster" its own home under ~/.sky_clusters/<name>-<hash>/ on the node,
so the run folder is found there when syncing over the ssh alias.
"""
import os

from launcher.backends import register
from launcher.backends.sky import SkyBackend


@register
class SlurmBackend(SkyBackend):
    name = "slurm"
    summary = "your own Slurm cluster, no container"
    infra = "slurm"
    cannot = {
        "tpu": "a Slurm cluster has no TPUs here; TPUs are on Google Cloud: --tpu v3-8",
        "spot": "Slurm has no spot machines; drop --spot",
        "docker": "plain Slurm runs no containers (that needs the Pyxis plugin): the job runs with $LAUNCHER_NODE_PYTHON on the node",
        "bucket": "Slurm jobs here do not upload to a bucket: drop outputs.bucket; checkpoints come home by `launcher sync` (rsync)",
    }
    uses_image = False
    needs_accelerators = False  # a Slurm partition may be CPU-only, and the cluster knows what it has
    optimize_offline = False  # the "catalog" is the live cluster, which `sky launch` asks itself

    def node_python(self) -> str:
        return os.environ.get("LAUNCHER_NODE_PYTHON", "python3")

    def remote_run_dir(self, job) -> str:
        # the ssh alias lands in the login user's real home; the task's HOME is the cluster's dir
        return f".sky_clusters/{job.cluster}-*/sky_workdir/{job.extra.get('node_out', '.launcher-out')}"
