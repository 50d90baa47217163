"""AWS EC2 GPU instances through SkyPilot: on-demand or spot (managed, relaunched on preemption),
one or several nodes, the job's image on the VM. No TPUs.
"""
from launcher.backends.sky import SkyBackend


class AWSBackend(SkyBackend):
    name = "aws"
    infra = "aws"
    cannot = frozenset({"tpu"})


BACKEND = AWSBackend()
