"""GPU readiness, checked on the CPU: the GPU check cannot lose its figures or outrun its time,
and the CUDA-only and multi-machine paths pick the right device, timeout, workers and precision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attgmae.cli.maps import main as maps_main
from attgmae.core import device as device_module
from attgmae.core import distributed
from attgmae.core.errors import InputError
from attgmae.core.listing import list_images
from attgmae.core.resources import JobCosts, plan_workers

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
MIB = 1 << 20


# ---- the GPU check ----------------------------------------------------------------------------


def test_a_killed_benchmark_leaves_its_figures(tmp_path):
    """A step killed by its time limit (SIGKILL, no flushing at exit) keeps what it measured."""
    code = (
        "import time; from figures import figure; figure('first', 12.5, 'img/s', 10); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=BENCHMARKS,
        env={**os.environ, "BENCH_OUT": str(tmp_path), "PYTHONUNBUFFERED": ""},
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    line = proc.stdout.readline()  # arrives before the kill: stdout is line-buffered
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert time.monotonic() < deadline and line.startswith("FIGURE first: 12.5 img/s")
    record = json.loads((tmp_path / "figures.jsonl").read_text().splitlines()[0])
    assert record["name"] == "first" and record["value"] == 12.5 and record["passed"] is True


def test_summary_names_every_target_and_its_result():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from summary import table
    finally:
        sys.path.remove(str(BENCHMARKS))
    records = [
        {"name": "a", "value": 5.0, "unit": "img/s", "target": 4.0, "better": "higher",
         "passed": True},
        {"name": "b", "value": 9.0, "unit": "s", "target": 6.0, "better": "lower", "passed": False},
    ]
    text, ok = table(records, expected=("a", "b", "c"))
    assert not ok
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert rows["a"].endswith("PASS") and rows["b"].endswith("FAIL")
    assert rows["c"].endswith("NOT MEASURED")
    assert table(records[:1], expected=("a",))[1]


def test_the_whole_check_runs_small_on_the_cpu_within_its_budget(tmp_path):
    """`DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh`: every step passes, every step's figures
    are on disk, and the summary closes the output."""
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "SMALL": "1", "OUT": str(out),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=420)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "imports ok" in result.stdout and "cannot import" not in result.stdout
    assert result.stdout.index("== train ") < result.stdout.index("== train-end-to-end ")
    figures = (out / "figures.jsonl").read_text().splitlines()
    scripts = {json.loads(line)["script"] for line in figures}
    assert scripts == {"train", "generate", "eval", "finetune", "dense"}
    names = {json.loads(line)["name"] for line in figures}
    assert "stage1 dino decode gpu / cpu" in names  # --decode gpu's path, rehearsed on the CPU
    assert "stage1 dino resize gpu / cpu" in names  # --resize gpu's path too
    assert "stage1 device pixels resize gpu" in names  # and the device's share alone
    summary = (out / "summary.txt").read_text().splitlines()
    assert result.stdout.splitlines()[-len(summary) :] == summary  # the summary ends the output
    assert "NOT MEASURED" in "\n".join(summary)  # the H200 targets, on a CPU
    assert seconds < 360, f"the small check took {seconds:.0f} s"


def test_the_check_stops_at_once_when_an_import_fails(tmp_path):
    """The import check's own status decides (not that of the tee it is shown through): one
    package that cannot be imported stops the check before any step, exit code 2."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text('raise ImportError("broken on purpose")\n')
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "SMALL": "1", "OUT": str(out),
           "PYTHON": sys.executable, "PYTHONPATH": str(fake)}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "cannot import: torch (ImportError: broken on purpose)" in result.stdout
    assert "== train" not in result.stdout and not (out / "figures.jsonl").exists()


# ---- devices, ranks, timeouts ---------------------------------------------------------------


@pytest.fixture
def one_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    return calls


def test_each_rank_takes_a_gpu_it_can_see(one_visible_gpu, monkeypatch):
    """SLURM --gpus-per-task=1: local rank 3 sees one GPU, which is its cuda:0."""
    cuda = device_module.resolve_device("cuda")
    assert device_module.rank_device(cuda, local_rank=3, world_size=4) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # torchrun: all GPUs of the node
    assert device_module.rank_device(cuda, local_rank=3, world_size=4) == torch.device("cuda", 3)
    one = torch.device("cuda", 1)
    assert device_module.rank_device(one, local_rank=0, world_size=1) == one  # a plain run
    with pytest.raises(InputError, match="shows 4 CUDA device"):
        device_module.resolve_device("cuda:7")


def test_a_single_process_makes_its_gpu_the_current_one(one_visible_gpu, monkeypatch):
    """Pinned-memory threads and synchronize() follow the current device: set it, also without
    torchrun, or they create a context on GPU 0."""
    for name in ("WORLD_SIZE", "RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed(torch.device("cuda", 0))
    assert not info.distributed and one_visible_gpu == [torch.device("cuda", 0)]


def test_process_group_waits_as_long_as_configured(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    info = distributed.init_distributed(torch.device("cpu"))
    assert info.world_size == 2 and info.backend == "gloo"
    assert seen["timeout"].total_seconds() == 60 * 60  # NCCL's own default is 10 minutes
    distributed.init_distributed(torch.device("cpu"), timeout_min=90)
    assert seen["timeout"].total_seconds() == 90 * 60


# ---- processes and shared memory ------------------------------------------------------------


def test_workers_share_the_cores_of_each_rank():
    plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=MIB, cores=16, ranks=1,
                        shm_free=None)
    assert (plan.pool_workers, plan.loader_workers, plan.prefetch) == (8, 7, 4)  # + main = 16
    plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=MIB, cores=16, ranks=2,
                        shm_free=None)
    assert (plan.pool_workers, plan.loader_workers) == (4, 3)
    plan = plan_workers(-1, -1, uses_pool=False, gpu=True, batch_bytes=MIB, cores=16, ranks=1,
                        shm_free=None)
    assert (plan.pool_workers, plan.loader_workers) == (0, 15)
    plan = plan_workers(-1, -1, uses_pool=True, gpu=False, batch_bytes=MIB, cores=2, ranks=1,
                        shm_free=None)
    assert (plan.pool_workers, plan.loader_workers) == (0, 1)
    assert "7 loader workers" in plan_workers(
        -1, -1, uses_pool=True, gpu=True, batch_bytes=MIB, cores=16, ranks=1, shm_free=None
    ).text


def test_cores_are_split_by_the_measured_cost_of_each_job():
    """Decoding and TokenCut's eigensolves get cores in proportion to their measured cost per
    image (halves only without a measurement), so neither side waits on the other."""
    def plan(costs, **kw):
        return plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=MIB, cores=16,
                            ranks=1, shm_free=None, costs=costs, **kw)

    measured = JobCosts(decode_s=1.6e-3, pool_s=1.3e-3)  # the per-core figures
    split = plan(measured)
    assert (split.pool_workers, split.loader_workers, split.device_pool) == (7, 8, False)
    decode_rate, solve_rate = 8 / measured.decode_s, 7 / measured.pool_s
    assert abs(decode_rate - solve_rate) < max(1 / measured.decode_s, 1 / measured.pool_s)
    assert "measured per image" in split.text and "decode 1.60 ms" in split.text
    cheap = plan(JobCosts(decode_s=1.6e-3, pool_s=0.4e-3))
    assert (cheap.pool_workers, cheap.loader_workers) == (3, 12)
    # a GPU solver is used only when it beats the planned processes twice over
    fast_gpu = plan(JobCosts(1.6e-3, 1.3e-3, device_pool_s=2e-5))
    assert (fast_gpu.device_pool, fast_gpu.pool_workers, fast_gpu.loader_workers) == (True, 0, 15)
    assert "the pool's job on the GPU" in fast_gpu.text
    assert not plan(JobCosts(1.6e-3, 1.3e-3, device_pool_s=1e-4)).device_pool
    assert not plan(JobCosts(1.6e-3, 1.3e-3, device_pool_s=2e-5), device_pool=False).device_pool
    assert plan(None, device_pool=True).device_pool  # --tokencut_solver gpu
    cpu_only = plan_workers(-1, -1, uses_pool=True, gpu=False, batch_bytes=MIB, cores=2,
                            ranks=1, shm_free=None, costs=measured, device_pool=True)
    assert (cpu_only.pool_workers, cpu_only.loader_workers, cpu_only.device_pool) == (0, 1, False)


@pytest.mark.parametrize("decode, resize, on_device, payload_dims",
                         [("cpu", "cpu", "", 3), ("cpu", "gpu", "resize", 3),
                          ("gpu", "gpu", "decode", 1)])  # fmt: skip
def test_the_split_is_planned_from_the_decoders_own_worker_job(
    example_root, monkeypatch, decode, resize, on_device, payload_dims
):
    """With --resize gpu a loader worker only decodes, with --decode gpu it only reads files:
    that job is what the cores are split by (the eigensolves then get more of them)."""
    from attgmae.pipelines import generate, generate_workers

    timed = []
    monkeypatch.setattr(generate_workers, "decode_seconds", lambda job: timed.append(job) or 2e-3)
    monkeypatch.setattr(generate_workers, "resolve", lambda ref: lambda p, device, b: (1e-3, None))
    cfg = generate.GenerateConfig(str(example_root / "train"), "unused", decode=decode,
                                  resize=resize, batch_size=8)  # fmt: skip
    keys = list_images(example_root / "train")
    costs = generate_workers.measure_costs(cfg, {"tokencut": {}}, keys, torch.device("cuda"))
    assert costs == JobCosts(decode_s=2e-3, pool_s=1e-3, device_pool_s=None)
    assert timed[0].on_device == on_device and timed[0].keys == keys
    payload = timed[0][0][1]  # what that job hands on for the first image
    assert payload.dim() == payload_dims and (resize == "cpu") == (payload.shape[0] == 224)


@pytest.mark.parametrize("decode, resize", [("cpu", "cpu"), ("cpu", "gpu"), ("gpu", "gpu")])
def test_shared_memory_is_planned_for_what_the_workers_send(example_root, decode, resize):
    """Full-size pixels (--resize gpu) or a JPEG's bytes (--decode gpu) instead of 224 px ones:
    /dev/shm is planned for the largest of the sampled images' payloads."""
    from attgmae.data.images import decode_rgb
    from attgmae.pipelines import generate, generate_workers

    root = example_root / "train"
    cfg = generate.GenerateConfig(str(root), "unused", decode=decode, resize=resize,
                                  batch_size=8)  # fmt: skip
    keys = list_images(root)
    picks = sorted(set(np.linspace(0, len(keys) - 1, 8).round().astype(int).tolist()))
    want = {("cpu", "cpu"): 224 * 224 * 3,
            ("cpu", "gpu"): max(decode_rgb(root / keys[i]).size for i in picks),
            ("gpu", "gpu"): max((root / keys[i]).stat().st_size for i in picks)}  # fmt: skip
    assert generate_workers.item_bytes(cfg, keys) == want[decode, resize]
    plan = generate_workers.worker_plan(cfg, ["dino"], torch.device("cpu"), image_bytes=want[
        decode, resize])  # fmt: skip
    assert plan.loader_workers >= 1


def test_the_tokencut_solver_choice_is_checked(four_images, tmp_path, capsys):
    root, listed = four_images
    argv = ["generate", str(root), "--out", str(tmp_path / "m"), "--methods", "tokencut",
            "--random_weights", "--device", "cpu", "--no_progress", *listed]
    assert maps_main([*argv, "--tokencut_solver", "gpu"]) == 2
    assert "--tokencut_solver gpu needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        maps_main([*argv, "--tokencut_solver", "tpu"])


def test_a_small_dev_shm_shrinks_automatic_workers_and_refuses_explicit_ones():
    batch = 38 * MIB  # 256 images of 224 x 224 x 3 bytes
    plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=batch, cores=16, ranks=1,
                        shm_free=512 * MIB)
    assert plan.prefetch == 2 and plan.loader_workers == 5  # 5 x 2 x 38 MiB x 1.25 < 512 MiB
    with pytest.raises(InputError, match=r"/dev/shm has 512 MiB free.*--shm-size"):
        plan_workers(12, -1, uses_pool=True, gpu=True, batch_bytes=batch, cores=16, ranks=1,
                     shm_free=512 * MIB)
    with pytest.raises(InputError, match="--num_workers"):
        plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=batch, cores=16, ranks=1,
                     shm_free=64 * MIB)  # docker's default: not even one worker fits


# ---- precision is part of a store's identity -------------------------------------------------


def _generate(root, out, precision, extra=()):
    return maps_main(["generate", str(root), "--out", str(out), "--methods", "dino",
                      "--random_weights", "--device", "cpu", "--batch_size", "2",
                      "--num_workers", "0", "--no_progress", "--chunk_rows", "2",
                      "--shard_rows", "4", "--precision", precision, *extra])


@pytest.fixture
def four_images(example_root, tmp_path):
    root = example_root / "train"
    keys = [k for k in list_images(root) if k.endswith("0000.JPEG")]
    file_list = tmp_path / "keys.txt"
    file_list.write_text("\n".join(keys) + "\n")
    return root, ["--file_list", str(file_list)]


def test_an_fp32_store_is_not_complete_for_a_bf16_request(four_images, tmp_path, capsys):
    """(And the other way round: the refusal comes before any forward, so the test runs the
    cheap fp32 CPU forward only.)"""
    root, listed = four_images
    assert _generate(root, tmp_path / "m", "fp32", listed) == 0
    assert _generate(root, tmp_path / "m", "bf16", listed) == 2
    assert "other parameters" in capsys.readouterr().err
    assert _generate(root, tmp_path / "m", "fp32", listed) == 0
    assert "already complete" in capsys.readouterr().err


def test_a_partial_fp32_store_is_not_resumed_in_bf16(four_images, tmp_path, monkeypatch, capsys):
    """Kill after the first chunk (as a crash would), then resume with another precision."""
    from attgmae.pipelines import generate_loop

    root, listed = four_images
    real_write = generate_loop.ChunkBuffer.write

    def write_then_crash(self, writers):
        real_write(self, writers)
        raise KeyboardInterrupt  # what Ctrl-C in the middle of a run raises

    monkeypatch.setattr(generate_loop.ChunkBuffer, "write", write_then_crash)
    assert _generate(root, tmp_path / "m", "fp32", listed) == 130
    monkeypatch.setattr(generate_loop.ChunkBuffer, "write", real_write)
    assert (tmp_path / "m" / "dino.zarr.partial").is_dir()
    assert _generate(root, tmp_path / "m", "bf16", listed) == 2
    assert "interrupted run with other keys or parameters" in capsys.readouterr().err
    assert _generate(root, tmp_path / "m", "fp32", listed) == 0  # the same precision resumes
    assert "resuming: 2 of 4 images already done" in capsys.readouterr().err


def test_training_reads_its_losses_every_print_freq_steps(make_truth_example, tmp_path,
                                                          monkeypatch):  # fmt: skip
    """Reading a loss waits for the device: once per --print_freq steps (and at an epoch's end),
    not every step."""
    from attgmae.cli.train import main as train_main

    root, maps = make_truth_example(tmp_path, 6, 1)  # 24 training images: 6 steps of 4
    reads = []
    real_read = distributed.RunningMean.read
    monkeypatch.setattr(
        distributed.RunningMean, "read", lambda self: reads.append(self.count) or real_read(self)
    )
    argv = ["--data_path", str(root), "--maps", str(maps), "--model", "mae_vit_tiny_patch16",
            "--epochs", "2", "--batch_size", "4", "--accum_iter", "1", "--num_workers", "0",
            "--device", "cpu", "--output_dir", str(tmp_path / "out"), "--print_freq", "4",
            "--ckpt_every_min", "0", "--warmup_epochs", "1"]
    assert train_main(argv) == 0
    assert reads == [4, 2, 4, 2]  # steps 1-4, 5-6 of each epoch
    log = [json.loads(line) for line in (tmp_path / "out" / "log.txt").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(entry["train_loss"]) for entry in log)
