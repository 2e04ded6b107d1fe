"""DINO attention maps: the last block's CLS-query attention over the patches.

Definition (DINO's ``get_last_selfattention`` as used in its ``visualize_attention.py``):
    attn = softmax(q k^T / sqrt(d_head))      over all 197 tokens, per head, last block
    map  = attn[:, head, CLS, patches]        -> mean over heads (or max, or one head)
         -> [14, 14] -> per-image min-max

``dino_outputs`` runs ONE forward: every block but the last uses timm's fused attention
(scaled_dot_product_attention), and the last block stops after its qkv projection, because the
CLS row of its attention and its keys (TokenCut's features) are all the two methods need.
"""

from __future__ import annotations

import math

import torch

from attgmae.core.minmax import minmax_torch


def _autocast_enabled(x: torch.Tensor, amp: bool | None) -> bool:
    # bf16 on the GPU by default (speed); exact fp32 on the CPU.
    return x.device.type == "cuda" if amp is None else bool(amp)


@torch.no_grad()
def last_block_qkv(vit, x: torch.Tensor, amp: bool | None = None) -> torch.Tensor:
    """float [B, 3, 224, 224] -> float32 [B, T, 3*D]: the last block's qkv projection output.

    T = prefix tokens (CLS) + patches; columns are (q | k | v), each heads concatenated.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=_autocast_enabled(x, amp)):
        tokens = vit.patch_embed(x)  # [B, 196, D]
        tokens = vit._pos_embed(tokens)  # [B, 197, D] (CLS prepended, position embedding added)
        tokens = vit.patch_drop(tokens)
        tokens = vit.norm_pre(tokens)
        for block in vit.blocks[:-1]:
            tokens = block(tokens)  # fused attention inside
        last = vit.blocks[-1]
        qkv = last.attn.qkv(last.norm1(tokens))  # [B, 197, 3*D]
    return qkv.float()


@torch.no_grad()
def dino_outputs(vit, x: torch.Tensor, amp: bool | None = None):
    """One forward -> (cls_attn float32 [B, heads, P], patch_keys float32 [B, P, D]).

    ``cls_attn``: last-block attention probabilities of the CLS query (softmax over all tokens,
    prefix included), at the P = 196 patch columns. ``patch_keys``: the last block's keys of the
    patch tokens, all heads concatenated (TokenCut's ``k`` features). ``amp``: bf16 autocast
    (default: on for CUDA inputs, off on CPU).
    """
    attn = vit.blocks[-1].attn
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    num_prefix = getattr(vit, "num_prefix_tokens", 1)

    qkv = last_block_qkv(vit, x, amp)  # [B, T, 3*D]
    batch, num_tokens, _ = qkv.shape
    keys = qkv[:, :, width : 2 * width]  # [B, T, D], heads concatenated (TokenCut features)
    q_cls = qkv[:, 0, :width].reshape(batch, heads, 1, head_dim)  # [B, H, 1, d]
    k_heads = keys.reshape(batch, num_tokens, heads, head_dim).transpose(1, 2)  # [B, H, T, d]
    q_cls, k_heads = attn.q_norm(q_cls), attn.k_norm(k_heads)  # identity for ViT-B/16

    # Only the CLS row of the attention matrix is needed: [B, H, 1, T], softmax over all T.
    logits = (q_cls @ k_heads.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
    cls_attn = logits.softmax(dim=-1)[:, :, 0, num_prefix:]  # [B, H, P]
    patch_keys = keys[:, num_prefix:, :]  # [B, P, D]
    return cls_attn.contiguous(), patch_keys.contiguous()


VIT_B_HEADS = 12  # DINO ViT-B/16's attention heads


def check_heads(heads, num_heads: int = VIT_B_HEADS):
    """'mean', 'max' or a head index (negative counts from the end) -> that value, checked."""
    if heads in ("mean", "max"):
        return heads
    try:
        index = int(heads)
    except (TypeError, ValueError):
        raise ValueError(f"dino heads must be mean, max or a head index, got {heads!r}") from None
    if not -num_heads <= index < num_heads:
        raise ValueError(
            f"dino heads index {index} out of range: the model has {num_heads} heads "
            f"(0..{num_heads - 1})"
        )
    return index


def dino_maps(cls_attn: torch.Tensor, heads="mean") -> torch.Tensor:
    """cls_attn [B, H, P] -> float32 [B, g, g] (g = sqrt(P) = 14), per-image min-max in [0, 1].

    ``heads``: "mean" (the issue's default), "max", or an int head index.
    """
    heads = check_heads(heads, cls_attn.shape[1])
    if heads == "mean":
        per_patch = cls_attn.mean(dim=1)  # [B, P]
    elif heads == "max":
        per_patch = cls_attn.amax(dim=1)
    else:
        per_patch = cls_attn[:, heads]
    grid = math.isqrt(per_patch.shape[1])
    return minmax_torch(per_patch.reshape(-1, grid, grid))


def batch_maps(batch, params: dict) -> torch.Tensor:
    """The registry's entry: a MapBatch -> float32 [B, 14, 14] from the shared DINO forward."""
    cls_attn, _ = batch.forward("dino")
    return dino_maps(cls_attn, params["heads"])


def dino_maps_reference(vit, x: torch.Tensor, heads="mean") -> torch.Tensor:
    """The slow, obvious path (DINO's original loop): per image, fp32, explicit (non-fused)
    attention in every block, the full [H, T, T] attention matrix of the last block. [B, g, g]."""
    attn = vit.blocks[-1].attn
    num_prefix = getattr(vit, "num_prefix_tokens", 1)
    fused_before = [block.attn.fused_attn for block in vit.blocks]
    maps = []
    try:
        for block in vit.blocks:
            block.attn.fused_attn = False  # timm then computes softmax(q k^T * scale) explicitly
        for image in x:
            qkv = last_block_qkv(vit, image[None].float(), amp=False)[0]  # [T, 3*D]
            per_head = qkv.reshape(qkv.shape[0], 3, attn.num_heads, attn.head_dim)  # [T,3,H,d]
            q, k, _ = per_head.permute(1, 2, 0, 3)  # each [H, T, d]
            full = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)  # [H, T, T]
            maps.append(dino_maps(full[None, :, 0, num_prefix:], heads))
    finally:
        for block, fused in zip(vit.blocks, fused_before):
            block.attn.fused_attn = fused
    return torch.cat(maps)
