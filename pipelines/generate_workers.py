"""How stage 1 splits each rank's cores: loader workers (decoding, or with ``--decode gpu`` just
reading files) and TokenCut's eigensolve pool, in proportion to what each job measures on this
machine (``attgmae.core.resources.plan_workers``); every rank then solves in the same place.
"""

from __future__ import annotations

import numpy as np
import torch

from attgmae.core import distributed
from attgmae.core.constants import MAP_INPUT_SIZE
from attgmae.core.resources import JobCosts, WorkerPlan, plan_workers
from attgmae.data.map_inputs import decode_seconds
from attgmae.maps.registry import METHODS, resolve
from attgmae.pipelines.generate_loop import decoded_images, device_work

SOLVERS = {"auto": None, "cpu": False, "gpu": True}  # --tokencut_solver -> plan's device_pool


def measure_costs(cfg, params: dict, keys, device) -> JobCosts | None:
    """Seconds per image of the CPU jobs beside the GPU forwards (a loader worker's: decoding,
    or just reading with ``--decode gpu``; each pool's job, on one core and on the GPU),
    measured on this machine to split its cores; None where nothing is planned from them (no
    GPU, no method with a pool, or both sizes and the solver given)."""
    pooled = [m for m in params if METHODS[m].pool_cost is not None]
    chosen = cfg.num_workers >= 0 and cfg.tokencut_workers >= 0
    if device.type != "cuda" or not pooled or (chosen and cfg.tokencut_solver != "auto"):
        return None
    pool_s, device_s = 0.0, 0.0
    for method in pooled:
        cpu, on_device = resolve(METHODS[method].pool_cost)(params[method], device, cfg.batch_size)
        pool_s, device_s = pool_s + cpu, None if on_device is None else (device_s or 0) + on_device
    loader_job = decoded_images(cfg.images_root, keys, on_device=device_work(cfg))
    return JobCosts(decode_seconds(loader_job), pool_s, device_s)


def item_bytes(cfg, keys, samples: int = 8) -> int:
    """Bytes one image takes out of a loader worker: its uint8 224 px pixels, or with the
    device's share of the work (``device_work``) the largest payload of ``samples`` images spread
    over ``keys`` (full-size pixels, or a JPEG's bytes), so that /dev/shm is planned for them."""
    pixels224 = MAP_INPUT_SIZE * MAP_INPUT_SIZE * 3
    on_device = device_work(cfg)
    if not on_device or not keys:
        return pixels224
    dataset = decoded_images(cfg.images_root, keys, on_device)
    picks = np.linspace(0, len(keys) - 1, min(len(keys), samples)).round().astype(int)
    payloads = [dataset[int(row)][1] for row in sorted(set(picks.tolist()))]
    return max((p.numel() for p in payloads if p is not None), default=pixels224)


def worker_plan(cfg, methods, device: torch.device, costs=None, device_pool: bool | None = None,
                image_bytes: int = MAP_INPUT_SIZE * MAP_INPUT_SIZE * 3) -> WorkerPlan:  # fmt: skip
    """Loader workers and pool processes (TokenCut's eigensolves) for this machine's cores and
    shared memory (``image_bytes`` an image out of a worker: ``item_bytes``), split by the
    measured ``costs``; explicit --num_workers / --tokencut_workers are kept (or refused);
    ``device_pool`` None: --tokencut_solver's choice."""
    return plan_workers(
        cfg.num_workers,
        cfg.tokencut_workers,
        uses_pool=any(METHODS[m].pool is not None for m in methods),
        gpu=device.type == "cuda",
        batch_bytes=cfg.batch_size * image_bytes,
        costs=costs,
        device_pool=SOLVERS[cfg.tokencut_solver] if device_pool is None else device_pool,
    )


def agreed_plan(cfg, params: dict, keys, device, info) -> WorkerPlan:
    """Every rank plans its own processes; all of them solve where any one found the GPU
    faster, so one store never mixes two solvers' round-off."""
    costs = measure_costs(cfg, params, keys, device)
    image_bytes = item_bytes(cfg, keys)
    plan = worker_plan(cfg, list(params), device, costs, image_bytes=image_bytes)
    on_gpu = bool(distributed.max_across_ranks(int(plan.device_pool), info))
    if on_gpu != plan.device_pool:
        plan = worker_plan(cfg, list(params), device, costs, on_gpu, image_bytes)
    return plan
