"""`attg-eval finetune`, `segment` and `taskonomy`: the commands that train the encoder.

Their parsers suppress defaults: the namespace holds only the flags given (and ``--config``'s
values), so that finetune's flags override its ``--preset``, and a dense flag left out takes the
dataset's recipe. ``--help`` shows each default from the config dataclass (``show_default``).
"""

from __future__ import annotations

import argparse

from attgmae.cli._args import (
    ACCEPT_CHANGED_HELP,
    OVERWRITE_HELP,
    config_from_args,
    name_list,
    show_default,
)
from attgmae.cli._config_file import add_config_flag
from attgmae.cli._habits import (
    CHECKPOINT_KEY_HELP,
    COMMON_EVAL_REFUSED,
    DENSE_EVAL,
    DENSE_POOL,
    add_encoder_habits,
    add_launch_flags,
    add_refusals,
)
from attgmae.core.constants import TRUST_FLAG
from attgmae.pipelines.finetune_config import PRESETS, FinetuneConfig, preset_values
from attgmae.pipelines.segment_config import INFERENCE_MODES, RECIPE_FIELDS, SegmentConfig
from attgmae.pipelines.taskonomy_config import TaskonomyConfig

CHECKPOINT_NAMES = ("--checkpoint", "--finetune", "--pretrained_weights")  # ours, MAE's, DINO's
BATCH_NAMES = ("--batch_size", "--batch_size_per_gpu")  # ours and MAE's, DINO's

# attg-eval finetune's flags besides --checkpoint, --data_path and --preset: (name, type,
# help). Each default lives in FinetuneConfig; a flag given overrides the preset's value.
_FINETUNE_FLAGS = [
    ("output_dir", str, "checkpoints, log.txt, finetune.json and .png go here"),
    ("log_dir", str, "TensorBoard folder (default: OUTPUT_DIR/tensorboard)"),
    ("model", str, "architecture name when the checkpoint does not record it (sets the heads)"),
    ("timm_model", str, "any timm architecture by name; --checkpoint holds its weights"),
    ("num_heads", int, "attention heads (overrides the name and width tables)"),
    ("checkpoint_key", str, CHECKPOINT_KEY_HELP),
    ("nb_classes", int, "MAE's class count: checked against DATA_PATH/train's class folders"),
    ("input_size", int, "image size"),
    ("drop_path", float, "stochastic depth rate"),
    ("epochs", int, "training epochs"),
    ("warmup_epochs", int, "linear lr warmup epochs"),
    ("batch_size", int, "images per process and micro-batch"),
    ("accum_iter", int, "micro-batches per optimizer step (unset: 1, or --eff_batch_size's)"),
    ("eff_batch_size", int, "batch_size x accum_iter x processes; sets --accum_iter"),
    ("blr", float, "base lr: lr = blr x effective batch / 256"),
    ("lr", float, "absolute lr (overrides --blr)"),
    ("min_lr", float, "lr at the end of the cosine"),
    ("layer_decay", float, "layer-wise lr decay (ELECTRA/BEiT)"),
    ("weight_decay", float, "AdamW weight decay (not on 1-D parameters, cls_token, pos_embed)"),
    ("clip_grad", float, "max gradient norm (unset: no clipping)"),
    ("aa", str, "RandAugment policy (timm name); none: off"),
    ("color_jitter", float, "colour jitter (only acts without RandAugment)"),
    ("smoothing", float, "label smoothing"),
    ("reprob", float, "random erasing probability"),
    ("remode", str, "random erasing mode"),
    ("recount", int, "random erasing count"),
    ("mixup", float, "mixup alpha (on when > 0)"),
    ("cutmix", float, "cutmix alpha (on when > 0)"),
    ("mixup_prob", float, "probability of mixup or cutmix per batch"),
    ("mixup_switch_prob", float, "probability of cutmix when both are on"),
    ("mixup_mode", str, "batch, pair or elem"),
    ("subset_file", str, "train only on the images listed (ImageNet 1%% / 10%% files)"),
    ("percent", float, "train on P%% of each class (seeded)"),
    ("shots", int, "train on N images per class (seeded)"),
    ("seed", int, "subset, sample order, augmentation and mixup seed"),
    ("device", str, "auto (cuda when available), cuda, cuda:N, cpu"),
    ("amp", str, "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
    ("num_workers", int, "DataLoader workers per process"),
    ("resume", str, "checkpoint to continue from (default: OUTPUT_DIR's newest)"),
    ("save_every", int, "keep checkpoint-N.pth every N epochs (and the last)"),
    ("ckpt_every_steps", int, "also write checkpoint-last.pth every N optimizer steps"),
    ("print_freq", int, "iterations between progress lines"),
    ("stop_after_iters", int, "leave after N iterations, as a killed run would (tests)"),
    ("accept_changed", name_list, ACCEPT_CHANGED_HELP),
]
_FINETUNE_SWITCHES = [  # (flags, dest, value, help)
    (("--force_model",), "force_model", True, "use --model's head count even if it contradicts"),
    ((TRUST_FLAG,), "trust_checkpoint", True, "unpickle the checkpoint in full (trusted files)"),
    (("--cls_token",), "global_pool", "token", "classify the CLS token (MAE's --cls_token)"),
    (("--compile",), "compile", True, "torch.compile the model"),
    (("--no_auto_resume",), "auto_resume", False, "start over even if OUTPUT_DIR has checkpoints"),
    (("--overwrite",), "overwrite", True, OVERWRITE_HELP),
    (("--eval_only", "--eval"), "eval_only", True, "evaluate the checkpoint as it is (MAE's)"),
]


def _add_pin_mem(p, default: bool) -> None:
    """MAE's ``--pin_mem`` / ``--no_pin_mem`` on a parser that suppresses defaults."""
    on = p.add_argument("--pin_mem", dest="pin_mem", action="store_const", const=True,
                        help="pin CPU memory in the DataLoader (CUDA)")  # fmt: skip
    show_default(on, "on" if default else "off")
    p.add_argument("--no_pin_mem", dest="pin_mem", action="store_const", const=False,
                   help="turn --pin_mem off")  # fmt: skip


def _add_finetune(sub) -> None:
    d = FinetuneConfig(checkpoint="", data_path="")
    p = sub.add_parser(
        "finetune",
        help="end-to-end fine-tuning (MAE protocol), also on ImageNet 1%% / 10%% subsets",
        description="End-to-end fine-tuning as MAE's main_finetune.py; the paper's A.6 and "
        "other published recipes as --preset (docs/finetune.md).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        *CHECKPOINT_NAMES,
        required=True,
        help="pretrained weights: ours, MAE (pretrained or fine-tuned), DINO, iBOT, BEiT, "
        "SimMIM, timm ViT weights, or a timm model's weights with --timm_model",
    )
    p.add_argument("--data_path", required=True, help="image root holding train/ and val/")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a published recipe; flags given override it (docs/finetune.md)",
    )
    for name, kind, text in _FINETUNE_FLAGS:
        names = BATCH_NAMES if name == "batch_size" else (f"--{name}",)
        show_default(p.add_argument(*names, type=kind, help=text), getattr(d, name))
    pool = p.add_argument("--global_pool", nargs="?", const="avg", choices=("avg", "token"),
                          help="avg or token; alone, as MAE's switch: avg")  # fmt: skip
    show_default(pool, d.global_pool)
    p.add_argument("--cutmix_minmax", type=float, nargs=2, help="cutmix box ratio range")
    for flags, dest, value, text in _FINETUNE_SWITCHES:
        p.add_argument(*flags, dest=dest, action="store_const", const=value, help=text)
    _add_pin_mem(p, d.pin_mem)
    add_config_flag(p)
    add_encoder_habits(p)
    add_launch_flags(p)
    add_refusals(
        p,
        {
            **COMMON_EVAL_REFUSED,
            "--resplit": "random erasing splits are not implemented: leave it out",
        },
    )


# attg-eval segment / taskonomy flags besides --checkpoint and --data_path: (name, type, nargs,
# help). Each default lives in SegmentConfig / TaskonomyConfig; None there = the recipe's.
_DENSE_FLAGS = [
    ("output_dir", str, None, "checkpoints, log.txt, results JSON and PNGs go here"),
    ("log_dir", str, None, "TensorBoard folder (default: OUTPUT_DIR/tensorboard)"),
    ("model", str, None, "architecture name when the checkpoint does not record it"),
    ("num_heads", int, None, "attention heads (overrides the name and width tables)"),
    ("checkpoint_key", str, None, CHECKPOINT_KEY_HELP),
    ("input_size", int, None, "training crop and evaluation size (a multiple of 16)"),
    ("drop_path", float, None, "encoder stochastic depth rate"),
    ("epochs", int, None, "training epochs"),
    ("warmup_epochs", int, None, "lr warmup epochs"),
    ("batch_size", int, None, "images per process and micro-batch (unset: eff_batch_size / procs)"),
    ("accum_iter", int, None, "micro-batches per optimizer step (sets the effective batch)"),
    ("eff_batch_size", int, None, "batch_size x accum_iter x processes"),
    ("lr", float, None, "absolute peak lr"),
    ("warmup_lr", float, None, "lr at the start of the warmup"),
    ("min_lr", float, None, "lr at the end of the cosine"),
    ("weight_decay", float, None, "AdamW weight decay (not on 1-D parameters, cls, pos_embed)"),
    ("layer_decay", float, None, "layer-wise lr decay"),
    ("clip_grad", float, None, "max gradient norm (unset: no clipping)"),
    ("eval_every", int, None, "validate after epochs 0, N, 2N, ... and the last"),
    ("num_vis", int, None, "images in the image | prediction | target PNG"),
    ("seed", int, None, "sample order, augmentation and head init seed"),
    ("device", str, None, "auto (cuda when available), cuda, cuda:N, cpu"),
    ("amp", str, None, "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
    ("num_workers", int, None, "DataLoader workers per process"),
    ("resume", str, None, "checkpoint to continue from (default: OUTPUT_DIR's newest)"),
    ("save_every", int, None, "keep checkpoint-N.pth every N epochs (and the last)"),
    ("ckpt_every_steps", int, None, "also write checkpoint-last.pth every N optimizer steps"),
    ("print_freq", int, None, "iterations between progress lines"),
    ("stop_after_iters", int, None, "leave after N iterations, as a killed run would (tests)"),
    ("accept_changed", name_list, None, ACCEPT_CHANGED_HELP),
]
_SEGMENT_FLAGS = [
    ("dataset", str, None, "layout of --data_path: ade20k, nyuv2 or folder (docs/dense.md)"),
    ("num_classes", int, None, "folder layout without classes.txt: the number of classes"),
    ("head_dim", int, None, "ConvNeXt head: linear width per token (MultiMAE decoder_dim)"),
    ("head_preds_per_patch", int, None, "ConvNeXt head: predictions per token (a square)"),
    ("head_depth", int, None, "ConvNeXt head: blocks"),
    ("inference", str, None, f"validation inference: {' or '.join(INFERENCE_MODES)}"),
    ("slide_stride", int, None, "sliding window step (default: 2/3 of input_size)"),
]
_TASKONOMY_FLAGS = [
    ("tasks", str, "+", "depth edges keypoints2d keypoints3d occlusion (or folder names)"),
    ("labels", str, "+", "a name per checkpoint (default: file stems, else folder names)"),
    ("dpt_feature_dim", int, None, "DPT head: fusion channels"),
    ("dpt_layer_dims", int, 4, "DPT head: channels of the four reassembled stages"),
    ("block_indices", int, 4, "the four encoder blocks DPT reads (default: quarter ends)"),
    ("max_train_images", int, None, "training images used"),
    ("max_val_images", int, None, "validation images used"),
    ("max_test_images", int, None, "test images used (default: all)"),
]
_DENSE_SWITCHES = [  # (flag, dest, value, help)
    ("--force_model", "force_model", True, "use --model's head count even if it contradicts"),
    (TRUST_FLAG, "trust_checkpoint", True, "unpickle the checkpoint in full (trusted files)"),
    ("--compile", "compile", True, "torch.compile the model"),
    ("--no_auto_resume", "auto_resume", False, "start over even if OUTPUT_DIR has checkpoints"),
    ("--overwrite", "overwrite", True, OVERWRITE_HELP),
]
_DENSE_CLASSES = {
    "segment": "the classes are the dataset's (ADE20k 150, NYUv2 40); a folder layout "
    "without classes.txt takes --num_classes",
    "taskonomy": "the Taskonomy tasks regress values: there are no classes",
}


def _shown_dense_default(name: str, defaults) -> str | None:
    """A dense flag's default for --help: the recipe's, or the config's (None: not shown)."""
    if name in RECIPE_FIELDS:
        return "the recipe's"
    value = getattr(defaults, name, None)
    if value is None or name in ("labels", "block_indices", "resume", "log_dir"):
        return None  # described by the flag's help
    return value


def _add_dense(sub) -> None:
    """``segment`` and ``taskonomy``; as finetune, only the flags given reach the config."""
    commands = (
        ("segment", SegmentConfig, _SEGMENT_FLAGS, None, "semantic segmentation (Table 6)"),
        ("taskonomy", TaskonomyConfig, _TASKONOMY_FLAGS, "+", "Taskonomy transfer (Tables 3, 7)"),
    )
    for command, config, own, checkpoints, text in commands:
        d = config(checkpoint="", data_path="")
        p = sub.add_parser(command, help=text, description=f"{text[0].upper()}{text[1:]}: "
                           "MultiMAE's protocol at the paper's settings (docs/dense.md).",
                           argument_default=argparse.SUPPRESS)  # fmt: skip
        p.add_argument(
            *CHECKPOINT_NAMES,
            required=True,
            nargs=checkpoints,
            help="pretrained weights (any format docs/finetune.md lists)",
        )
        p.add_argument("--data_path", required=True, help="dataset root (docs/dense.md)")
        for name, kind, nargs, help_text in _DENSE_FLAGS + own:
            names = BATCH_NAMES if name == "batch_size" else (f"--{name}",)
            action = p.add_argument(*names, type=kind, nargs=nargs, help=help_text)
            show_default(action, _shown_dense_default(name, d))
        switches = _DENSE_SWITCHES
        if command == "segment":
            switches = switches + [
                ("--reduce_zero_label", "reduce_zero_label", True, "folder: 0 ignored, v -> v-1")
            ]
        for flag, dest, value, help_text in switches:
            p.add_argument(flag, dest=dest, action="store_const", const=value, help=help_text)
        _add_pin_mem(p, d.pin_mem)
        add_config_flag(p)
        add_encoder_habits(p)
        add_launch_flags(p)
        add_refusals(
            p,
            {
                **COMMON_EVAL_REFUSED,
                "--eval": DENSE_EVAL,
                "--global_pool": DENSE_POOL,
                "--cls_token": DENSE_POOL,
                "--nb_classes": _DENSE_CLASSES[command],
            },
        )


def add_parsers(sub) -> None:
    _add_finetune(sub)
    _add_dense(sub)


def finetune_config(args) -> FinetuneConfig:
    """The flags given, over the preset's values, over FinetuneConfig's defaults."""
    preset = getattr(args, "preset", None)
    given = argparse.Namespace(**{**preset_values(preset, vars(args)), **vars(args)})
    return config_from_args(FinetuneConfig, given, preset=preset)


def _finetune(args) -> int:
    from attgmae.pipelines.finetune import run_finetune  # torch, timm: only for a run

    run_finetune(finetune_config(args))
    return 0


def _segment(args) -> int:
    from attgmae.pipelines.segment import run_segment

    run_segment(config_from_args(SegmentConfig, args))
    return 0


def _taskonomy(args) -> int:
    from attgmae.pipelines.taskonomy import run_taskonomy_compare

    cfg = config_from_args(TaskonomyConfig, args, checkpoint=args.checkpoint[0])
    run_taskonomy_compare(cfg, args.checkpoint, getattr(args, "labels", None))
    return 0


COMMANDS = {"finetune": _finetune, "segment": _segment, "taskonomy": _taskonomy}
