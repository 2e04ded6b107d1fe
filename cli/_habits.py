"""The flags users of the official scripts type by habit: MAE's ``main_pretrain.py``,
``main_linprobe.py`` and ``main_finetune.py``, DINO's ``eval_knn.py`` (and ``eval_linear.py``).

Each is either taken with its meaning there (an alias of our flag, or a flag of its own here),
or refused with a one-line message that names what to type instead (exit code 2, before any
work). A refused flag is listed in ``--help`` under "official MAE / DINO flags", so that
reading the help answers the question too. Aliases live beside our flags (``--checkpoint``
answers to ``--finetune`` and ``--pretrained_weights``); this module holds the rest:

- ``--arch`` / ``--patch_size`` (DINO): a ViT name for ``--model`` (``vit_base`` + 16 ->
  ``vit_base_patch16``), checked against the checkpoint as ``--model`` is;
- ``--use_cuda`` (DINO's k-NN): ``true`` is our default; ``false`` is refused;
- the launch flags ``--dist_url`` (``env://`` only), ``--world_size`` (checked against the
  launcher's), ``--local_rank`` (as torch.distributed.launch passes it), ``--dist_eval``.

No torch here: the flags are parsed before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import re

# DINO's ViT names (vision_transformer.py: vit_tiny, vit_small, vit_base) and the larger ones.
_VIT_ARCH = re.compile(r"vit_(tiny|small|base|large|huge|giant)")
_TRUE, _FALSE = ("on", "true", "1"), ("off", "false", "0")  # DINO's utils.bool_flag words

# Flags of the official scripts with no equal in a command, and what to type instead.
START_EPOCH = (
    "a run starts at epoch 0 or continues at the epoch its checkpoint records: --resume CHECKPOINT"
)
NO_PIN_MEM = "feature extraction pins memory whenever it runs on CUDA; drop --no_pin_mem"
EVAL_ONLY_LINPROBE = (
    "the probe is evaluated after every epoch (OUTPUT_DIR/linprobe.json); to score a "
    "fine-tuned model as it is, use attg-eval finetune --eval_only"
)
DENSE_EVAL = "no evaluation-only mode: the head is trained and evaluated every --eval_every epochs"
DENSE_POOL = "the dense heads read every patch token: there is no pooling to choose"
NOT_PRETRAINING = "an evaluation flag: attg-eval knn / linprobe / finetune take it"
TRAIN_REFUSED = {
    "--eval": NOT_PRETRAINING,
    "--finetune": f"{NOT_PRETRAINING} (as --checkpoint)",
    "--nb_classes": f"{NOT_PRETRAINING}; pretraining uses no labels",
    "--dist_eval": NOT_PRETRAINING,
    "--global_pool": NOT_PRETRAINING,
    "--arch": "use --model (mae_vit_base_patch16, mae_vit_large_patch16, ...)",
    "--patch_size": "the patch size is the model's: --model mae_vit_huge_patch14 has 14",
    "--use_cuda": "use --device (auto: CUDA when available, cpu, cuda:N)",
    "--dist_on_itp": "launch with torchrun or srun (docs/training.md, Distributed)",
}
COMMON_EVAL_REFUSED = {
    "--start_epoch": START_EPOCH,
    "--dist_on_itp": "launch with torchrun or srun (docs/evaluation.md)",
}


class _Refused(argparse.Action):
    """A flag with no equal here: parsing stops with ``message`` (exit code 2)."""

    refused = True  # HelpFormatter leaves it out of the usage line

    def __init__(self, option_strings, dest, message="", **kwargs):
        kwargs.update(nargs="?", default=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not taken here: {self.message}")


class _Arch(argparse.Action):
    """DINO's ``--arch``: a ViT name; other architectures are refused."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not _VIT_ARCH.fullmatch(values):
            parser.error(
                f"--arch {values}: attg-eval evaluates ViT encoders: vit_tiny, vit_small, "
                "vit_base, vit_large, vit_huge (or --model NAME)"
            )
        setattr(namespace, self.dest, values)


class _UseCuda(argparse.Action):
    """DINO's ``--use_cuda BOOL`` (keep the k-NN's features on the GPU)."""

    def __call__(self, parser, namespace, values, option_string=None):
        word = values.lower()
        if word in _TRUE:
            return  # our default: features and the k-NN on --device (CUDA when available)
        if word not in _FALSE:
            parser.error(f"--use_cuda {values}: give true or false")
        parser.error(
            "--use_cuda false (DINO: the k-NN on the CPU when the GPU runs out of memory) is "
            "not taken here: the k-NN runs on --device with its similarity matrix in chunks of "
            "at most 4 GiB; --device cpu runs extraction and k-NN on the CPU"
        )


class _EnvUrl(argparse.Action):
    """``--dist_url``: the launcher's rendezvous only."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values != "env://":
            parser.error(f"--dist_url {values}: only env:// (torchrun or SLURM set the rendezvous)")


# Our --checkpoint_key, in DINO's terms (attgmae.models.encoder.read_checkpoint).
CHECKPOINT_KEY_HELP = (
    "entry of a training checkpoint holding the weights, e.g. teacher or student (DINO / "
    "iBOT); unset: the first of model, state_dict, teacher, student that the file has, so the "
    "teacher of a DINO training checkpoint, as DINO's default; a file without such entries "
    "(released weights) is read whole, also when a key is given, as DINO reads it"
)

HABITS_TITLE = "official MAE / DINO flags"


def habits_group(parser):
    """The parser's one argument group of these flags (made on first use)."""
    for group in parser._action_groups:
        if group.title == HABITS_TITLE:
            return group
    return parser.add_argument_group(
        HABITS_TITLE,
        "what users of MAE's and DINO's scripts type, taken with its meaning there "
        "or refused with what to type instead",
    )


def add_refusals(parser, refused: dict[str, str]) -> None:
    """One refused flag per entry, listed in --help with what to type instead."""
    group = habits_group(parser)
    for flag, message in refused.items():
        group.add_argument(flag, action=_Refused, message=message, metavar="...",
                           help=f"refused: {message}")  # fmt: skip


def add_encoder_habits(parser) -> None:
    """DINO's ``--arch`` and ``--patch_size``: together a name for ``--model``."""
    group = habits_group(parser)
    group.add_argument("--arch", action=_Arch, default=argparse.SUPPRESS, metavar="VIT",
                       help="DINO's architecture name (vit_small, vit_base, ...): --model "
                            "ARCH_patchP with --patch_size P")  # fmt: skip
    group.add_argument("--patch_size", type=int, default=argparse.SUPPRESS,
                       help="DINO's patch size: checked against the checkpoint's, as the "
                            "patch size in a --model name is")  # fmt: skip


def add_launch_flags(parser) -> None:
    """MAE's and DINO's launch flags; torchrun's or SLURM's environment decides the world."""
    group = habits_group(parser)
    group.add_argument("--dist_url", action=_EnvUrl, default=argparse.SUPPRESS,
                       help="process-group init method: env:// only")  # fmt: skip
    group.add_argument(
        "--world_size",
        type=int,
        default=argparse.SUPPRESS,
        help="processes launched: checked against torchrun's / SLURM's",
    )
    group.add_argument("--local_rank", type=int, default=argparse.SUPPRESS,
                       help="as torch.distributed.launch passes it (torchrun sets "
                            "LOCAL_RANK instead)")  # fmt: skip
    group.add_argument("--dist_eval", action="store_true", default=argparse.SUPPRESS,
                       help="MAE's distributed evaluation: accepted, with no effect; several "
                            "processes never change the numbers (docs/evaluation.md)")  # fmt: skip


def add_use_cuda(parser) -> None:
    group = habits_group(parser)
    group.add_argument("--use_cuda", action=_UseCuda, default=argparse.SUPPRESS, metavar="BOOL",
                       help="DINO's k-NN on the GPU: true, as here (--device); false is "
                            "refused")  # fmt: skip


def arch_model(args: argparse.Namespace) -> str | None:
    """``--model``, or the name DINO's ``--arch`` / ``--patch_size`` give (None: neither); both
    ``--model`` and ``--arch`` given must agree."""
    model = getattr(args, "model", None)
    arch, patch = getattr(args, "arch", None), getattr(args, "patch_size", None)
    if arch is None and patch is None:
        return model
    named = (arch or "vit") + (f"_patch{patch}" if patch is not None else "")
    if model is not None and model != named:
        from attgmae.core.errors import InputError

        raise InputError(f"--model {model} and --arch/--patch_size ({named}): give one of them")
    return named


def launch_flags(args: argparse.Namespace) -> dict:
    """The launch flags given: {"world_size": N, "local_rank": N} (either may be absent)."""
    return {k: getattr(args, k) for k in ("world_size", "local_rank") if hasattr(args, k)}
