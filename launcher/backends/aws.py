"""AWS EC2 GPU instances through SkyPilot: on-demand or spot (managed, relaunched on preemption),
one or several nodes, the job's image on the VM. No TPUs.
"""
from launcher.backends import register
from launcher.backends.sky import SkyBackend


@register
class AWSBackend(SkyBackend):
    name = "aws"
    summary = "AWS EC2: GPUs, on-demand or spot, one or several nodes"
    infra = "aws"
    cannot = {"tpu": "AWS has no TPUs; TPUs are on Google Cloud: --tpu v3-8 --zone europe-west4-a"}
