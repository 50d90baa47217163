"""A Slurm cluster through SkyPilot (its `slurm` infra): the job runs on a node, without a container.

Plain Slurm gives SkyPilot no Docker (that needs the Pyxis plugin), no stop, no spot and no bucket
mounting; autodown works. The entry command runs directly with a Python env that already exists
on the node: $LAUNCHER_NODE_PYTHON in the submitting shell (default python3), which must have this
project installed (`pip install 'llm-launcher[gpu]'`).

SkyPilot gives each Slurm "cluster" its own home under ~/.sky_clusters/<name>-<hash>/ on the node,
so the run folder is found there when syncing over the ssh alias.
"""
import os

from launcher.backends.sky import SkyBackend


class SlurmBackend(SkyBackend):
    name = "slurm"
    infra = "slurm"
    cannot = frozenset({"tpu", "spot", "docker", "stop", "bucket"})
    uses_image = False
    optimize_offline = False  # the "catalog" is the live cluster, which `sky launch` asks itself

    def node_python(self) -> str:
        return os.environ.get("LAUNCHER_NODE_PYTHON", "python3")

    def remote_run_dir(self, job) -> str:
        # the ssh alias lands in the login user's real home; the task's HOME is the cluster's dir
        return f".sky_clusters/{job.cluster}-*/sky_workdir/{job.extra.get('node_out', '.launcher-out')}"


BACKEND = SlurmBackend()
