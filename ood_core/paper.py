"""Published numbers of the seed papers, printed beside the workbench's own (``evaluate --paper``).

Only numbers the papers state; docs/methods.md, "Seeds' headline numbers", says where each
comes from. FPR95 and AUROC in percent; BiT-S ResNetv2-101 on ImageNet-1k val (480x480), OOD
sets as in MOS: 10,000-image subsets of iNaturalist, SUN and Places, and all of Textures (DTD).
"""
from __future__ import annotations

# GradNorm (Huang, Geng & Li, NeurIPS 2021), Table 1: per OOD set and the mean.
GRADNORM_IMAGENET = {
    "inaturalist": (50.03, 90.33), "sun": (46.48, 89.03), "places": (60.86, 84.82), "textures": (61.42, 81.07),
    "mean": (54.70, 86.31),
}
# RG (ReAct-GradNorm) paper: means over the same four sets.
RG_IMAGENET_MEAN = {"rg": (36.90, 92.17), "gradnorm": (54.70, 86.31), "energy": (71.03, 82.74),
                    "react": (67.30, 83.27), "msp": (76.96, 79.29)}
PAPERS = ("gradnorm", "rg")


def paper_set(name: str) -> str | None:
    """The paper's OOD set a dataset name stands for (``inat``, ``SUN``, ``dtd``…), or None."""
    n = name.lower()
    for key, hints in (("inaturalist", ("inat",)), ("sun", ("sun",)), ("places", ("places",)),
                       ("textures", ("texture", "dtd"))):
        if any(h in n for h in hints):
            return key
    return None


def reference(paper: str, detector: str, ood: str) -> tuple[float, float] | None:
    """``(FPR95, AUROC)`` the paper gives for ``detector`` on ``ood`` (``"mean"`` for the mean), or None."""
    key = "mean" if ood == "mean" else paper_set(ood)
    if key is None:
        return None
    if detector == "gradnorm":
        return GRADNORM_IMAGENET.get(key)
    if paper == "rg" and key == "mean":
        return RG_IMAGENET_MEAN.get(detector)
    return None
