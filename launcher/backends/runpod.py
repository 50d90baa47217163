"""RunPod through SkyPilot: the job's image IS the pod.

So there is no Docker daemon inside, no bucket mounting (checkpoints leave by rsync or the
trainer's own upload), one pod per job (no multi-node), and a pod is never stopped, only deleted.
"""
from launcher.backends.sky import SkyBackend


class RunPodBackend(SkyBackend):
    name = "runpod"
    infra = "runpod"
    cannot = frozenset({"tpu", "multi_node", "stop", "bucket"})


BACKEND = RunPodBackend()
