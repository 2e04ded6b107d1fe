"""`attg-eval`: judge an encoder — k-NN (DINO), linear / few-shot probing, fine-tuning (MAE).

attg-eval knn --checkpoint CKPT [CKPT ...] --data_path ROOT   (ROOT holds train/ and val/)
attg-eval linprobe --checkpoint CKPT --data_path ROOT [--shots N | --percent P | --subset_file F]
attg-eval finetune --checkpoint CKPT --data_path ROOT [--preset in1k-vit-l] [--subset_file F]
attg-eval segment --checkpoint CKPT --dataset ade20k|nyuv2|folder --data_path ROOT
attg-eval taskonomy --checkpoint CKPT [CKPT ...] --data_path ROOT [--tasks depth edges ...]
"""

from __future__ import annotations

import argparse
import sys

from attgmae.cli._args import (
    ACCEPT_CHANGED_HELP,
    OVERWRITE_HELP,
    add_subparsers,
    config_from_args,
    make_parser,
    name_list,
    run_main,
)
from attgmae.core.constants import TRUST_FLAG
from attgmae.core.errors import InputError
from attgmae.pipelines.finetune import run_finetune
from attgmae.pipelines.finetune_config import PRESETS, FinetuneConfig, preset_values
from attgmae.pipelines.knn import KnnConfig, run_knn_compare
from attgmae.pipelines.linprobe import LinprobeConfig, run_linprobe, run_seeds
from attgmae.pipelines.segment import run_segment
from attgmae.pipelines.segment_config import INFERENCE_MODES, RECIPE_FIELDS, SegmentConfig
from attgmae.pipelines.taskonomy import run_taskonomy_compare
from attgmae.pipelines.taskonomy_config import TaskonomyConfig

# attg-eval finetune's flags besides --checkpoint, --data_path and --preset: (name, type,
# help). Each default lives in FinetuneConfig; a flag given overrides the preset's value.
_FINETUNE_FLAGS = [
    ("output_dir", str, "checkpoints, log.txt, finetune.json and .png go here"),
    ("model", str, "architecture name when the checkpoint does not record it (sets the heads)"),
    ("timm_model", str, "any timm architecture by name; --checkpoint holds its weights"),
    ("num_heads", int, "attention heads (overrides the name and width tables)"),
    ("checkpoint_key", str, "entry of a DINO/iBOT training checkpoint: teacher or student"),
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
_FINETUNE_SWITCHES = [  # (flag, dest, value, help)
    ("--force_model", "force_model", True, "use --model's head count even if it contradicts"),
    (TRUST_FLAG, "trust_checkpoint", True, "unpickle the checkpoint in full (trusted files)"),
    ("--cls_token", "global_pool", "token", "classify the CLS token (MAE's --cls_token)"),
    ("--no_pin_mem", "pin_mem", False, "do not pin CPU memory in the DataLoader"),
    ("--compile", "compile", True, "torch.compile the model"),
    ("--no_auto_resume", "auto_resume", False, "start over even if OUTPUT_DIR has checkpoints"),
    ("--overwrite", "overwrite", True, OVERWRITE_HELP),
    ("--eval_only", "eval_only", True, "evaluate the checkpoint as it is (MAE's --eval)"),
]


def _add_common(p, default_batch, default_out, default_precision="auto"):
    p.add_argument("--data_path", required=True, help="image root holding train/ and val/")
    p.add_argument("--output_dir", default=default_out, help="where results go")
    p.add_argument(
        "--model",
        default=None,
        help="architecture name when the checkpoint does not record it "
        "(mae_vit_large_patch16, vit_large_patch16, ...): sets the head count",
    )
    p.add_argument("--num_heads", type=int, default=None, help="attention heads (overrides)")
    p.add_argument(
        "--force_model",
        action="store_true",
        help="take the head count from --model even if it contradicts the checkpoint",
    )
    p.add_argument(
        "--pool",
        choices=("cls", "avg"),
        default="cls",
        help="cls: CLS token after the final norm; avg: mean patch token after it",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cpu")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=default_precision,
        help="encoder forward: fp32; bf16 autocast; auto = bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument(
        "--checkpoint_key",
        default=None,
        help="entry of a DINO/iBOT training checkpoint: teacher (default) or student",
    )
    p.add_argument("--batch_size", type=int, default=default_batch)
    p.add_argument("--num_workers", type=int, default=8)
    p.add_argument(
        "--features_dir",
        default=None,
        help="feature cache keyed by checkpoint sha256 and split (default: OUTPUT_DIR/features)",
    )
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="the checkpoint may hold Python objects beyond tensors: unpickle it in full "
        "(only for files from a source you trust)",
    )


def build_parser():
    parser = make_parser("attg-eval", __doc__.splitlines()[0])
    sub = add_subparsers(parser)

    p = sub.add_parser("knn", help="weighted k-NN on frozen features (DINO protocol)")
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="ours (checkpoint-*.pth), official mae_pretrain_*.pth, or timm ViT "
        "weights (.pth/.safetensors); several to compare them",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="a name per checkpoint for the outputs (default: file stems)",
    )
    p.add_argument(
        "--nb_knn",
        type=int,
        nargs="+",
        default=[5, 10, 20, 100, 200],
        help="values of k (those above the training set size are skipped)",
    )
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T)")
    # fp32 by default: DINO's k-NN extracts features in fp32 (docs/evaluation.md: the bf16 gap)
    _add_common(p, default_batch=128, default_out="output_eval", default_precision="fp32")

    p = sub.add_parser("linprobe", help="linear probing (MAE protocol), few-shot, several seeds")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--warmup_epochs", type=int, default=10)
    p.add_argument(
        "--eff_batch_size",
        type=int,
        default=4096,
        help="samples per optimizer step; accumulated over micro-batches",
    )
    p.add_argument(
        "--accum_iter",
        type=int,
        default=None,
        help="micro-batches per step (default: eff_batch_size / batch_size)",
    )
    p.add_argument("--blr", type=float, default=0.1, help="lr = blr * effective batch / 256")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--weight_decay", type=float, default=0.0)
    shots = p.add_mutually_exclusive_group()
    shots.add_argument("--shots", type=int, default=None, help="N training images per class")
    shots.add_argument(
        "--percent", type=float, default=None, help="P%% of each class's training images"
    )
    shots.add_argument(  # a group's flags get no automatic second spelling: both named here
        "--subset_file",
        "--subset-file",
        dest="subset_file",
        default=None,
        help="train on the images listed, one file name (or class/name) a line: the ImageNet "
        "1%% / 10%% lists (SimCLR's 1percent.txt / 10percent.txt)",
    )
    p.add_argument(
        "--small_subset",
        choices=("cycle", "partial"),
        default="cycle",
        help="a subset smaller than --eff_batch_size: cycle = every epoch one step on exactly "
        "eff_batch_size samples cycled through it (the paper's A.8); partial = one step on "
        "the subset once (its samples only)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="head init, training order and per-class subset"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="one run per seed in OUTPUT_DIR/seed_<s>, then mean and std (with "
        "--subset_file the subset is the same for every seed)",
    )
    p.add_argument(
        "--cached_features",
        action="store_true",
        help="train on features computed once without augmentation "
        "(much faster; an approximation of the protocol)",
    )
    p.add_argument("--resume", default=None, help="head checkpoint to resume from")
    p.add_argument(
        "--no_auto_resume",
        action="store_true",
        help="do not resume from OUTPUT_DIR/checkpoint-last.pth",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--accept_changed", type=name_list, default=(), metavar="NAMES",
                   help=ACCEPT_CHANGED_HELP)
    p.add_argument("--log_every", type=int, default=50, help="steps between log lines")
    _add_common(p, default_batch=512, default_out="output_linprobe")
    _add_finetune(sub)
    _add_dense(sub)
    return parser


def _add_finetune(sub) -> None:
    """Defaults are suppressed: the namespace holds only the flags given, so they override the
    preset, which overrides FinetuneConfig's defaults."""
    d = FinetuneConfig(checkpoint="", data_path="")
    p = sub.add_parser(
        "finetune",
        help="end-to-end fine-tuning (MAE protocol), also on ImageNet 1%% / 10%% subsets",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--checkpoint",
        "--finetune",
        required=True,
        help="pretrained weights: ours, MAE (pretrained or fine-tuned), DINO, iBOT, BEiT, "
        "SimMIM, timm ViT weights, or a timm model's weights with --timm_model",
    )
    p.add_argument("--data_path", required=True, help="image root holding train/ and val/")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a published recipe (docs)")
    for name, kind, text in _FINETUNE_FLAGS:
        p.add_argument(f"--{name}", type=kind, help=f"{text} [default: {getattr(d, name)}]")
    p.add_argument("--global_pool", choices=("avg", "token"), help="avg [default] or token")
    p.add_argument("--cutmix_minmax", type=float, nargs=2, help="cutmix box ratio range")
    for flag, dest, value, text in _FINETUNE_SWITCHES:
        p.add_argument(flag, dest=dest, action="store_const", const=value, help=text)


# attg-eval segment / taskonomy flags besides --checkpoint and --data_path: (name, type, nargs,
# help). Each default lives in SegmentConfig / TaskonomyConfig; None there = the recipe's.
_DENSE_FLAGS = [
    ("output_dir", str, None, "checkpoints, log.txt, results JSON and PNGs go here"),
    ("model", str, None, "architecture name when the checkpoint does not record it"),
    ("num_heads", int, None, "attention heads (overrides the name and width tables)"),
    ("checkpoint_key", str, None, "entry of a DINO/iBOT training checkpoint"),
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
    ("--no_pin_mem", "pin_mem", False, "do not pin CPU memory in the DataLoader"),
    ("--compile", "compile", True, "torch.compile the model"),
    ("--no_auto_resume", "auto_resume", False, "start over even if OUTPUT_DIR has checkpoints"),
    ("--overwrite", "overwrite", True, OVERWRITE_HELP),
]


def _add_dense(sub) -> None:
    """``segment`` and ``taskonomy``; as finetune, only the flags given reach the config."""
    commands = (
        ("segment", SegmentConfig, _SEGMENT_FLAGS, None, "semantic segmentation (Table 6)"),
        ("taskonomy", TaskonomyConfig, _TASKONOMY_FLAGS, "+", "Taskonomy transfer (Tables 3, 7)"),
    )
    for command, config, own, checkpoints, text in commands:
        d = config(checkpoint="", data_path="")
        p = sub.add_parser(command, help=text, argument_default=argparse.SUPPRESS)
        p.add_argument("--checkpoint", required=True, nargs=checkpoints, help="pretrained weights")
        p.add_argument("--data_path", required=True, help="dataset root (docs/dense.md)")
        for name, kind, nargs, help_text in _DENSE_FLAGS + own:
            default = "the recipe's" if name in RECIPE_FIELDS else getattr(d, name, None)
            shown = f" [default: {default}]" if default is not None else ""
            p.add_argument(f"--{name}", type=kind, nargs=nargs, help=help_text + shown)
        switches = _DENSE_SWITCHES
        if command == "segment":
            switches = switches + [
                ("--reduce_zero_label", "reduce_zero_label", True, "folder: 0 ignored, v -> v-1")
            ]
        for flag, dest, value, help_text in switches:
            p.add_argument(flag, dest=dest, action="store_const", const=value, help=help_text)


def _knn(args) -> int:
    cfg = config_from_args(KnnConfig, args, checkpoint=args.checkpoint[0])
    run_knn_compare(cfg, args.checkpoint, args.labels)
    return 0


def _linprobe(args) -> int:
    cfg = config_from_args(LinprobeConfig, args, auto_resume=not args.no_auto_resume)
    if args.seeds:
        if args.resume:
            raise InputError(
                "--resume names one run; with --seeds each seed resumes from its "
                "own OUTPUT_DIR/seed_<s>/checkpoint-last.pth"
            )
        run_seeds(cfg, args.seeds)
    else:
        run_linprobe(cfg)
    return 0


def finetune_config(args) -> FinetuneConfig:
    """The flags given, over the preset's values, over FinetuneConfig's defaults."""
    preset = getattr(args, "preset", None)
    given = argparse.Namespace(**{**preset_values(preset, vars(args)), **vars(args)})
    return config_from_args(FinetuneConfig, given, preset=preset)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "finetune":
        run_finetune(finetune_config(args))
        return 0
    if args.command == "segment":
        run_segment(config_from_args(SegmentConfig, args))
        return 0
    if args.command == "taskonomy":
        cfg = config_from_args(TaskonomyConfig, args, checkpoint=args.checkpoint[0])
        run_taskonomy_compare(cfg, args.checkpoint, getattr(args, "labels", None))
        return 0
    return _knn(args) if args.command == "knn" else _linprobe(args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
