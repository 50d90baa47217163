"""Lambda Cloud through SkyPilot: on-demand GPU VMs running the job's image.

Lambda has no spot market and cannot stop a VM (only terminate it), and no TPUs.
"""
from launcher.backends.sky import SkyBackend


class LambdaBackend(SkyBackend):
    name = "lambda"
    infra = "lambda"
    cannot = frozenset({"spot", "stop", "tpu"})


BACKEND = LambdaBackend()
