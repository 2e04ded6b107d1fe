"""attgmae.models: the MAE (official MAE names and state_dict) and its factories."""

from attgmae.models.mae import (
    MODEL_FACTORIES,
    MaskedAutoencoderViT,
    create_mae,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_tiny_patch16,
)

__all__ = [
    "MODEL_FACTORIES",
    "MaskedAutoencoderViT",
    "create_mae",
    "mae_vit_base_patch16",
    "mae_vit_huge_patch14",
    "mae_vit_large_patch16",
    "mae_vit_tiny_patch16",
]
