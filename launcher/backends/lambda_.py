"""Lambda Cloud through SkyPilot: on-demand GPU VMs running the job's image.

Lambda has no spot market and cannot stop a VM (only terminate it), and no TPUs.
"""
from launcher.backends import register
from launcher.backends.sky import SkyBackend


@register
class LambdaBackend(SkyBackend):
    name = "lambda"
    summary = "Lambda Cloud: on-demand GPU VMs"
    infra = "lambda"
    cannot = {
        "spot": "Lambda has no spot machines; drop --spot (a Lambda GPU is on-demand), or use --cloud aws --spot",
        "tpu": "Lambda has no TPUs; TPUs are on Google Cloud: --tpu v3-8 --zone europe-west4-a",
    }
