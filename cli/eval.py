"""`attg-eval`: judge a frozen encoder — weighted k-NN (DINO) and linear / few-shot probing (MAE).

attg-eval knn --checkpoint CKPT [CKPT ...] --data_path ROOT   (ROOT holds train/ and val/)
attg-eval linprobe --checkpoint CKPT --data_path ROOT [--shots N | --percent P] [--seeds ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from attgmae.cli._args import CliError, add_subparsers, make_parser, run_main


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


def _check_paths(args):
    checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    for ckpt in checkpoints:
        if not Path(ckpt).is_file():
            raise CliError(f"checkpoint {ckpt} not found")
    for split in ("train", "val"):
        if not (Path(args.data_path) / split).is_dir():
            raise CliError(
                f"{Path(args.data_path) / split} not found: --data_path must hold "
                f"train/ and val/ (ImageFolder layout: <split>/<class>/<image>)"
            )


def _knn(args) -> int:
    from attgmae.pipelines.knn import KnnConfig, run_knn

    from attgmae.eval.report import plot_knn, write_json

    labels = args.labels or [Path(c).stem for c in args.checkpoint]
    if len(labels) != len(args.checkpoint):
        raise CliError(f"--labels gives {len(labels)} names for {len(args.checkpoint)} checkpoints")
    if len(set(labels)) != len(labels):
        raise CliError(f"labels must differ, got {labels}; pass --labels")
    results = []
    for ckpt, label in zip(args.checkpoint, labels):
        cfg = KnnConfig(
            checkpoint=ckpt,
            data_path=args.data_path,
            output_dir=args.output_dir,
            label=label,
            model=args.model,
            num_heads=args.num_heads,
            nb_knn=args.nb_knn,
            temperature=args.temperature,
            pool=args.pool,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            features_dir=args.features_dir,
            precision=args.precision,
            input_size=args.input_size,
        )
        results.append(run_knn(cfg))
    print(f"\n{'checkpoint':<24}{'k':>5}{'top-1':>9}{'top-5':>9}")
    for res in results:
        for row in res["results"]:
            print(f"{res['label']:<24}{row['k']:>5}{row['top1']:>9.2f}{row['top5']:>9.2f}")
    if len(results) > 1:
        out = Path(args.output_dir)
        write_json(
            out / "knn_compare.json",
            {
                "protocol": "knn",
                "compare": {
                    r["label"]: {
                        "checkpoint_sha256": r["checkpoint_sha256"],
                        "results": r["results"],
                    }
                    for r in results
                },
            },
        )
        plot_knn(
            {
                r["label"]: {row["k"]: (row["top1"], row["top5"]) for row in r["results"]}
                for r in results
            },
            out / "knn_compare.png",
            title="k-NN",
        )
        print(f"comparison: {out / 'knn_compare.json'}  {out / 'knn_compare.png'}")
    return 0


def _linprobe(args) -> int:
    from attgmae.pipelines.linprobe import LinprobeConfig, run_linprobe, run_seeds

    cfg = LinprobeConfig(
        checkpoint=args.checkpoint,
        data_path=args.data_path,
        output_dir=args.output_dir,
        model=args.model,
        num_heads=args.num_heads,
        pool=args.pool,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        eff_batch_size=args.eff_batch_size,
        accum_iter=args.accum_iter,
        blr=args.blr,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        shots=args.shots,
        percent=args.percent,
        seed=args.seed,
        cached_features=args.cached_features,
        features_dir=args.features_dir,
        device=args.device,
        precision=args.precision,
        num_workers=args.num_workers,
        input_size=args.input_size,
        resume=args.resume,
        auto_resume=not args.no_auto_resume,
        log_every=args.log_every,
    )
    if args.seeds:
        if args.resume:
            raise CliError(
                "--resume names one run; with --seeds each seed resumes from its "
                "own OUTPUT_DIR/seed_<s>/checkpoint-last.pth"
            )
        run_seeds(cfg, args.seeds)
    else:
        run_linprobe(cfg)
    return 0


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    _check_paths(args)
    from attgmae.data.images import ImageDecodeError
    from attgmae.eval.encoder import CheckpointError

    try:
        return _knn(args) if args.command == "knn" else _linprobe(args)
    except (CheckpointError, ImageDecodeError, ValueError, FileNotFoundError) as err:
        message = str(err).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the cause
            message = message.splitlines()[-1].removeprefix("ValueError: ")
        raise CliError(message) from None


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
