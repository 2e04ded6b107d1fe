"""`attg-eval`: judge a frozen encoder — weighted k-NN (DINO) and linear / few-shot probing (MAE).

attg-eval knn --checkpoint CKPT [CKPT ...] --data_path ROOT   (ROOT holds train/ and val/)
attg-eval linprobe --checkpoint CKPT --data_path ROOT [--shots N | --percent P] [--seeds ...]
"""

from __future__ import annotations

import sys

from attgmae.cli._args import add_subparsers, config_from_args, make_parser, run_main
from attgmae.core.constants import TRUST_FLAG
from attgmae.core.errors import InputError
from attgmae.pipelines.knn import KnnConfig, run_knn_compare
from attgmae.pipelines.linprobe import LinprobeConfig, run_linprobe, run_seeds


def _add_common(p, default_batch, default_out):
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
        "--pool",
        choices=("cls", "avg"),
        default="cls",
        help="cls: CLS token after the final norm; avg: mean patch token after it",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cpu")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="encoder forward: auto = bf16 autocast on CUDA, fp32 on CPU",
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
    _add_common(p, default_batch=128, default_out="output_eval")

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
    p.add_argument("--seed", type=int, default=0, help="subset and training seed")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="one run per seed in OUTPUT_DIR/seed_<s>, then mean and std",
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
    p.add_argument("--log_every", type=int, default=50, help="steps between log lines")
    _add_common(p, default_batch=512, default_out="output_linprobe")
    return parser


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


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    return _knn(args) if args.command == "knn" else _linprobe(args)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
