"""How closely two sets of maps of the same images agree: bf16 against fp32 forwards, two
machines, two runs. The bf16 tolerance below is what ``--precision auto`` (bf16 on CUDA) is held
to against the fp32 forwards that reproduce the original code (docs/maps.md, "Precision")."""

from __future__ import annotations

import numpy as np

# Measured on the CPU (bf16 autocast, random-init networks, the example images): dino mean
# |diff| 0.003, correlation 0.9998; gradcam 0.002, 0.99992; TokenCut foreground agreement 99.94%.
BF16_TOLERANCE = {"mean_abs_diff": 0.01, "correlation": 0.995, "foreground_agreement": 0.99}


def agreement(maps: np.ndarray, reference: np.ndarray) -> dict:
    """maps, reference [N, 14, 14] in [0, 1] -> mean and max |difference|, Pearson correlation
    of all values, and the fraction of patches on the same side of zero (TokenCut's foreground,
    where its maps are 0 off the object)."""
    maps = np.asarray(maps, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if maps.shape != reference.shape:
        raise ValueError(f"maps {maps.shape} and reference {reference.shape} differ in shape")
    diff = np.abs(maps - reference)
    return {
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "correlation": float(np.corrcoef(maps.ravel(), reference.ravel())[0, 1]),
        "foreground_agreement": float(((maps > 0) == (reference > 0)).mean()),
    }


def within_tolerance(stats: dict, tolerance: dict = BF16_TOLERANCE) -> bool:
    return (
        stats["mean_abs_diff"] <= tolerance["mean_abs_diff"]
        and stats["correlation"] >= tolerance["correlation"]
        and stats["foreground_agreement"] >= tolerance["foreground_agreement"]
    )
