"""RunPod through SkyPilot: the job's image IS the pod.

So there is no Docker daemon inside, no bucket mounting (checkpoints leave by rsync or the
trainer's own upload), one pod per job (no multi-node), and a pod is never stopped, only deleted.
"""
from launcher.backends import register
from launcher.backends.sky import SkyBackend


@register
class RunPodBackend(SkyBackend):
    name = "runpod"
    summary = "RunPod: GPU pods (the image is the pod)"
    infra = "runpod"
    cannot = {
        "tpu": "RunPod has no TPUs; TPUs are on Google Cloud: --tpu v3-8 --zone europe-west4-a",
        "multi_node": "RunPod runs one pod per job: resources.num_nodes must be 1 (use more GPUs on one pod, or --cloud aws)",
        # a preempted job resumes from its bucket (SkyPilot managed jobs), which RunPod cannot use here
        "spot": "RunPod spot pods cannot resume here (a relaunched pod would need outputs.bucket): drop --spot, "
                "or use --cloud aws --spot with an s3:// bucket",
        "bucket": "RunPod pods cannot mount or upload to a bucket here: drop outputs.bucket (checkpoints come home "
                  "by `launcher sync`), or use --cloud lambda or aws",
    }
