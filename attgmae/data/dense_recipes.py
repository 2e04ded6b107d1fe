"""The fine-tuning protocol of each dense dataset, as data: what the paper's tables state (AttG
supplementary, Table 6 segmentation, Table 7 Taskonomy), and MultiMAE's configs for the rest.

Sources (EPFL-VILAB/MultiMAE):
- ADE20k: ``cfgs/finetune/semseg/ade/ft_ade_64e_mae-b_rgb.yaml`` (input_size 512, layer_decay
  0.75, drop_path_encoder 0.1, warmup_lr 1e-6, min_lr 0, eval_freq 1, decoder 6144 / 16 / 4,
  seg_reduce_zero_label); weight decay 0.05, AdamW betas (0.9, 0.999) and eps 1e-8 are
  ``run_finetuning_semseg.py``'s defaults (the config does not set them).
- NYUv2: ``cfgs/finetune/semseg/nyu/ft_nyu_200e_mae-b_rgb.yaml`` (input_size 640, eval_freq
  20, the rest as ADE20k).
- Taskonomy: ``cfgs/finetune/taskonomy/rgb2*-1k/ft_rgb2*_mae-b.yaml`` (input_size 384,
  layer_decay 0.75, drop_path_encoder 0.1, max_train_images 800, max_val_images 200,
  max_test_images 54514 = all, eval_freq 5); weight decay 0.05 from
  ``run_finetuning_taskonomy.py``'s defaults.
The paper's tables replace MultiMAE's epochs, batch, lr and warmup (MultiMAE: ADE20k 64 epochs,
batch 4 x 4 GPUs, lr 1e-4, 1 warmup epoch; NYUv2 200 epochs, batch 2 x 4 GPUs; Taskonomy 100
epochs, batch 8 on 1 GPU, lr 3e-4, 5 warmup epochs). ``folder`` (any other set) takes ADE20k's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attgmae.core.constants import PRECISIONS


@dataclass(frozen=True)
class DenseRecipe:
    """One dataset's fine-tuning settings (the defaults a pipeline's config starts from)."""

    input_size: int  # square training crop and evaluation size, pixels
    head: str  # "convnext" (segmentation) | "dpt" (Taskonomy)
    epochs: int = 64  # paper
    total_batch_size: int = 16  # over all processes and accumulation steps; paper
    lr: float = 3e-4  # paper (absolute, not scaled by batch)
    # paper: the lr at step 0, rising linearly to ``lr`` (MultiMAE's scripts start at 0: they
    # never pass their configs' warmup_lr to the scheduler)
    warmup_lr: float = 1e-6
    warmup_epochs: int = 3  # paper
    min_lr: float = 0.0  # MultiMAE: cosine decay per step down to this
    weight_decay: float = 0.05  # MultiMAE's script default
    layer_decay: float = 0.75  # MultiMAE
    drop_path: float = 0.1  # MultiMAE drop_path_encoder
    betas: tuple[float, float] = (0.9, 0.999)  # MultiMAE's AdamW
    eval_every: int = 1  # epochs between evaluations (MultiMAE eval_freq)
    inference: str = "whole"  # MultiMAE evaluates the resized, padded image in one pass
    max_train_images: int | None = None
    max_val_images: int | None = None


SEGMENT_RECIPES = {
    "ade20k": DenseRecipe(input_size=512, head="convnext"),
    "nyuv2": DenseRecipe(input_size=640, head="convnext", eval_every=20),
    "folder": DenseRecipe(input_size=512, head="convnext"),
}
TASKONOMY_RECIPE = DenseRecipe(
    input_size=384,
    head="dpt",
    total_batch_size=8,
    eval_every=5,
    max_train_images=800,
    max_val_images=200,
)


def recipe_for(dataset: str, **overrides) -> DenseRecipe:
    """The recipe of ``dataset`` (ade20k, nyuv2, folder, taskonomy), fields replaced by
    ``overrides`` (the flags a user gave)."""
    recipe = TASKONOMY_RECIPE if dataset == "taskonomy" else SEGMENT_RECIPES.get(dataset)
    if recipe is None:
        raise ValueError(f"no dense recipe for {dataset!r}")
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


# Where each dataset's settings come from (recorded in every result).
RECIPE_SOURCES = {
    "ade20k": {
        "paper": "AttG supplementary Table 6: batch 16, lr 3e-4, warmup lr 1e-6, 3 warmup "
        "epochs, 64 epochs, AdamW",
        "multimae": "cfgs/finetune/semseg/ade/ft_ade_64e_mae-b_rgb.yaml; "
        "run_finetuning_semseg.py defaults (weight decay, AdamW betas and eps)",
    },
    "nyuv2": {
        "paper": "AttG supplementary Table 6: batch 16, lr 3e-4, warmup lr 1e-6, 3 warmup "
        "epochs, 64 epochs, AdamW",
        "multimae": "cfgs/finetune/semseg/nyu/ft_nyu_200e_mae-b_rgb.yaml; "
        "run_finetuning_semseg.py defaults (weight decay, AdamW betas and eps)",
    },
    "folder": {
        "paper": "ADE20k's: AttG supplementary Table 6",
        "multimae": "ADE20k's: cfgs/finetune/semseg/ade/ft_ade_64e_mae-b_rgb.yaml",
    },
    "taskonomy": {
        "paper": "AttG supplementary Table 7: batch 8, lr 3e-4, warmup lr 1e-6, 3 warmup "
        "epochs, 64 epochs, AdamW",
        "multimae": "cfgs/finetune/taskonomy/rgb2<task>-1k/ft_rgb2<task>_mae-b.yaml; "
        "run_finetuning_taskonomy.py defaults (weight decay, AdamW betas and eps)",
    },
}


def flag_problems(cfg) -> list[str]:
    """What is wrong with the flags ``attg-eval segment`` and ``taskonomy`` share: the recipe
    fields a config sets (None: the recipe's), the precision and the number of figures."""
    problems = []
    if cfg.input_size is not None and (cfg.input_size < 16 or cfg.input_size % 16):
        problems.append(f"--input_size must be a multiple of 16 (the patch), got {cfg.input_size}")
    if cfg.amp not in PRECISIONS:
        problems.append(f"--amp must be one of {', '.join(PRECISIONS)}")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        problems.append(f"--layer_decay must be in (0, 1], got {cfg.layer_decay}")
    for name in ("batch_size", "accum_iter", "eff_batch_size", "epochs", "eval_every"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            problems.append(f"--{name} must be >= 1, got {value}")
    if cfg.num_vis < 0:
        problems.append(f"--num_vis must be >= 0, got {cfg.num_vis}")
    return problems
