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

from attgmae.cli import eval_supervised
from attgmae.cli._args import (
    ACCEPT_CHANGED_HELP,
    OVERWRITE_HELP,
    add_subparsers,
    config_from_args,
    make_parser,
    name_list,
    run_main,
)
from attgmae.cli._config_file import add_config_flag, parse_with_config
from attgmae.cli._habits import (
    CHECKPOINT_KEY_HELP,
    COMMON_EVAL_REFUSED,
    EVAL_ONLY_LINPROBE,
    NO_PIN_MEM,
    add_encoder_habits,
    add_launch_flags,
    add_refusals,
    add_use_cuda,
    arch_model,
    habits_group,
    launch_flags,
)
from attgmae.core.constants import PRECISIONS, TRUST_FLAG
from attgmae.core.errors import InputError
from attgmae.pipelines.knn_config import KnnConfig
from attgmae.pipelines.linprobe_config import LinprobeConfig

# The parsers are built from the light config modules alone (no torch): every --help and bad
# flag answers at once; each command imports its pipeline when it runs.
finetune_config = eval_supervised.finetune_config  # the flags given -> FinetuneConfig

POOL_HELP = (
    "cls: the CLS token after the final norm (DINO's k-NN feature; MAE's --cls_token); avg: "
    "the mean of the patch tokens before the final norm, through a fresh LayerNorm without "
    "affine part (MAE's linear probe with --global_pool)"
)


def _add_common(p, d, data_required: bool = True) -> None:
    """The flags k-NN and the linear probe share; ``d``: the command's config defaults."""
    p.add_argument(
        "--data_path",
        required=data_required,
        default=None,
        help="image root holding train/ and val/"
        + ("" if data_required else " (required unless --load_features)"),
    )
    p.add_argument("--output_dir", default=d.output_dir, help="where results go")
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
    p.add_argument("--pool", choices=("cls", "avg"), default=d.pool, help=POOL_HELP)
    p.add_argument("--global_pool", dest="pool", action="store_const", const="avg",
                   help="MAE's switch: --pool avg")  # fmt: skip
    p.add_argument("--cls_token", dest="pool", action="store_const", const="cls",
                   help="MAE's switch: --pool cls")  # fmt: skip
    p.add_argument("--device", default=d.device, help="auto (cuda when available), cuda, cpu")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="encoder forward: fp32; bf16 autocast; auto = bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--checkpoint_key", default=None, help=CHECKPOINT_KEY_HELP)
    p.add_argument(
        "--batch_size",
        "--batch_size_per_gpu",
        type=int,
        default=d.batch_size,
        help="images per forward pass of the encoder (DINO's --batch_size_per_gpu)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=d.num_workers,
        help="DataLoader workers (0: in the main process)",
    )
    p.add_argument(
        "--features_dir",
        default=None,
        help="feature cache, keyed by everything that defines the features and checked "
        "against every image's size and mtime (default: OUTPUT_DIR/features)",
    )
    p.add_argument(
        "--input_size",
        type=int,
        default=d.input_size,
        help="center crop size (resized to size x 256 / 224 first)",
    )
    p.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="the checkpoint may hold Python objects beyond tensors: unpickle it in full "
        "(only for files from a source you trust)",
    )
    p.add_argument("--nb_classes", type=int, default=None,
                   help="MAE's class count: checked against the class folders of "
                        "DATA_PATH/train, which decide it")  # fmt: skip
    add_config_flag(p)
    add_encoder_habits(p)
    add_launch_flags(p)


def _add_knn(sub) -> None:
    d = KnnConfig(checkpoint="", data_path="")
    p = sub.add_parser(
        "knn",
        help="weighted k-NN on frozen features (DINO protocol)",
        description="Weighted k-NN on frozen features, as DINO's eval_knn.py.",
    )
    p.add_argument(
        "--checkpoint",
        "--pretrained_weights",
        "--finetune",
        nargs="+",
        default=None,
        help="ours (checkpoint-*.pth), official mae_pretrain_*.pth, or timm ViT "
        "weights (.pth/.safetensors); several to compare them (DINO's --pretrained_weights, "
        "MAE's --finetune; required unless --load_features)",
    )
    p.add_argument(
        "--dump_features",
        default=None,
        help="also write the features as DINO's eval_knn.py dumps them (trainfeat.pth, "
        "testfeat.pth, trainlabels.pth, testlabels.pth) into this folder",
    )
    p.add_argument(
        "--load_features",
        default=None,
        help="run the k-NN on such dumped files (ours or DINO's) instead of a checkpoint",
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
        default=d.nb_knn,
        help="values of k (those above the training set size are skipped)",
    )
    p.add_argument(
        "--temperature", type=float, default=d.temperature, help="vote weight exp(sim / T)"
    )
    # fp32 by default: DINO's k-NN extracts features in fp32 (docs/evaluation.md: the bf16 gap)
    _add_common(p, d, data_required=False)
    add_use_cuda(p)
    habits_group(p).add_argument(
        "--eval",
        action="store_true",
        default=argparse.SUPPRESS,
        help="MAE's evaluation-only switch: accepted; k-NN only evaluates",
    )
    habits_group(p).add_argument(
        "--pin_mem",
        action="store_true",
        default=argparse.SUPPRESS,
        help="MAE's switch: accepted; extraction pins memory on CUDA",
    )
    add_refusals(p, {
        **COMMON_EVAL_REFUSED,
        "--no_pin_mem": NO_PIN_MEM,
        "--log_dir": "k-NN writes no TensorBoard log: its numbers are in OUTPUT_DIR/knn_*.json",
    })  # fmt: skip


def _add_linprobe(sub) -> None:
    d = LinprobeConfig(checkpoint="", data_path="")
    p = sub.add_parser(
        "linprobe",
        help="linear probing (MAE protocol), few-shot, several seeds",
        description="A linear head on the frozen encoder, as MAE's main_linprobe.py (the "
        "paper's Table 2); few-shot subsets; several seeds.",
    )
    p.add_argument(
        "--checkpoint",
        "--finetune",
        "--pretrained_weights",
        required=True,
        help="the encoder to probe (MAE's --finetune, DINO's --pretrained_weights)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument(
        "--warmup_epochs",
        type=int,
        default=d.warmup_epochs,
        help="linear lr warmup epochs, then a half-cycle cosine",
    )
    p.add_argument(
        "--eff_batch_size",
        type=int,
        default=d.eff_batch_size,
        help="samples per optimizer step; accumulated over micro-batches",
    )
    p.add_argument(
        "--accum_iter",
        type=int,
        default=None,
        help="micro-batches per step (default: eff_batch_size / batch_size)",
    )
    p.add_argument("--blr", type=float, default=d.blr, help="lr = blr * effective batch / 256")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min_lr", type=float, default=d.min_lr, help="lr at the end of the cosine")
    p.add_argument("--weight_decay", type=float, default=d.weight_decay, help="LARS weight decay")
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
        default=d.small_subset,
        help="a subset smaller than --eff_batch_size: cycle = every epoch one step on exactly "
        "eff_batch_size samples cycled through it (the paper's A.8); partial = one step on "
        "the subset once (its samples only)",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="head init, training order and per-class subset"
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
        dest="auto_resume",
        action="store_false",
        help="do not resume from OUTPUT_DIR/checkpoint-last.pth",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--accept_changed", type=name_list, default=(), metavar="NAMES",
                   help=ACCEPT_CHANGED_HELP)
    p.add_argument("--log_every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument(
        "--log_dir", default=None, help="TensorBoard folder (default: OUTPUT_DIR/tensorboard)"
    )
    _add_common(p, d)
    habits_group(p).add_argument(
        "--pin_mem",
        action="store_true",
        default=argparse.SUPPRESS,
        help="MAE's switch: accepted; the loaders pin memory on CUDA",
    )
    add_refusals(p, {**COMMON_EVAL_REFUSED, "--no_pin_mem": NO_PIN_MEM,
                     "--eval": EVAL_ONLY_LINPROBE})  # fmt: skip


def build_parser():
    parser = make_parser("attg-eval", __doc__.splitlines()[0])
    sub = add_subparsers(parser)
    _add_knn(sub)
    _add_linprobe(sub)
    eval_supervised.add_parsers(sub)
    return parser


def _knn(args) -> int:
    from attgmae.pipelines.knn import run_knn_compare  # torch: only for a run

    checkpoints = args.checkpoint or []
    cfg = config_from_args(KnnConfig, args, checkpoint=checkpoints[0] if checkpoints else None)
    run_knn_compare(cfg, checkpoints, args.labels)
    return 0


def _linprobe(args) -> int:
    from attgmae.pipelines.linprobe import run_linprobe, run_seeds  # torch: only for a run

    cfg = config_from_args(LinprobeConfig, args)
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


COMMANDS = {"knn": _knn, "linprobe": _linprobe, **eval_supervised.COMMANDS}


def parse(argv=None) -> argparse.Namespace:
    """The flags of ``argv`` (with ``--config``'s values under them), DINO's ``--arch`` /
    ``--patch_size`` resolved into ``model``."""
    args = parse_with_config(build_parser(), argv)
    model = arch_model(args)
    if model is not None:
        args.model = model
    return args


def _main(argv) -> int:
    args = parse(argv)
    launch = launch_flags(args)
    if launch:
        from attgmae.core.distributed import launched_world

        launched_world(**launch)
    return COMMANDS[args.command](args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
