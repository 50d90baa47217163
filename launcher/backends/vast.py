"""Vast.ai through SkyPilot: the cheapest GPU rental the guide names, a marketplace of hosts.

As on RunPod, the job's image IS the instance (SkyPilot starts it as the Vast container), so
there is no Docker inside. SkyPilot's Vast support has no multi-node clusters (hosts are not
interconnected), no bucket mounting (the trainer uploads to outputs.bucket itself, so that still
works), no zones (a region is a location string of the catalog, e.g. "Texas, US, NA"), and its
catalog carries no interruptible-instance prices, so spot is refused rather than priced at $0.
An instance is torn down, never stopped (a stopped Vast instance keeps its disk and bills it).
"""
from launcher.backends import register
from launcher.backends.base import BackendError
from launcher.backends.sky import SkyBackend


@register
class VastBackend(SkyBackend):
    name = "vast"
    summary = "Vast.ai: the cheapest GPU marketplace (the image is the instance)"
    infra = "vast"
    cannot = {
        "tpu": "Vast.ai has no TPUs; TPUs are on Google Cloud: --tpu v3-8",
        "multi_node": "Vast.ai hosts are not interconnected: resources.num_nodes must be 1 (several nodes: --cloud aws)",
        "spot": "Vast.ai's interruptible instances are not priced in SkyPilot's catalog, so --spot is refused; "
                "drop it, or use --cloud aws --spot",
    }

    def check(self, spec) -> None:
        super().check(spec)
        if spec.resources.zone:
            raise BackendError("cloud vast has no zones: give a region only, as its catalog names them "
                               "(e.g. --region 'Texas, US, NA'), or none")

    def infra_string(self, spec) -> str:
        # Vast regions contain commas and spaces; SkyPilot's infra string takes them as they are.
        return "/".join(p for p in (self.infra, spec.resources.region) if p)

