"""Masked autoencoder (MAE) with a ViT encoder, state_dict-compatible with official MAE.

The parameter names and shapes are those of facebookresearch/mae ``models_mae.py``
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N``, ``norm``, ``decoder_embed``,
``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``, ``decoder_pred``),
so official checkpoints load here and ours load into the official fine-tuning code. Blocks are
timm's (fused scaled-dot-product attention). Two additions, both optional:

- ``noise [N, L]`` replaces the uniform noise whose argsort decides which patches are masked
  (as in HuggingFace ViTMAE), so a run is reproducible sample by sample;
- ``loss_weights [N, L]`` (patch order of ``patchify``) weights each patch's MSE:
  ``loss = sum(mse * mask * w) / sum(mask)`` (the AttG guided loss).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from attgmae.models.pos_embed import sincos_2d


class MaskedAutoencoderViT(nn.Module):
    """MAE: encode the visible 1 - mask_ratio of the patches, decode all, MSE on the masked."""

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
        norm_layer=nn.LayerNorm,
        norm_pix_loss=False,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss

        # Encoder: patch embedding + fixed sin-cos positions + ViT blocks.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)

        # Decoder: lighter ViT over visible tokens + mask tokens, predicting pixels per patch.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(
                    decoder_embed_dim,
                    decoder_num_heads,
                    mlp_ratio,
                    qkv_bias=True,
                    norm_layer=norm_layer,
                )
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self.initialize_weights()

    # ------------------------------------------------------------------ initialization
    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def grid_size(self) -> int:
        """Patches per side (14 for 224 / 16)."""
        return self.patch_embed.grid_size[0]

    def initialize_weights(self):
        grid = self.grid_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], grid, cls_token=True)[None])
            self.decoder_pos_embed.copy_(
                sincos_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None]
            )
        # The patch projection is a linear map on flattened patches: init it like one.
        proj_w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(proj_w.view(proj_w.shape[0], -1))
        # std 0.02 normal (a truncated normal at 2 std is practically the same).
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)  # as JAX ViT
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs [N, C, H, W] -> [N, L, p*p*C], patches row-major, pixels (row, col, channel)."""
        p = self.patch_size
        n, c, h_px, w_px = imgs.shape
        if h_px != w_px or h_px % p:
            raise ValueError(f"patchify needs square images divisible by {p}, got {h_px}x{w_px}")
        h = w = h_px // p
        x = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # [N, h, w, p, p, C]
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, p*p*C] -> imgs [N, C, H, W] (inverse of ``patchify``)."""
        p = self.patch_size
        c = self.in_chans
        h = w = int(round(x.shape[1] ** 0.5))
        if h * w != x.shape[1]:
            raise ValueError(f"unpatchify needs a square number of patches, got {x.shape[1]}")
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [N, C, h, p, w, p]
        return x.reshape(x.shape[0], c, h * p, w * p)

    # ------------------------------------------------------------------ masking
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep the ``int(L * (1 - mask_ratio))`` patches with the smallest noise.

        x [N, L, D], noise [N, L] (uniform [0, 1) when None)
        -> x_visible [N, len_keep, D], mask [N, L] (0 keep, 1 masked), ids_restore [N, L]
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must be [{n}, {length}], got {list(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascending: first = kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # rank of each patch in the shuffle
        ids_keep = ids_shuffle[:, :len_keep]
        x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = (ids_restore >= len_keep).to(x.dtype)  # a patch is masked when ranked past keep
        return x_visible, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(self, imgs, mask_ratio, noise=None):
        """imgs [N, C, H, W] -> latent [N, 1 + len_keep, D] (CLS first), mask, ids_restore."""
        x = self.patch_embed(imgs)  # [N, L, D]
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        """latent [N, 1 + len_keep, D] -> pred [N, L, p*p*C] for every patch (CLS dropped)."""
        x = self.decoder_embed(latent)  # [N, 1 + len_keep, Dd]
        n, visible_plus_cls, dim = x.shape
        num_masked = ids_restore.shape[1] + 1 - visible_plus_cls
        tokens = torch.cat([x[:, 1:, :], self.mask_token.expand(n, num_masked, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    # ------------------------------------------------------------------ loss
    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets [N, L, p*p*C]: pixels, per-patch normalized with norm_pix_loss."""
        target = self.patchify(imgs.float())
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as official MAE
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs, pred, mask, loss_weights=None):
        """Mean (optionally weighted) per-patch MSE over the masked patches.

        imgs [N, C, H, W], pred [N, L, p*p*C], mask [N, L] (1 masked), loss_weights [N, L] or None
        loss = sum(mse * mask * w) / sum(mask)
        """
        mse = (pred.float() - self.patch_targets(imgs)).pow(2).mean(dim=-1)  # [N, L]
        mask = mask.float()
        if loss_weights is not None:
            if loss_weights.shape != mse.shape:
                raise ValueError(
                    f"loss_weights must be {list(mse.shape)} (patch order of patchify), "
                    f"got {list(loss_weights.shape)}"
                )
            mse = mse * loss_weights.float()
        return (mse * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75, loss_weights=None, noise=None):
        """-> (loss, pred [N, L, p*p*C], mask [N, L]) like official MAE."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask, loss_weights)
        return loss, pred, mask


def _mae(**defaults):
    """A factory taking the official overrides (norm_pix_loss, img_size, ...) as kwargs."""

    def factory(**kwargs):
        return MaskedAutoencoderViT(
            mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **{**defaults, **kwargs}
        )

    return factory


# Official names and sizes; the official decoder: 512-d, 8 blocks, 16 heads.
DEC512D8B = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
mae_vit_base_patch16 = _mae(patch_size=16, embed_dim=768, depth=12, num_heads=12, **DEC512D8B)
mae_vit_large_patch16 = _mae(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **DEC512D8B)
mae_vit_huge_patch14 = _mae(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **DEC512D8B)
# A few small blocks: for tests and the CPU demo.
TINY_DECODER = {"decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4}
mae_vit_tiny_patch16 = _mae(patch_size=16, embed_dim=192, depth=4, num_heads=3, **TINY_DECODER)

# Official aliases with the decoder spelled out.
mae_vit_base_patch16_dec512d8b = mae_vit_base_patch16
mae_vit_large_patch16_dec512d8b = mae_vit_large_patch16
mae_vit_huge_patch14_dec512d8b = mae_vit_huge_patch14

MODEL_FACTORIES = {
    "mae_vit_tiny_patch16": mae_vit_tiny_patch16,
    "mae_vit_base_patch16": mae_vit_base_patch16,
    "mae_vit_large_patch16": mae_vit_large_patch16,
    "mae_vit_huge_patch14": mae_vit_huge_patch14,
    "mae_vit_base_patch16_dec512d8b": mae_vit_base_patch16,
    "mae_vit_large_patch16_dec512d8b": mae_vit_large_patch16,
    "mae_vit_huge_patch14_dec512d8b": mae_vit_huge_patch14,
}


def create_mae(name: str, **kwargs) -> MaskedAutoencoderViT:
    """Build the MAE named ``name`` (one of MODEL_FACTORIES) with official overrides."""
    try:
        factory = MODEL_FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_FACTORIES)}"
        ) from None
    return factory(**kwargs)
