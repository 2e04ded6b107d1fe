"""The CPU side per core (not a test): every CPU job that feeds the GPU, new path vs today's path
on the same photo-like JPEGs in the same run, and the 16-core ceilings they give.

Jobs (each timed in this process on one thread, as one DataLoader worker or pool process runs
it, its output collated as a worker collates it). Timing: image by image, the jobs' calls
interleaved (so new and today's paths meet the same load), each image's fastest of ``--rounds``
calls kept: on a shared machine that is the figure a quiet one gives (the lead's quiet-box
reruns check it).

- stage 1 decode + resize to 224 (``DecodedImages``): torchvision's ``decode_jpeg`` + its uint8
  antialiased bilinear kernel; today's = PIL decode + PIL resize with the numpy round trips.
- stage 1 with ``--resize gpu`` (CUDA's default): the worker decodes (as the new path) and packs
  the full-size pixels (``DecodedImages(on_device="resize")``, ``collate_payloads``); the
  resize, PIL's exactly, moves to the GPU.
- stage 1 with ``--decode gpu``: the worker only reads the file and checks its header
  (``DecodedImages(on_device=True)``); decoding and resizing move to the GPU, whose rate
  ``benchmarks/generate.py`` measures on CUDA (``stage1 dino decode gpu / cpu``).
- TokenCut's eigensolve (a pool process's job, BLAS pinned to one thread; unchanged).
- evaluation extraction (``LabelledImages`` + ``EvalPixels``, uint8 out, PIL's first pass for
  pixels within 1 grey level); today's = PIL decode + PIL bicubic Resize(256) + CenterCrop +
  ToTensor + Normalize (float32 out, 4x the bytes); and, for what exactness costs, both passes
  by torchvision's kernel; and ``DeviceEvalPixels`` (CUDA's default): the worker decodes and
  packs, the resize and crop (PIL's exactly) move to the GPU.
- the training loader's sample (``PretrainDataset``'s decode + joint RandomResizedCrop); today's
  = the same with PIL's decoder.

Then the 16-core ceilings (one H200 machine: 16 cores, one for the main process): stage 1 with
TokenCut (the cores split between decoding and eigensolves by ``plan_workers`` from the measured
costs; today's split was halves, 7 decoders and 8 solvers), stage 1 decoding alone (dino,
gradcam), evaluation extraction and the training loader with 15 workers. Pixel agreement of new
and today's paths on the same files is printed beside the figures.

    python benchmarks/cpu_jobs.py                # 48 photo-like JPEGs, 3 rounds (~1 min)
    python benchmarks/cpu_jobs.py --images 128 --rounds 5 --loader_workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from figures import figure
from machine import print_machine
from photos import describe, photo_set
from PIL import Image
from threadpoolctl import threadpool_limits
from timing import best_of_rounds, loader_throughput
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms.v2 import functional as F2

from attgmae.core.resources import JobCosts, plan_workers
from attgmae.data import packed
from attgmae.data.images import decode_rgb
from attgmae.data.map_inputs import DecodedImages, collate_decoded, collate_payloads
from attgmae.data.pil_resize import torch_resize_like_pil
from attgmae.data.transforms import JointTransform
from attgmae.eval.features import ImageSplit, LabelledImages
from attgmae.eval.transforms import DeviceEvalPixels, EvalPixels, eval_transform, resized_size
from attgmae.maps import ncut, tokencut

CORES = 16  # the GPU machine's
TARGETS = {"stage1": 2500, "eval": 3000, "train": 2600}  # img/s on one H200 (issue 19)


# ---- today's paths (before issue 19), kept here as the reference ---------------------------


def today_decode(path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def today_stage1(path) -> torch.Tensor:
    image = Image.fromarray(today_decode(path))
    resized = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(resized.copy())


_EVAL = eval_transform()


def today_eval(path) -> torch.Tensor:
    return _EVAL(Image.fromarray(today_decode(path)))


def torchvision_only_eval(path) -> torch.Tensor:
    """The evaluation pixels with both passes by torchvision's kernel (in PIL's order): what
    exactness costs; not used (2 grey levels on ~1 value in 4 million)."""
    chw = torch.from_numpy(decode_rgb(path)).permute(2, 0, 1)
    width, height = chw.shape[2], chw.shape[1]
    out_width, out_height = resized_size(width, height, 256)
    resized = torch_resize_like_pil(chw, (out_height, out_width), Image.BICUBIC)
    return F2.center_crop(resized, [224]).contiguous()


class TodayEval(Dataset):
    """Today's evaluation dataset over an ImageSplit: (normalized float32 [3, 224, 224], label,
    row), as ``LabelledImages(split, eval_transform())`` was with today's decoder."""

    def __init__(self, split: ImageSplit):
        self.split, self.indices = split, np.arange(len(split.keys))

    def __len__(self):
        return len(self.split.keys)

    def __getitem__(self, row):
        label = int(self.split.labels[row])
        return today_eval(self.split.root / self.split.keys[row]), label, row


# ---- timing ---------------------------------------------------------------------------------


def interleaved_rates(jobs: dict, count: int, rounds: int) -> dict[str, float]:
    """{name: img/s} of ``jobs`` {name: job(i) for item i < count}: item by item, every job in
    turn (the order reversed every other item), each item's fastest of ``rounds`` calls."""
    fastest = {name: [float("inf")] * count for name in jobs}
    names = list(jobs)
    for _ in range(rounds):
        for i in range(count):
            for name in names if i % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                jobs[name](i)
                fastest[name][i] = min(fastest[name][i], time.perf_counter() - started)
    return {name: count / sum(times) for name, times in fastest.items()}


def eigensolve_job(graphs: int):
    """job(i): the eigensolve of synthetic graph i (BLAS pinned, as in a pool process)."""
    params = {"tau": 0.2, "eps": 1e-5, "map": "fg-eigvec"}
    adjacency = tokencut.patch_adjacency(tokencut.sample_keys(graphs), params["tau"]).numpy()
    return lambda i: ncut.ncut_map(adjacency[i % graphs], params["eps"], params["map"])


def transfer_seconds(item_bytes: int, batch: int = 256, rounds: int = 3) -> float:
    """Seconds per item to write a batch of ``item_bytes`` items into a fresh shared-memory
    buffer, as a worker's batch leaves it (the DataLoader's collate and ``packed.pack`` make it
    there; the kernel zero-fills each new page on first touch); fastest of ``rounds``."""
    item = torch.ones(item_bytes, dtype=torch.uint8)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        shared = torch.UntypedStorage._new_shared(item_bytes * batch)
        buffer = torch.empty(0, dtype=torch.uint8).set_(shared)
        for i in range(batch):
            buffer[i * item_bytes : (i + 1) * item_bytes].copy_(item)
        best = min(best, (time.perf_counter() - started) / batch)
        del buffer, shared
    return best


def stage1_agreement(dataset: DecodedImages, paths) -> tuple[int, float]:
    diffs = [
        np.abs(dataset[row][1].numpy().astype(int) - today_stage1(path).numpy())
        for row, path in enumerate(paths)
    ]
    return max(int(d.max()) for d in diffs), float(np.mean([d.mean() for d in diffs]))


def eval_agreement(paths) -> tuple[float, float]:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    diffs = []
    for path in paths:
        today = (today_eval(path) * std + mean) * 255  # today's float pixels, in grey levels
        diffs.append((EvalPixels()(decode_rgb(path)).float() - today).abs())
    return float(max(d.max() for d in diffs)), float(np.mean([float(d.mean()) for d in diffs]))


class TodayStage1(Dataset):
    """Today's stage-1 dataset: ``DecodedImages``'s items made by ``today_stage1``."""

    def __init__(self, root, keys):
        self.paths = [Path(root) / key for key in keys]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, row):
        return row, today_stage1(self.paths[row]), None, (-1, -1)


def loader_rate(dataset, collate, batch_size: int, kept_buffers: int) -> float:
    """img/s of a one-worker DataLoader whose main process copies each batch's pixels out (as
    the pin thread or the CPU device does) and releases a packed batch; ``kept_buffers`` 0: a
    fresh shared-memory segment a batch (before the kept buffers)."""
    packed.KEPT_BUFFERS, default = kept_buffers, packed.KEPT_BUFFERS  # the fork inherits it
    try:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=1, collate_fn=collate,
                            prefetch_factor=4)  # fmt: skip
        batches = iter(loader)
        _sent(next(batches))  # the worker's start-up, untimed
        started = time.perf_counter()
        images = sum(_sent(batch) for batch in batches)
        return images / (time.perf_counter() - started)
    finally:
        packed.KEPT_BUFFERS = default


def _sent(batch) -> int:
    """Copy a batch's pixels out (releasing a packed batch) -> its images."""
    sent = next((p for p in batch if isinstance(p, packed.PackedBatch)), None)
    if sent is None:  # collate_decoded's (rows, pixels, ...)
        batch[1].clone()
        return len(batch[1])
    sent.data.clone()
    sent.release()
    return len(sent)


def loader_rates(root, keys, split, rounds: int, batch_size: int = 16) -> dict[str, float]:
    """{'<payload> kept' / '<payload> fresh': img/s} of ``loader_rate`` for the three packed
    payloads, kept buffers against a fresh segment a batch, and 'stage1 today' (PIL's decode
    and resize, the DataLoader's own transfer), alternating rounds."""
    repeated = keys * max(1, 384 // len(keys))  # enough batches to time (cached reads)
    decodes = DecodedImages(root, repeated, on_device="resize")
    budget = batch_size * max(int(np.prod(decodes[i][1].shape)) for i in range(len(keys)))
    device_eval = DeviceEvalPixels()
    repeated_split = ImageSplit(root, repeated, np.zeros(len(repeated), np.int64),
                                split.class_names)  # fmt: skip
    jobs = {
        "stage1 --resize gpu": (decodes, partial(collate_payloads, budget_bytes=budget)),
        "stage1 --decode gpu": (DecodedImages(root, repeated, on_device="decode"),
                                collate_payloads),
        "eval device resize": (LabelledImages(repeated_split, device_eval), device_eval.collate),
    }  # fmt: skip
    measures = {"stage1 today": partial(
        loader_rate, TodayStage1(root, repeated), collate_decoded, batch_size, 0)}  # fmt: skip
    for name, (dataset, collate) in jobs.items():
        for label, kept in (("kept", packed.KEPT_BUFFERS), ("fresh", 0)):
            measures[f"{name} {label}"] = partial(loader_rate, dataset, collate, batch_size, kept)
    return best_of_rounds(measures, rounds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="photo-like JPEGs, 400 x 390")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader_workers", type=int, default=0,
                        help="also time evaluation DataLoaders with this many workers (0: no)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core, as a worker process
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        keys = photo_set(root, args.images, unique=args.images)
        paths = [root / key for key in keys]
        print(describe(root, keys))
        stage1 = DecodedImages(root, keys)
        stage1_decodes = DecodedImages(root, keys, on_device="resize")
        stage1_reads = DecodedImages(root, keys, on_device="decode")
        split = ImageSplit(root, keys, np.zeros(len(keys), np.int64), ["c"])
        evaluation = LabelledImages(split, EvalPixels())
        device_eval = DeviceEvalPixels()
        evaluation_decodes = LabelledImages(split, device_eval)
        joint, rng = JointTransform(224, "rrc"), np.random.default_rng(0)
        for job in (stage1, stage1_decodes, stage1_reads, evaluation, evaluation_decodes):
            job[0]  # imports and first-call costs, untimed
        today_evaluation = TodayEval(split)
        # each job's output collated as a worker collates it (into the batch it sends)
        with threadpool_limits(1):
            rates = interleaved_rates({
                "stage1 new": lambda i: collate_decoded([stage1[i]]),
                "stage1 today": lambda i: collate_decoded(
                    [(i, today_stage1(paths[i]), None, (-1, -1))]  # (no identity taken)
                ),
                "stage1 gpu resize": lambda i: collate_payloads([stage1_decodes[i]]),
                "stage1 gpu decode": lambda i: collate_payloads([stage1_reads[i]]),
                "eval new": lambda i: default_collate([evaluation[i]]),
                "eval gpu resize": lambda i: device_eval.collate([evaluation_decodes[i]]),
                "eval today": lambda i: default_collate([today_evaluation[i]]),
                "eval torchvision only": lambda i: torchvision_only_eval(paths[i]),
                "train new": lambda i: joint(decode_rgb(paths[i]), rng),
                "train today": lambda i: joint(today_decode(paths[i]), rng),
                "eigensolve": eigensolve_job(len(paths)),
            }, len(paths), args.rounds)  # fmt: skip
        loaders = loader_rates(root, keys, split, max(3, args.rounds // 2))
        worst, mean = stage1_agreement(stage1, paths)
        eval_worst, eval_mean = eval_agreement(paths)
        # what each job's item weighs on its way out of the worker
        full_size = int(np.mean([np.prod(stage1_decodes[i][1].shape) for i in range(len(keys))]))
        file_size = int(np.mean([path.stat().st_size for path in paths]))
        pixels224 = 224 * 224 * 3
        item_bytes = {"stage1 new": pixels224, "stage1 today": pixels224,
                      "stage1 gpu resize": full_size, "stage1 gpu decode": file_size,
                      "eval new": pixels224, "eval gpu resize": full_size,
                      "eval today": pixels224 * 4}  # fmt: skip
        transfer = {size: transfer_seconds(size) for size in set(item_bytes.values())}

    per_core = "img/s per core"
    for job, note in (("stage1", f"pixels vs today: max {worst}, mean {mean:.4f} grey levels"),
                      ("eval", f"pixels vs today: max {eval_worst:.2f}, mean {eval_mean:.4f}"),
                      ("train", "decoder only differs (same pixels)")):  # fmt: skip
        new, today = rates[f"{job} new"], rates[f"{job} today"]
        figure(f"cpu {job} job new", new, per_core, note=note)
        figure(f"cpu {job} job today", today, per_core)
        figure(f"cpu {job} job new / today", new / today, "x")
    figure("cpu eval job torchvision kernel only", rates["eval torchvision only"], per_core,
           note="both passes by torchvision (not used: 2 grey levels on ~1 value in 4 million); "
           f"vs today {rates['eval torchvision only'] / rates['eval today']:.2f}x")  # fmt: skip
    figure("cpu tokencut eigensolve job", rates["eigensolve"], per_core, note="unchanged")
    today_rates = {job: rates[f"{job} today"] for job in ("stage1", "eval")}
    for job, flag in (("stage1", "--resize gpu"), ("eval", "the device's resize")):
        rate = rates[f"{job} gpu resize"]
        figure(f"cpu {job} job with {flag}", rate, per_core,
               note="the worker decodes and packs the full-size pixels; the resize (PIL's "
               "pixels exactly) on the GPU (CUDA's default)")  # fmt: skip
        figure(f"cpu {job} job with {flag} / today", rate / today_rates[job], "x")
    reads = rates["stage1 gpu decode"]
    figure("cpu stage1 job with --decode gpu", reads, per_core,
           note=f"the worker reads the file and its header; {reads / rates['stage1 today']:.0f}x "
           "today's job, the decode and resize then on the GPU (their rate: benchmarks/"
           "generate.py on CUDA)")  # fmt: skip

    for size, label in ((pixels224, "uint8 224 px image"), (full_size, "full-size image"),
                        (pixels224 * 4, "float32 224 px image (today's eval)"),
                        (file_size, "JPEG file's bytes")):  # fmt: skip
        figure(f"cpu transfer of a {label} through /dev/shm", transfer[size] * 1e6, "us",
               note=f"{size / 1024:.0f} KiB, per image of a 256-image batch, fresh pages")
    # the per-core figures again, each job's item also written into shared memory
    sent = {name: 1 / (1 / rates[name] + transfer[size]) for name, size in item_bytes.items()}
    for name, label in (("stage1 new", "stage1 job new"),
                        ("stage1 gpu resize", "stage1 job with --resize gpu"),
                        ("stage1 gpu decode", "stage1 job with --decode gpu"),
                        ("eval new", "eval job new"),
                        ("eval gpu resize", "eval job with the device's resize")):  # fmt: skip
        today_sent = sent[f"{name.split()[0]} today"]
        figure(f"cpu {label} incl. transfer / today", sent[name] / today_sent, "x",
               note=f"{sent[name]:.0f} vs {today_sent:.0f} img/s per core, each job's "
               "item also written into /dev/shm as a worker sends it")  # fmt: skip

    for name in ("stage1 --resize gpu", "stage1 --decode gpu", "eval device resize"):
        kept, fresh = loaders[f"{name} kept"], loaders[f"{name} fresh"]
        figure(f"loader {name} kept buffers / fresh", kept / fresh, "x",
               note=f"one worker: {kept:.0f} vs {fresh:.0f} img/s, the main process copying "
               "each batch out and releasing it; fresh: a /dev/shm segment a batch")  # fmt: skip
    today_loader, resize_loader = loaders["stage1 today"], loaders["stage1 --resize gpu kept"]
    figure("loader stage1 --resize gpu kept buffers / today", resize_loader / today_loader, "x",
           note=f"one worker each, as above; today's {today_loader:.0f} img/s (PIL's decode "
           "and resize, the DataLoader's own collate and transfer)")  # fmt: skip

    # 16-core ceilings: stage 1 with TokenCut, split by plan_workers from the measured costs.
    costs = JobCosts(1 / rates["stage1 new"], 1 / rates["eigensolve"])
    plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=1, cores=CORES, ranks=1,
                        shm_free=None, costs=costs)
    new = min(plan.loader_workers * rates["stage1 new"], plan.pool_workers * rates["eigensolve"])
    today = min(7 * rates["stage1 today"], 8 * rates["eigensolve"])  # today's halves
    figure("ceiling16 stage1 with tokencut new", new, "img/s", TARGETS["stage1"],
           note=f"{plan.loader_workers} decoders + {plan.pool_workers} solvers (measured split)")
    figure("ceiling16 stage1 with tokencut today", today, "img/s",
           note="7 decoders + 8 solvers (halves), today's decode")
    figure("ceiling16 stage1 with tokencut new / today", new / today, "x",
           note=f"per core of the CPU side: {new / (CORES - 1):.0f} vs {today / (CORES - 1):.0f} "
           "img/s")
    resize_costs = JobCosts(1 / rates["stage1 gpu resize"], 1 / rates["eigensolve"])
    resize_plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=1, cores=CORES,
                               ranks=1, shm_free=None, costs=resize_costs)  # fmt: skip
    figure("ceiling16 stage1 with tokencut --resize gpu", min(
        resize_plan.loader_workers * rates["stage1 gpu resize"],
        resize_plan.pool_workers * rates["eigensolve"]), "img/s", TARGETS["stage1"],
        note=f"{resize_plan.loader_workers} decoders + {resize_plan.pool_workers} solvers "
        "(CUDA's default)")  # fmt: skip
    reads_costs = JobCosts(1 / reads, 1 / rates["eigensolve"])
    reads_plan = plan_workers(-1, -1, uses_pool=True, gpu=True, batch_bytes=1, cores=CORES,
                              ranks=1, shm_free=None, costs=reads_costs)  # fmt: skip
    figure("ceiling16 stage1 with tokencut --decode gpu", min(
        reads_plan.loader_workers * reads, reads_plan.pool_workers * rates["eigensolve"]),
        "img/s", TARGETS["stage1"], note=f"{reads_plan.loader_workers} readers + "
        f"{reads_plan.pool_workers} solvers; the CPU side only (nvjpeg's rate: the GPU check)")
    spare = CORES - 1
    for job, label in (("stage1", "stage1 decode only"), ("eval", "eval extraction"),
                       ("train", "train loader")):  # fmt: skip
        new, today = spare * rates[f"{job} new"], spare * rates[f"{job} today"]
        target = TARGETS[job] if job != "stage1" else None
        figure(f"ceiling16 {label} new", new, "img/s", target, note=f"{spare} workers")
        figure(f"ceiling16 {label} today", today, "img/s")
    for job, label in (("stage1", "stage1 decode only"), ("eval", "eval extraction")):
        figure(f"ceiling16 {label} with the device's resize", spare * rates[f"{job} gpu resize"],
               "img/s", TARGETS[job] if job == "eval" else None,
               note=f"{spare} workers that decode (CUDA's default)")  # fmt: skip

    if args.loader_workers:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "images"
            keys = photo_set(root, args.images, unique=args.images)
            split = ImageSplit(root, keys, np.zeros(len(keys), np.int64), ["c"])
            loaders = {"new": LabelledImages(split, EvalPixels()), "today": TodayEval(split)}
            speeds = {name: max(loader_throughput(DataLoader(
                data, batch_size=16, num_workers=args.loader_workers)) for _ in range(2))
                for name, data in loaders.items()}  # fmt: skip
        figure(f"eval loader {args.loader_workers} workers new / today",
               speeds["new"] / speeds["today"], "x",
               note=f"new {speeds['new']:.0f} img/s (uint8 out), today {speeds['today']:.0f} "
               "img/s (float32 out); includes the transfer out of the workers")


if __name__ == "__main__":
    main()
