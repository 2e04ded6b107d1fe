"""Layer-wise lr decay for fine-tuning a ViT (ELECTRA, BEiT; MAE's ``param_groups_lrd``).

A ViT of depth ``d`` is cut into ``d + 2`` layers: layer 0 = the embeddings (``cls_token``,
``pos_embed``, ``patch_embed.*``), layer ``i + 1`` = ``blocks.i.*``, layer ``d + 1`` = everything
else (final norm, ``fc_norm``, head). Layer ``l`` trains with ``lr_scale = layer_decay ** (d + 1
- l)``: the head at the full lr, each block below it ``layer_decay`` times slower.

A model that numbers its own layers (``layer_id(name)`` and ``num_layers``, as
``attgmae.models.dense_model.DenseModel`` does for an encoder under a dense head) is cut the
same way by its own numbering: ``lr_scale = layer_decay ** (num_layers + 1 - layer_id(name))``.

Weight decay: none on 1-D parameters (biases, norms, layer scales) and on the names in
``no_weight_decay_list`` (timm's ``model.no_weight_decay()``: ``cls_token``, ``pos_embed``, ...),
``weight_decay`` on the rest. One AdamW group per (layer, decayed or not), in the order their
first parameter appears in ``named_parameters()``: the groups, and so the optimizer state dicts,
line up with official MAE's.
"""

from __future__ import annotations

from torch import nn

from attgmae.core.errors import InputError


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer of parameter ``name`` in a ViT with ``num_layers`` = depth + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(
    model: nn.Module, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75
) -> list[dict]:
    """AdamW parameter groups ``{"lr_scale", "weight_decay", "params"}`` of ``model`` (a ViT
    with ``blocks``, or a model with ``layer_id`` and ``num_layers``); frozen parameters are
    left out."""
    own_numbering = callable(getattr(model, "layer_id", None)) and hasattr(model, "num_layers")
    if own_numbering:
        num_layers = model.num_layers + 1
        layer_of = model.layer_id
    else:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            if layer_decay != 1.0:
                raise InputError(
                    f"layer decay {layer_decay} needs a ViT with .blocks (or a model with "
                    f"layer_id and num_layers); {type(model).__name__} has none: use a layer "
                    f"decay of 1.0"
                )
            blocks = ()
        num_layers = len(blocks) + 1

        def layer_of(name: str) -> int:
            return layer_id_for_vit(name, num_layers)

    groups: dict[tuple[int, bool], dict] = {}  # insertion order = order of first appearance
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim == 1 or name in no_weight_decay_list)
        layer = layer_of(name)
        group = groups.get((layer, decayed))
        if group is None:
            group = groups[(layer, decayed)] = {
                "lr_scale": layer_decay ** (num_layers - layer),
                "weight_decay": weight_decay if decayed else 0.0,
                "params": [],
            }
        group["params"].append(param)
    return list(groups.values())
