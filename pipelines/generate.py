"""Stage 1 orchestration: an image set -> one map store per method (``attg-maps generate``).

    keys (sorted) -> DataLoader workers: decode once, resize to 224x224 (uint8)
        (--decode gpu: the workers read the files, the device decodes and resizes)
        -> device: normalize -> MapComputer (the registry's methods, one DINO forward shared)
        -> per-chunk buffers -> one MapStoreWriter per method (DIR/<method>.zarr or .h5)

This module checks the request, loads what it needs, splits the cores
(``pipelines/generate_workers.py``) and runs the loop of ``pipelines/generate_loop.py``, which
owns the chunk bookkeeping. A killed run resumes where it stopped, and under torchrun each rank
gets whole shards.

Exit codes: 0 every image mapped; 3 some images failed (the stores are complete, failed rows are
zeros with status 'failed' and their keys and reasons are in the store attributes and the summary);
2 bad input (InputError, printed by the CLI); 75 stopped by SIGTERM / SIGUSR1 with the whole
chunks computed kept (``generate_loop``; rerun to resume).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from attgmae.core import distributed
from attgmae.core.constants import DEFAULT_TIMEOUT_MIN
from attgmae.core.device import rank_device, resolve_device, resolve_precision
from attgmae.core.errors import InputError
from attgmae.core.files import write_json_atomic
from attgmae.core.identity import changed_images, image_identities
from attgmae.core.listing import folder_labels, list_images
from attgmae.core.outputs import claim_output
from attgmae.data import pil_exact
from attgmae.data.device_decode import check_device_decoder
from attgmae.data.shard_access import shard_keys
from attgmae.data.shards import is_shard_source, open_shards
from attgmae.maps.compute import MapComputer, load_backbones
from attgmae.maps.provenance import defining_params, store_attrs
from attgmae.maps.registry import (
    BACKBONES,
    DEFAULT_METHODS,
    METHODS,
    parse_methods,
    resolve,
    resolve_params,
)
from attgmae.pipelines.generate_loop import (
    compute_pending,
    device_work,
    open_writers,
    store_path,
)
from attgmae.pipelines.generate_workers import SOLVERS, agreed_plan
from attgmae.store import StoreError, open_store
from attgmae.store.swap import finish_interrupted

EXIT_OK, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 2, 3
RUN_RECORD = "generate_run.json"
FORMATS = ("zarr", "h5")
# Images per batch when --batch_size is not given: an H200 runs ViT-B/16 and ResNet-50 at full
# speed from 256 (docs/benchmarks.md); a CPU gains nothing beyond 64.
DEFAULT_BATCH_SIZE = {"cuda": 256, "cpu": 64}
DECODERS = ("cpu", "gpu")  # --decode
RESIZERS = ("auto", "cpu", "gpu")  # --resize; auto: gpu where the device resizes fast
GPU_DECODE_DEVICES = ("cuda",)  # device types --decode gpu runs on (tests add the CPU)


@dataclass
class GenerateConfig:
    """Every knob of a generate run; the CLI flags map one-to-one onto these fields (a method's
    parameters, ``--dino_heads`` and the like, go to ``params`` under the registry's names)."""

    images_root: str
    out_dir: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    params: dict = field(default_factory=dict)  # {method: {parameter: value}} over the defaults
    fmt: str = "zarr"  # 'zarr' | 'h5'
    file_list: str | None = None
    weights: dict = field(default_factory=dict)  # {backbone: weights file}; else its pretrained
    random_weights: bool = False
    trust_checkpoint: bool = False  # weights files may be unpickled in full
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    precision: str = "auto"  # 'auto' (bf16 on CUDA, fp32 on CPU) | 'bf16' | 'fp32'
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE of the device type
    num_workers: int = -1  # loader processes; -1: from the cores and /dev/shm (generate_workers)
    tokencut_workers: int = -1  # -1 auto (0 on CPU, measured share of the cores with CUDA)
    tokencut_solver: str = "auto"  # where eigensolves run with CUDA: auto (measured), cpu, gpu
    decode: str = "cpu"  # 'cpu' (loader workers) | 'gpu' (nvjpeg + resize on the device)
    resize: str = "auto"  # 'auto' (gpu on CUDA) | 'cpu' (loader workers) | 'gpu' (the device)
    overwrite: bool = False
    chunk_rows: int | None = None  # store layout; None = the store's defaults
    shard_rows: int | None = None
    progress: bool = True
    skip_unreadable: bool = False  # leave out (and record) folders / images that cannot be read
    dist_timeout_min: float = DEFAULT_TIMEOUT_MIN  # how long ranks wait for rank 0's finalize


@dataclass
class GenerateResult:
    exit_code: int
    stores: dict[str, str] = field(default_factory=dict)  # method -> final store path
    num_images: int = 0
    num_computed: int = 0  # images computed by this run, all ranks together
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason, from the stores
    skipped_methods: list[str] = field(default_factory=list)  # stores that were already complete
    unreadable: list[str] = field(default_factory=list)  # left out by --skip_unreadable
    seconds: float = 0.0  # whole run, model loading included
    img_per_s: float = 0.0  # images per second of the compute loop, all ranks together
    # Start-up excluded: after each rank's first chunk (worker processes up, models warm).
    steady_img_per_s: float = 0.0
    startup_s: float = 0.0  # the first chunk's time, start-up included (mean over ranks)


# ----------------------------------------------------------------------------- checks


def resolved_params(cfg: GenerateConfig) -> dict:
    """{method: parameters} from the registry's defaults and ``cfg.params``; InputError when a
    name, a value or a weights file is bad."""
    try:
        methods = parse_methods(list(cfg.methods))
    except ValueError as err:
        raise InputError(f"--methods: {err}") from None
    if len(methods) != len(cfg.methods):
        raise InputError("--methods lists a method twice")
    unknown = sorted(set(cfg.params) - set(methods))
    if unknown:
        raise InputError(f"parameters given for methods not requested: {', '.join(unknown)}")
    try:
        return {m: resolve_params(m, cfg.params.get(m)) for m in methods}
    except ValueError as err:
        raise InputError(str(err)) from None


def resolved_resize(cfg: GenerateConfig, device: torch.device) -> str:
    """--resize for ``device``: auto is gpu with --decode gpu or where the device runs PIL's
    exact resize fast (``pil_exact.fast_on``: CUDA), else cpu."""
    if cfg.resize == "gpu" and not pil_exact.fast_on(device):
        raise InputError(f"--resize gpu needs a CUDA device (--device cuda), not {device}")
    if cfg.resize != "auto":
        return cfg.resize
    return "gpu" if cfg.decode == "gpu" or pil_exact.fast_on(device) else "cpu"


def check_config(cfg: GenerateConfig) -> dict:
    """Everything that can be checked before any work; returns the resolved parameters."""
    if cfg.fmt not in FORMATS:
        raise InputError(f"--format {cfg.fmt!r}: use zarr or h5")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise InputError("--batch_size must be >= 1")
    if cfg.tokencut_solver not in SOLVERS:
        raise InputError(f"--tokencut_solver {cfg.tokencut_solver!r}: use auto, cpu or gpu")
    if cfg.decode not in DECODERS:
        raise InputError(f"--decode {cfg.decode!r}: use cpu or gpu")
    if cfg.resize not in RESIZERS:
        raise InputError(f"--resize {cfg.resize!r}: use auto, cpu or gpu")
    if cfg.decode == "gpu" and cfg.resize == "cpu":
        raise InputError("--decode gpu resizes on the GPU too: drop --resize cpu")
    params = resolved_params(cfg)
    for backbone, path in cfg.weights.items():
        if path is not None and not Path(path).is_file():
            raise InputError(f"--{BACKBONES[backbone].weights_flag} {path}: no such file")
    if cfg.file_list is not None and not Path(cfg.file_list).is_file():
        raise InputError(f"--file_list {cfg.file_list}: no such file")
    if is_shard_source(cfg.images_root):  # tar shards of `attg-maps pack`: keys and images
        if cfg.file_list is not None:
            raise InputError("--file_list lists files of an image folder, not of tar shards")
    elif not Path(cfg.images_root).is_dir():
        raise InputError(f"image root {cfg.images_root} is not a directory")
    return params


def list_keys(cfg: GenerateConfig, unreadable: list) -> list[str]:
    if is_shard_source(cfg.images_root):
        return shard_keys(open_shards(cfg.images_root))
    keys = list_images(cfg.images_root, cfg.file_list, unreadable if cfg.skip_unreadable else None)
    if not keys:
        where = f" listed in {cfg.file_list}" if cfg.file_list else ""
        raise InputError(f"no images (.jpg .jpeg .png .bmp .webp) under {cfg.images_root}{where}")
    return keys


def check_images(params: dict, class_names: list[str], labels) -> None:
    """Each method's own demands on the image set (Grad-CAM of the folder label needs the
    ImageNet layout)."""
    for method, method_params in params.items():
        check = METHODS[method].check_images
        if check is not None:
            try:
                resolve(check)(method_params, class_names, labels)
            except ValueError as err:
                raise InputError(str(err)) from None


def configure_cuda_backends(fp32: bool) -> None:
    """Same convolution algorithms in every process: cuDNN's autotuner (``benchmark``) picks them
    by timing, so a resumed run or another torchrun rank could pick others and round differently;
    the stores must be identical to an uninterrupted one-process run's. fp32 means fp32: no TF32
    convolutions or matmuls."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


# ----------------------------------------------------------------------------- the run


def _log(info: distributed.DistInfo, message: str) -> None:
    if info.is_main:
        print(message, file=sys.stderr, flush=True)


def _complete_already(path: Path, keys: list[str], params: dict):
    """The complete store at ``path`` when it holds these keys and parameters (None when there
    is none); InputError when something else is in the way."""
    if not path.exists():
        return None
    try:
        store = open_store(path)
    except StoreError as err:
        raise InputError(f"{err}; pass --overwrite to replace {path}") from None
    if list(store.keys) != keys:
        raise InputError(
            f"{path} holds maps of other images; pass --overwrite or choose another --out"
        )
    if store.attrs.get("params") != json.loads(json.dumps(params)):
        raise InputError(
            f"{path} holds maps made with other parameters ({store.attrs.get('params')}); "
            "pass --overwrite or choose another --out"
        )
    return store


def _images_changed(store, cfg: GenerateConfig, keys, info, now: list) -> bool:
    """Whether any image changed since its map in ``store`` was computed. Rank 0 stats the
    images once for all stores (``now`` keeps their identities); every rank learns the answer."""
    changed = False
    if info.is_main and store.image_identity is not None and not is_shard_source(cfg.images_root):
        if not now:
            now.append(image_identities(cfg.images_root, keys))
        changed = bool(changed_images(cfg.images_root, keys, store.image_identity, now[0]))
    return bool(distributed.max_across_ranks(int(changed), info))


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Generate (or resume) every requested store. Raises InputError on bad input."""
    params = check_config(cfg)
    unreadable: list[str] = []
    keys = list_keys(cfg, unreadable)
    class_names, labels = folder_labels(keys)
    check_images(params, class_names, labels)
    device = resolve_device(cfg.device)
    _, world_size, local_rank = distributed.env_dist_info()
    device = rank_device(device, local_rank, world_size)
    info = distributed.init_distributed(device, cfg.dist_timeout_min)
    precision = resolve_precision(cfg.precision, device)
    amp = precision == "bf16"
    if cfg.batch_size is None:
        cfg = replace(cfg, batch_size=DEFAULT_BATCH_SIZE[device.type])
    if cfg.tokencut_solver == "gpu" and device.type != "cuda":
        raise InputError("--tokencut_solver gpu needs a CUDA device (--device cuda)")
    if cfg.decode == "gpu" and device.type not in GPU_DECODE_DEVICES:
        raise InputError("--decode gpu needs a CUDA device (--device cuda)")
    if cfg.decode == "gpu":
        check_device_decoder(device)
    cfg = replace(cfg, resize=resolved_resize(cfg, device))
    if device.type == "cuda":
        configure_cuda_backends(fp32=not amp)
    defining = {
        method: defining_params(
            method, method_params, cfg.weights, cfg.random_weights, precision, device_work(cfg)
        )
        for method, method_params in params.items()
    }
    try:
        with _locked_stores(cfg, defining, info):
            result = _run(cfg, defining, keys, class_names, labels, device, amp, info, unreadable)
            return result
    finally:
        distributed.cleanup(info)


def _locked_stores(cfg: GenerateConfig, methods, info: distributed.DistInfo):
    """Rank 0 holds each store's lock for the whole run (one writer at a time) and finishes a
    swap into place that a kill interrupted; every rank learns whether that worked."""
    paths = [store_path(cfg.out_dir, method, cfg.fmt) for method in sorted(methods)]
    kind = "file" if cfg.fmt == "h5" else "store"

    def finish_swaps():
        for path in paths:
            finish_interrupted(path, cfg.fmt)

    return claim_output(paths, "--out", kind, info, prepare=finish_swaps)


def _run(cfg, defining, keys, class_names, labels, device, amp, info, unreadable):
    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)

    # Complete stores of these keys and parameters are left alone (a run killed between two
    # finalizations resumes here), unless images changed since: then only the chunks of those
    # are computed again ("update"). Anything else in the way needs --overwrite.
    todo, skipped, update, now = [], [], [], []
    for method, params in defining.items():
        path = store_path(out_dir, method, cfg.fmt)
        store = None if cfg.overwrite else _complete_already(path, keys, params)
        if store is not None and _images_changed(store, cfg, keys, info, now):
            update.append(method)
        (skipped if store is not None and method not in update else todo).append(method)
    if skipped:
        _log(info, f"already complete, skipped: {', '.join(skipped)} (--overwrite recomputes)")
    if cfg.random_weights and any(METHODS[m].backbone for m in todo):
        message = (
            "RANDOM WEIGHTS (--random_weights): these maps come from untrained networks, good "
            "only for tests and demos; the stores record random_weights=true"
        )
        _log(info, "WARNING: " + message)

    models, identities = load_backbones(
        todo, cfg.weights, cfg.random_weights, device, cfg.trust_checkpoint
    )
    plan = agreed_plan(cfg, {m: defining[m] for m in todo}, keys, device, info)
    attrs = {
        m: store_attrs(
            m,
            defining[m],
            identities.get(METHODS[m].backbone),
            class_names,
            device.type,
            amp,
            cfg.random_weights,
            device_work(cfg),
        )
        for m in todo
    }
    for method in todo:
        if METHODS[method].device_pool is not None:  # where its eigensolves ran (round-off)
            attrs[method]["compute"]["pool"] = "gpu" if plan.device_pool else "cpu"
    stored_labels = labels if (labels >= 0).any() else None
    writers = open_writers(cfg, keys, stored_labels, attrs, info, update)
    for writer in writers.values():
        if writer.changed:
            more = ", ..." if len(writer.changed) > 5 else ""
            _log(info, f"{writer.path}: {len(writer.changed)} images changed since their maps "
                       f"were computed ({', '.join(writer.changed[:5])}{more}); their chunks "
                       "are computed again")  # fmt: skip
    if todo:
        ranks = f", {info.world_size} ranks" if info.distributed else ""
        _log(info, f"generate: {len(keys)} images -> {', '.join(todo)} on {device}{ranks}")

    if todo:
        _log(info, plan.text)
    computer = MapComputer(
        {m: defining[m] for m in todo}, models, amp, plan.pool_workers, plan.device_pool
    )
    try:
        timing = compute_pending(cfg, keys, labels, writers, computer, device, info, plan)
    finally:
        computer.close()
    if info.distributed:
        print(
            f"rank {info.rank}/{info.world_size}: computed {timing.images} images",
            file=sys.stderr,
        )

    for writer in writers.values():
        writer.finish_rank()
    distributed.barrier(info)
    stores = {m: str(store_path(out_dir, m, cfg.fmt)) for m in defining}
    if info.is_main:
        for method, writer in writers.items():
            stores[method] = str(writer.finalize())
    distributed.barrier(info)

    total_computed, total_loop_seconds, steady_images, steady_seconds = (
        distributed.sum_across_ranks(
            [timing.images, timing.seconds, timing.steady_images, timing.steady_seconds], info
        )
    )
    # The stores hold the record of failures (earlier runs' too); all stores of a run share the
    # same keys and decode, so the first one speaks for all.
    first = next(iter(stores.values()))
    failed = dict(open_store(first).failed) if info.is_main else {}
    exit_code = distributed.max_across_ranks(EXIT_SOME_FAILED if failed else EXIT_OK, info)
    mean_loop_seconds = total_loop_seconds / info.world_size
    mean_steady_seconds = steady_seconds / info.world_size
    result = GenerateResult(
        exit_code=exit_code,
        stores=stores,
        num_images=len(keys),
        num_computed=int(total_computed),
        failed=failed,
        skipped_methods=skipped,
        unreadable=unreadable,
        seconds=time.perf_counter() - started,
        img_per_s=total_computed / mean_loop_seconds if mean_loop_seconds > 0 else 0.0,
        steady_img_per_s=steady_images / mean_steady_seconds if mean_steady_seconds > 0 else 0.0,
        startup_s=(total_loop_seconds - steady_seconds) / info.world_size,
    )
    if info.is_main:
        write_json_atomic(out_dir / RUN_RECORD, {"config": asdict(cfg), "result": asdict(result)})
        print(format_summary(result), file=sys.stderr, flush=True)
    return result


def format_summary(result: GenerateResult, max_listed: int = 20) -> str:
    """The end-of-run report; each failed image is one line ``FAILED<TAB>key<TAB>reason``."""
    num_failed = len(result.failed)
    lines = [
        (
            f"images: {result.num_images}  ok: {result.num_images - num_failed}  "
            f"failed: {num_failed}  computed this run: {result.num_computed}"
        ),
        f"time: {result.seconds:.1f} s  speed: {result.img_per_s:.1f} img/s (all methods "
        f"together; {result.steady_img_per_s:.1f} img/s after the first chunk's "
        f"{result.startup_s:.1f} s)",
    ]
    for method, path in result.stores.items():
        note = "  (already complete)" if method in result.skipped_methods else ""
        lines.append(f"store {method}: {path}{note}")
    for key, reason in sorted(result.failed.items())[:max_listed]:
        lines.append(f"FAILED\t{key}\t{reason}")
    for path in result.unreadable[:max_listed]:
        lines.append(f"UNREADABLE\t{path}\tleft out (--skip_unreadable)")
    if num_failed > max_listed:
        lines.append(f"... {num_failed - max_listed} more: `attg-maps verify STORE` lists all")
    if num_failed:
        lines.append(
            f"exit code {EXIT_SOME_FAILED}: {num_failed} images failed (maps are zeros, "
            "status 'failed'); fix or remove them and rerun with --overwrite"
        )
    return "\n".join(lines)
