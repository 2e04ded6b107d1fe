"""`attg-train`: attention-guided MAE pretraining (official main_pretrain.py flags, paper defaults).

Examples:
  attg-train --data_path IMAGENET --maps maps.zarr --output_dir out      # guided, paper recipe
  attg-train --data_path IMAGENET --guidance none --output_dir out_mae   # vanilla MAE baseline
  torchrun --nproc_per_node 8 -m attgmae.cli.train --data_path IMAGENET --maps maps.zarr ...
"""

from __future__ import annotations

import argparse
import sys

from attgmae.cli._args import (
    ACCEPT_CHANGED_HELP,
    OVERWRITE_HELP,
    add_switch,
    config_from_args,
    make_parser,
    name_list,
    run_main,
)
from attgmae.cli._config_file import add_config_flag, parse_with_config
from attgmae.cli._habits import TRAIN_REFUSED, add_refusals
from attgmae.core.constants import TAU_CONSTANT, TAU_START, TRUST_FLAG
from attgmae.pipelines.train_config import AMP_MODES, TAU_SCHEDULES, TrainConfig

# The parser is built from TrainConfig alone (no torch): --help answers at once; the pipeline
# is imported when a run starts.


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(data_path="")
    p = make_parser("attg-train", __doc__)
    add_config_flag(p)

    # data
    p.add_argument("--data_path", required=True,
                   help="folder holding train/<class>/<image>, or tar shards of `attg-maps "
                        "pack` as a brace pattern: 'shards/train-{000000..000099}.tar'")
    p.add_argument("--shuffle_buffer", type=int, default=d.shuffle_buffer,
                   help="tar shards: samples in each loader worker's shuffle buffer")
    p.add_argument("--table_dir", default=None,
                   help="folder of the node's joined map table (default: beside the store when "
                        "its folder is writable, else the temporary folder)")
    p.add_argument("--input_size", type=int, default=d.input_size, help="image size")
    p.add_argument("--aug", choices=("rrc", "resize"), default=d.aug,
                   help="rrc: RandomResizedCrop(scale 0.2-1, bicubic) + flip (MAE); "
                        "resize: resize to input_size + flip (paper A.2)")
    p.add_argument(
        "--num_workers", type=int, default=d.num_workers,
        help="loader processes per rank (as official MAE; 0: in the main process)",
    )
    add_switch(p, "pin_mem", d.pin_mem, "pin CPU memory in the DataLoader (CUDA)")
    p.add_argument("--skip_bad_images", action="store_true",
                   help="skip (and count in bad_images.txt) images that cannot be decoded")

    # guidance
    p.add_argument("--guidance", choices=("store", "random", "none"), default=d.guidance,
                   help="store: maps from --maps; random: random maps (control); none: vanilla MAE")
    p.add_argument("--maps", help="map store (*.zarr or *.h5) keyed by paths under "
                                  "data_path/train; with tar shards, the method of their maps")
    p.add_argument("--tau", type=float, default=d.tau,
                   help="temperature of the weights exp(M_norm/tau): the cosine's start, or the "
                        f"constant with --tau_schedule constant (default: {TAU_START} for the "
                        f"cosine, ours; {TAU_CONSTANT} constant, the paper's Sec. G)")
    p.add_argument("--tau_end", type=float, default=d.tau_end,
                   help="the cosine's end: tau falls from --tau to this over the whole run, "
                        "as for the paper's main models (their endpoints are not published: "
                        "this one is ours, the top of Fig. 2's scale)")
    p.add_argument("--tau_schedule", choices=TAU_SCHEDULES, default=d.tau_schedule,
                   help="cosine (the paper's main models); constant: --tau throughout (the "
                        "masking-ratio ablation of Sec. G, tau 0.75)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="weight scale")
    p.add_argument("--missing_maps", choices=("error", "uniform"), default=d.missing_maps,
                   help="images without a map: stop before training, or train with uniform weights")
    p.add_argument("--changed_images", choices=("error", "uniform", "accept"),
                   default=d.changed_images,
                   help="images replaced (other size or mtime) since their maps were computed: "
                        "stop before training, train with uniform weights, or keep the old maps")

    # model and loss
    p.add_argument("--model", default=d.model,
                   help="mae_vit_tiny_patch16, mae_vit_base_patch16, mae_vit_large_patch16, "
                        "mae_vit_huge_patch14")
    p.add_argument("--mask_ratio", type=float, default=d.mask_ratio,
                   help="fraction of patches removed")
    add_switch(p, "norm_pix_loss", d.norm_pix_loss, "per-patch normalized pixel targets (MAE)")

    # optimization
    p.add_argument("--batch_size", "--batch_size_per_gpu", type=int, default=d.batch_size,
                   help="per process; effective batch = batch_size * accum_iter * processes")
    p.add_argument("--accum_iter", type=int, default=None,
                   help="gradient accumulation steps (default: enough for an effective batch of "
                        "512, the paper's)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--warmup_epochs", type=int, default=d.warmup_epochs,
                   help="linear lr warmup epochs, then a half-cycle cosine")
    p.add_argument("--blr", type=float, default=d.blr,
                   help="base lr: lr = blr * effective batch / 256")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min_lr", type=float, default=d.min_lr, help="cosine floor")
    p.add_argument("--weight_decay", type=float, default=d.weight_decay, help="AdamW weight decay")

    # run
    p.add_argument("--output_dir", default=d.output_dir, help="checkpoints, log.txt, vis/")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: --output_dir)")
    p.add_argument(
        "--device", default=d.device, help="auto (CUDA when available), cpu, cuda, cuda:N"
    )
    p.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; fp16 uses a grad scaler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=d.seed, help="model init, masks and data order")
    p.add_argument("--resume", default="",
                   help="checkpoint to resume from (default: output_dir's newest)")
    p.add_argument(TRUST_FLAG, action="store_true",
                   help="the checkpoint resumed may hold Python objects beyond tensors: unpickle "
                        "it in full (only for files from a source you trust)")
    add_switch(p, "auto_resume", d.auto_resume,
               "continue from output_dir's newest readable checkpoint when there is one (as "
               "every command); --no_auto_resume starts over")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--accept_changed", type=name_list, default=(), metavar="NAMES",
                   help=ACCEPT_CHANGED_HELP)
    p.add_argument("--start_epoch", type=int, default=d.start_epoch,
                   help="first epoch when not resuming (MAE's; a resumed run starts where its "
                        "checkpoint ends)")
    p.add_argument("--save_every", type=int, default=d.save_every,
                   help="keep checkpoint-{epoch}.pth every this many epochs (and the last)")
    p.add_argument("--keep_checkpoints", type=int, default=d.keep_checkpoints,
                   help="keep only the newest N checkpoint-{epoch}.pth (0: all; 3.95 GB each "
                        "for ViT-L); checkpoint-last.pth always stays")
    p.add_argument("--ckpt_every_min", type=float, default=d.ckpt_every_min,
                   help="also refresh checkpoint-last.pth during an epoch this often (0: never)")
    p.add_argument("--ckpt_every_steps", type=int, default=0,
                   help="refresh checkpoint-last.pth every this many iterations (0: never)")
    p.add_argument("--stop_after_iters", type=int, default=0,
                   help="leave after this many iterations without saving, as a killed run "
                        "(for tests of resumption)")
    p.add_argument("--print_freq", type=int, default=d.print_freq,
                   help="iterations between progress lines")
    p.add_argument("--vis_every", type=int, default=0,
                   help="every this many epochs write vis/recon-epochNNNN.png")
    p.add_argument("--vis_count", type=int, default=d.vis_count, help="images in that PNG")
    p.add_argument("--knn_every", type=int, default=0,
                   help="every this many epochs log k-NN top-1 on --knn_data (train vs val)")
    p.add_argument("--knn_data", default=None, help="folder with train/ and val/ for --knn_every")

    # distributed (torchrun / SLURM set the ranks)
    p.add_argument("--dist_url", default=d.dist_url,
                   help="process-group init method: env:// only (torchrun or SLURM set it up)")
    p.add_argument("--dist_timeout_min", type=float, default=d.dist_timeout_min,
                   help="minutes a rank waits for the others (rank 0 alone saves, runs the "
                        "k-NN monitor and the visualization)")
    p.add_argument("--world_size", type=int, default=None,
                   help="processes launched (official MAE flag): checked against torchrun's")
    p.add_argument("--local_rank", type=int, default=None,
                   help="this process's GPU on its node, as torch.distributed.launch passes it "
                        "(torchrun sets LOCAL_RANK instead)")
    add_refusals(p, TRAIN_REFUSED)
    return p


def _main(argv) -> int:
    cfg = config_from_args(TrainConfig, parse_with_config(build_parser(), argv))
    from attgmae.pipelines.train import run_pretrain  # torch, timm: only for a run

    run_pretrain(cfg)
    return 0


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
