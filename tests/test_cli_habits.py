"""What users of official MAE (main_pretrain / main_linprobe / main_finetune.py) and DINO
(eval_knn.py) type by habit: taken with the meaning it has there, or refused with a message that
names our flag; and ``--config FILE`` reading back the config a run recorded."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from attgmae.cli import eval as eval_cli
from attgmae.cli import train as train_cli
from attgmae.cli._args import config_from_args
from attgmae.core.errors import InputError
from attgmae.pipelines.finetune_config import FinetuneConfig
from attgmae.pipelines.knn_config import KnnConfig
from attgmae.pipelines.linprobe_config import LinprobeConfig
from attgmae.pipelines.segment_config import SegmentConfig
from attgmae.pipelines.train_config import TrainConfig

BASE = ["--data_path", "d"]


def train_config(*argv) -> TrainConfig:
    return config_from_args(TrainConfig, train_cli.build_parser().parse_args([*BASE, *argv]))


def knn_config(*argv) -> KnnConfig:
    args = eval_cli.parse(["knn", *BASE, *argv])
    return config_from_args(KnnConfig, args, checkpoint=args.checkpoint[0])


def linprobe_config(*argv) -> LinprobeConfig:
    return config_from_args(LinprobeConfig, eval_cli.parse(["linprobe", *BASE, *argv]))


def finetune_config(*argv) -> FinetuneConfig:
    return eval_cli.finetune_config(eval_cli.parse(["finetune", *BASE, *argv]))


def test_mae_pretraining_flags():
    cfg = train_config(
        "--batch_size",
        "32",
        "--log_dir",
        "tb",
        "--start_epoch",
        "3",
        "--no_pin_mem",
        "--world_size",
        "1",
        "--local_rank",
        "0",
        "--dist_url",
        "env://",
    )
    assert (cfg.batch_size, cfg.log_dir, cfg.start_epoch, cfg.pin_mem) == (32, "tb", 3, False)
    assert (cfg.world_size, cfg.local_rank, cfg.dist_url) == (1, 0, "env://")
    assert (
        train_config("--pin_mem").pin_mem
        and train_config("--batch_size_per_gpu", "8").batch_size == 8
    )


def test_mae_linprobe_flags():
    cfg = linprobe_config(
        "--finetune",
        "m.pth",
        "--cls_token",
        "--nb_classes",
        "4",
        "--log_dir",
        "tb",
        "--dist_eval",
        "--pin_mem",
        "--no_auto_resume",
    )
    assert (cfg.checkpoint, cfg.pool, cfg.nb_classes, cfg.log_dir) == ("m.pth", "cls", 4, "tb")
    assert cfg.auto_resume is False
    # MAE's linear probe pools with --global_pool (its default is the CLS token, as ours)
    assert linprobe_config("--checkpoint", "m.pth", "--global_pool").pool == "avg"
    assert linprobe_config("--checkpoint", "m.pth").pool == "cls"


def test_mae_finetune_flags():
    cfg = finetune_config(
        "--finetune",
        "m.pth",
        "--eval",
        "--cls_token",
        "--nb_classes",
        "5",
        "--log_dir",
        "tb",
        "--no_pin_mem",
        "--dist_eval",
    )
    assert (cfg.checkpoint, cfg.eval_only, cfg.global_pool) == ("m.pth", True, "token")
    assert (cfg.nb_classes, cfg.log_dir, cfg.pin_mem) == (5, "tb", False)
    # --global_pool alone is MAE's switch; with a value ours
    assert finetune_config("--checkpoint", "m.pth", "--global_pool").global_pool == "avg"
    assert finetune_config("--checkpoint", "m.pth", "--global_pool", "token").global_pool == "token"
    assert finetune_config("--checkpoint", "m.pth", "--pin_mem").pin_mem is True


def test_dino_knn_flags():
    cfg = knn_config(
        "--pretrained_weights",
        "dino.pth",
        "--arch",
        "vit_base",
        "--patch_size",
        "16",
        "--batch_size_per_gpu",
        "7",
        "--checkpoint_key",
        "teacher",
        "--use_cuda",
        "True",
        "--local_rank",
        "0",
        "--nb_knn",
        "10",
        "20",
    )
    assert (cfg.checkpoint, cfg.model, cfg.batch_size) == ("dino.pth", "vit_base_patch16", 7)
    assert (cfg.checkpoint_key, cfg.nb_knn, cfg.device) == ("teacher", [10, 20], "auto")
    assert knn_config("--checkpoint", "c", "--patch_size", "8").model == "vit_patch8"
    assert knn_config("--checkpoint", "c").checkpoint_key is None  # unset: see the next test
    with pytest.raises(InputError, match="--model vit_large_patch16 and --arch"):
        knn_config("--checkpoint", "c", "--model", "vit_large_patch16", "--arch", "vit_base")


def test_dino_checkpoint_key_reads_released_weights_whole(tmp_path):
    """DINO's --checkpoint_key teacher (its default) on a released backbone reads the file
    whole, as DINO does; a training checkpoint without that entry is an error naming its own."""
    from timm.models.vision_transformer import VisionTransformer

    from attgmae.models.encoder import CheckpointError, read_checkpoint

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2)
    torch.save(vit.state_dict(), tmp_path / "backbone.pth")
    state, source, _ = read_checkpoint(tmp_path / "backbone.pth", checkpoint_key="teacher")
    assert source == "timm" and torch.equal(state["cls_token"], vit.cls_token)
    torch.save({"model": vit.state_dict()}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointError, match="no 'teacher' entry.*--checkpoint_key model"):
        read_checkpoint(tmp_path / "wrapped.pth", checkpoint_key="teacher")


REFUSED = [  # (argv, flag typed, what the message must name)
    (["knn", "--checkpoint", "c"], ["--use_cuda", "false"], "--device cpu"),
    (["knn", "--checkpoint", "c"], ["--arch", "resnet50"], "--model"),
    (["knn", "--checkpoint", "c"], ["--log_dir", "tb"], "knn_*.json"),
    (["knn", "--checkpoint", "c"], ["--no_pin_mem"], "pins memory"),
    (["knn", "--checkpoint", "c"], ["--dist_url", "tcp://h:1"], "env://"),
    (["linprobe", "--checkpoint", "c"], ["--eval"], "finetune --eval_only"),
    (["linprobe", "--checkpoint", "c"], ["--start_epoch", "3"], "--resume"),
    (["finetune", "--checkpoint", "c"], ["--start_epoch", "3"], "--resume"),
    (["segment", "--checkpoint", "c"], ["--nb_classes", "3"], "--num_classes"),
    (["segment", "--checkpoint", "c"], ["--eval"], "--eval_every"),
    (["taskonomy", "--checkpoint", "c"], ["--global_pool"], "no pooling"),
]


@pytest.mark.parametrize("argv, flag, named", REFUSED)
def test_refused_flags_name_ours(argv, flag, named, capsys):
    # refused while parsing: even before required flags are checked, and exit code 2
    with pytest.raises(SystemExit) as stop:
        eval_cli.parse([*argv, *flag, *BASE])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and flag[0] in message and named in message, message


@pytest.mark.parametrize(
    "flag, named",
    [
        (["--eval"], "attg-eval"),
        (["--arch", "vit_base"], "--model"),
        (["--use_cuda", "true"], "--device"),
    ],
)
def test_refused_pretraining_flags_name_ours(flag, named, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.build_parser().parse_args([*BASE, *flag])
    assert stop.value.code == 2 and named in capsys.readouterr().err


def test_world_size_is_checked_against_the_launch(capsys, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert eval_cli.main(["knn", "--checkpoint", "c", *BASE, "--world_size", "4"]) == 2
    assert "--world_size 4, but 1 process(es) were launched" in capsys.readouterr().err


def test_nb_classes_must_be_the_class_folders(example_root):
    from attgmae.eval.features import check_class_count, image_split

    train = image_split(example_root, "train")
    check_class_count(train, None)
    check_class_count(train, len(train.class_names))
    with pytest.raises(InputError, match=r"--nb_classes 1000, but .*train has 4 class folders"):
        check_class_count(train, 1000)


# ------------------------------------------------------------------------------ --config
def test_config_reads_back_what_a_training_run_recorded(tmp_path):
    # pipelines/train.py writes vars(resolved_args()): the fields, the resolved lr / accum / amp
    # and values of its own (eff_batch_size, world_size, tau_plan)
    ran = TrainConfig(data_path="/data", epochs=3, tau_schedule="constant", tau=0.75, seed=7)
    recorded = {
        **asdict(ran),
        "lr": 0.0003,
        "accum_iter": 8,
        "eff_batch_size": 512,
        "world_size": 8,
        "tau_plan": {"kind": "constant"},
    }
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    args = train_cli.build_parser()
    from attgmae.cli._config_file import parse_with_config

    again = config_from_args(
        TrainConfig,
        parse_with_config(args, ["--config", str(tmp_path / "config.json"), "--epochs", "5"]),
    )
    assert again.data_path == "/data"  # a required flag comes from the file
    assert (again.epochs, again.seed, again.tau, again.tau_schedule) == (5, 7, 0.75, "constant")
    assert (again.lr, again.accum_iter) == (0.0003, 8)  # as the run ran
    assert again.world_size is None  # the launcher decides it again


def test_config_reads_back_a_finetune_run_and_knn_results(tmp_path):
    ran = finetune_config("--checkpoint", "m.pth", "--preset", "lowshot-1pct", "--seed", "3")
    path = tmp_path / "config.json"  # pipelines/finetune.py writes {**asdict(cfg), "resolved"}
    path.write_text(json.dumps({**asdict(ran), "resolved": {"accum_iter": 4}}))
    assert eval_cli.finetune_config(eval_cli.parse(["finetune", "--config", str(path)])) == ran
    # a --blr typed replaces the recorded absolute lr, a subset typed the recorded one
    other = eval_cli.finetune_config(
        eval_cli.parse(["finetune", "--config", str(path), "--blr", "5e-4", "--shots", "2"])
    )
    assert (other.lr, other.blr, other.percent, other.shots) == (None, 5e-4, None, 2)
    # knn_<label>.json holds its config under "config"; one checkpoint for a flag of several
    knn = tmp_path / "knn_x.json"
    knn.write_text(
        json.dumps({"top1": 1.0, "config": asdict(KnnConfig("a.pth", "/d", pool="avg"))})
    )
    args = eval_cli.parse(["knn", "--config", str(knn)])
    assert (args.checkpoint, args.data_path, args.pool) == (["a.pth"], "/d", "avg")
    dense = tmp_path / "segment.json"
    dense.write_text(json.dumps(asdict(SegmentConfig("s.pth", "/ade", epochs=2))))
    seg = config_from_args(SegmentConfig, eval_cli.parse(["segment", "--config", str(dense)]))
    assert seg == SegmentConfig("s.pth", "/ade", epochs=2)


def test_a_bad_config_file_is_named(tmp_path, capsys):
    assert train_cli.main(["--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2")
    assert eval_cli.main(["knn", "--config", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a readable JSON file" in capsys.readouterr().err
