"""Stage 1 orchestration: an image set -> one map store per method (``attg-maps generate``).

    keys (sorted) -> DataLoader workers: decode once, resize to 224x224 (uint8)
        -> device: normalize -> DINO forward (dino + tokencut) | ResNet-50 Grad-CAM | random
        -> per-chunk buffers -> one MapStoreWriter per method (DIR/<method>.zarr or .h5)

The writers' ``pending_chunks()`` drive what is computed: a killed run resumes where it stopped,
and under torchrun each rank gets whole shards. Batches never straddle a chunk, so a row's batch
(and thus its floating-point result) is the same in a fresh, a resumed and a multi-rank run.
TokenCut's eigensolves run in a process pool (BLAS pinned to one thread per worker) while the next
batch is on the GPU.

Exit codes: 0 every image mapped; 3 some images failed (the stores are complete, failed rows are
zeros with status 'failed' and their keys and reasons are in the store attributes and the summary);
2 bad input (GenerateInputError, printed by the CLI).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from attgmae.pipelines import distributed
from torch.utils.data import DataLoader, Dataset

from attgmae.data.images import ImageDecodeError, decode_rgb, folder_labels, list_images

ALL_METHODS = ("dino", "tokencut", "gradcam", "random")
DINO_METHODS = ("dino", "tokencut")  # computed from one shared DINO forward
BACKBONE_OF = {"dino": "dino", "tokencut": "dino", "gradcam": "resnet", "random": None}
EXIT_OK, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 2, 3
WNID = re.compile(r"^n\d{8}$")
RUN_RECORD = "generate_run.json"


class GenerateInputError(ValueError):
    """Bad input (paths, flags, weights, a store in the way): the CLI prints it and exits 2."""


@dataclass
class GenerateConfig:
    """Every knob of a generate run; the CLI flags map one-to-one onto these fields."""

    images_root: str
    out_dir: str
    methods: tuple[str, ...] = ALL_METHODS
    fmt: str = "zarr"  # 'zarr' | 'h5'
    file_list: str | None = None
    dino_weights: str | None = None
    resnet_weights: str | None = None
    random_weights: bool = False
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    batch_size: int = 64
    num_workers: int = 4
    overwrite: bool = False
    seed: int = 0
    dino_heads: str = "mean"  # 'mean' | 'max' | head index
    tokencut_tau: float = 0.2
    tokencut_eps: float = 1e-5
    tokencut_map: str = "fg-eigvec"
    tokencut_workers: int = -1  # -1 auto (0 on CPU, half the cores with CUDA); 0 in-process
    cam_layer: str = "layer4"
    cam_target: str = "top1"  # 'top1' | 'label'
    cam_method: str = "gradcam"
    chunk_rows: int | None = None  # store layout; None = the store's defaults
    shard_rows: int | None = None
    progress: bool = True
    precision: str = "auto"  # 'auto' (bf16 on CUDA, fp32 on CPU) | 'bf16' | 'fp32'


def use_bf16(cfg: GenerateConfig, device: str) -> bool:
    """bf16 autocast for the forwards: the GPU default (speed); fp32 reproduces the originals."""
    return device.startswith("cuda") if cfg.precision == "auto" else cfg.precision == "bf16"


@dataclass
class GenerateResult:
    exit_code: int
    stores: dict[str, str] = field(default_factory=dict)  # method -> final store path
    num_images: int = 0
    num_computed: int = 0  # images computed by this run, all ranks together
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason, from the stores
    skipped_methods: list[str] = field(default_factory=list)  # stores that were already complete
    seconds: float = 0.0  # whole run, model loading included
    img_per_s: float = 0.0  # images per second of the compute loop, all ranks together


# ----------------------------------------------------------------------------- checks


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise GenerateInputError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerateInputError(f"--device {device}: CUDA is not available here; use --device cpu")
    return device


def check_config(cfg: GenerateConfig) -> None:
    unknown = [m for m in cfg.methods if m not in ALL_METHODS]
    if unknown or not cfg.methods:
        raise GenerateInputError(
            f"--methods: unknown {','.join(unknown) or '(none given)'}; "
            f"choose from {','.join(ALL_METHODS)}"
        )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise GenerateInputError("--methods lists a method twice")
    if cfg.fmt not in ("zarr", "h5"):
        raise GenerateInputError(f"--format {cfg.fmt!r}: use zarr or h5")
    if cfg.batch_size < 1 or cfg.num_workers < 0:
        raise GenerateInputError("--batch_size must be >= 1 and --num_workers >= 0")
    if not cfg.tokencut_eps > 0 or not -1.0 <= cfg.tokencut_tau < 1.0:
        raise GenerateInputError("--tokencut_eps must be > 0 and --tokencut_tau in [-1, 1)")
    for flag, path in (
        ("--dino_weights", cfg.dino_weights),
        ("--resnet_weights", cfg.resnet_weights),
    ):
        if path is not None and not Path(path).is_file():
            raise GenerateInputError(f"{flag} {path}: no such file")
    for method in cfg.methods:
        method_params(cfg, method)  # the registry validates the values
    if cfg.file_list is not None and not Path(cfg.file_list).is_file():
        raise GenerateInputError(f"--file_list {cfg.file_list}: no such file")
    if not Path(cfg.images_root).is_dir():
        raise GenerateInputError(f"image root {cfg.images_root} is not a directory")


def store_path(out_dir, method: str, fmt: str) -> Path:
    return Path(out_dir) / f"{method}.{'zarr' if fmt == 'zarr' else 'h5'}"


def list_keys(cfg: GenerateConfig) -> list[str]:
    try:
        keys = list_images(cfg.images_root, cfg.file_list)
    except (FileNotFoundError, ValueError) as err:
        raise GenerateInputError(str(err)) from None
    if not keys:
        where = f" listed in {cfg.file_list}" if cfg.file_list else ""
        raise GenerateInputError(
            f"no images (.jpg .jpeg .png .bmp .webp) under {cfg.images_root}{where}"
        )
    return keys


def imagenet_targets(class_names: list[str], labels: np.ndarray) -> np.ndarray:
    """Folder labels as ImageNet-1k class indices: valid only when the folders are the 1000
    wnids, whose sorted order is the standard class order. -> int64 [N]."""
    if len(class_names) != 1000 or not all(WNID.match(name) for name in class_names):
        raise GenerateInputError(
            "--cam_target label needs the ImageNet layout (exactly 1000 class folders named by "
            f"wnid, e.g. n01440764); found {len(class_names)} folders. Use --cam_target top1."
        )
    if (labels < 0).any():
        raise GenerateInputError("--cam_target label: some images are not inside a class folder")
    return labels


# ----------------------------------------------------------------------------- data


class DecodedImages(Dataset):
    """Row -> (row, uint8 [224, 224, 3] tensor or None, failure reason or None).

    Workers decode and resize (the CPU-heavy part) once per image for every method; only uint8
    224x224 pixels travel to the device. A bad image is a failure record, never an exception:
    one unreadable JPEG must not stop an ImageNet run.
    """

    def __init__(self, root, keys: list[str]):
        self.root = Path(root)
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, row: int):
        from attgmae.maps.preprocess import resize_uint8

        try:
            image = decode_rgb(self.root / self.keys[row])  # uint8 [H, W, 3]
            return row, torch.from_numpy(resize_uint8(image).copy()), None  # writable
        except ImageDecodeError as err:
            return row, None, err.reason
        except Exception as err:  # noqa: BLE001 - any per-image failure is recorded, not raised
            return row, None, f"{type(err).__name__}: {err}"


def collate_decoded(items):
    """-> rows int64 [B], pixels uint8 [B, 224, 224, 3] (zeros where failed), reasons [B]."""
    from attgmae.maps.preprocess import INPUT_SIZE

    rows = torch.tensor([row for row, _, _ in items], dtype=torch.int64)
    pixels = torch.zeros((len(items), INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8)
    for i, (_, image, _) in enumerate(items):
        if image is not None:
            pixels[i] = image
    return rows, pixels, [reason for _, _, reason in items]


def plan_batches(chunks, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """(chunk_index, rows) per batch, cut inside each chunk: a row's batch does not depend on
    which chunks are still pending, so resumed and multi-rank runs repeat the very same batches
    (and floating-point results)."""
    plan = []
    for chunk_index, start, stop in chunks:
        for batch_start in range(start, stop, batch_size):
            plan.append((chunk_index, np.arange(batch_start, min(batch_start + batch_size, stop))))
    return plan


# ----------------------------------------------------------------------------- models, attrs


def method_params(cfg: GenerateConfig, method: str) -> dict:
    """What defines a method's maps (the registry's names and defaults, overridden by the
    flags): recorded in the store and checked when resuming."""
    from attgmae.maps.registry import resolve_params

    overrides = {
        "dino": {"heads": cfg.dino_heads},
        "tokencut": {"tau": cfg.tokencut_tau, "eps": cfg.tokencut_eps, "map": cfg.tokencut_map},
        "gradcam": {"layer": cfg.cam_layer, "target": cfg.cam_target, "method": cfg.cam_method},
        "random": {"seed": cfg.seed},
    }[method]
    try:
        params = resolve_params(method, overrides)
    except ValueError as err:
        raise GenerateInputError(str(err)) from None
    if BACKBONE_OF[method] is not None:
        params["random_weights"] = bool(cfg.random_weights)
        params["weights"] = weights_identity(cfg, BACKBONE_OF[method])
    return params


@functools.lru_cache(maxsize=8)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    from attgmae.models.backbones import file_sha256

    return file_sha256(path)  # once per file version, however often the params are asked for


def weights_identity(cfg: GenerateConfig, backbone: str) -> str:
    """The network's weights as part of what defines the maps, known before any loading:
    'random(seed=0)', 'timm:<pretrained tag>' or 'sha256:<hex>' of the given file. A partial or
    complete store made with other weights is then 'other parameters', never silently resumed."""
    from attgmae.models import backbones

    if cfg.random_weights:
        return f"random(seed={backbones.RANDOM_SEED})"
    path = cfg.dino_weights if backbone == "dino" else cfg.resnet_weights
    if path is None:
        return f"timm:{backbones.DINO_TAG if backbone == 'dino' else backbones.RESNET_TAG}"
    try:
        stat = Path(path).stat()
        digest = _weights_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError as err:
        raise GenerateInputError(f"{path}: cannot read the weights file ({err.strerror})") from None
    return f"sha256:{digest}"


def load_models(cfg: GenerateConfig, methods, device: str) -> tuple[dict, dict]:
    """({'dino': vit, 'resnet': resnet} as needed, the same keys -> identity dicts)."""
    from attgmae.models.backbones import WeightsError, load_dino_vit, load_resnet50

    loaders = {
        "dino": lambda: load_dino_vit(weights=cfg.dino_weights, random_weights=cfg.random_weights),
        "resnet": lambda: load_resnet50(
            weights=cfg.resnet_weights, random_weights=cfg.random_weights
        ),
    }
    models, identities = {}, {}
    for backbone in ("dino", "resnet"):
        if any(BACKBONE_OF[m] == backbone for m in methods):
            try:
                model, identity = loaders[backbone]()  # random weights: seeded by the loader
            except WeightsError as err:
                raise GenerateInputError(str(err)) from None
            models[backbone], identities[backbone] = model.eval().to(device), identity
    return models, identities


def _software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import timm

    import attgmae

    versions = {
        "attgmae": attgmae.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    try:
        versions["grad-cam"] = version("grad-cam")
    except PackageNotFoundError:
        versions["grad-cam"] = None
    return versions


def store_attrs(
    cfg: GenerateConfig, method: str, identities: dict, class_names, device: str
) -> dict:
    from attgmae.maps import preprocess

    backbone = BACKBONE_OF[method]
    return {
        "params": method_params(cfg, method),
        "model": identities.get(backbone) if backbone else None,
        "random_weights": bool(cfg.random_weights and backbone is not None),
        "preprocessing": (
            "decode_rgb (PIL convert('RGB'), no EXIF rotation) -> whole image resized to "
            "224x224 without cropping (PIL bilinear, antialiased) -> /255 -> ImageNet mean/std"
        ),
        "input_size": [preprocess.INPUT_SIZE, preprocess.INPUT_SIZE],
        "mean": list(preprocess.IMAGENET_MEAN),
        "std": list(preprocess.IMAGENET_STD),
        "compute": {
            "device_type": device.split(":")[0],
            "bf16_autocast": use_bf16(cfg, device),
        },
        "software": _software_versions(),
        "class_names": list(class_names),
        "generated_by": "attg-maps generate",
    }


# ----------------------------------------------------------------------------- computing


class MapComputer:
    """One batch of normalized images -> every requested method's maps, sharing the DINO forward.

    ``compute`` returns {method: float32 [B, 14, 14] or a pending TokenCut result}.
    """

    def __init__(self, cfg: GenerateConfig, models: dict, device: str, cam_targets=None):
        self.cfg, self.models, self.device = cfg, models, device
        self.amp = use_bf16(cfg, device)
        self.params = {m: method_params(cfg, m) for m in cfg.methods}
        self.cam_targets = cam_targets  # int64 [N] or None (top-1)
        self.tokencut_pool = None
        workers = self._tokencut_workers()
        if workers > 0:
            from attgmae.maps.tokencut import TokenCutRunner

            self.tokencut_pool = TokenCutRunner(
                workers, cfg.tokencut_tau, cfg.tokencut_eps, cfg.tokencut_map
            )

    def _tokencut_workers(self) -> int:
        if "tokencut" not in self.cfg.methods:
            return 0
        if self.cfg.tokencut_workers >= 0:
            return self.cfg.tokencut_workers
        # On CPU the cores are busy with the forwards; with a GPU, half of this rank's share of
        # the cores (the rest decode images) solve eigenproblems.
        if self.device == "cpu":
            return 0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun sets it
        return max(1, (cores or 2) // ranks_here // 2)

    def _tokencut(self, patch_keys: torch.Tensor):
        from attgmae.maps.tokencut import tokencut_maps

        if self.tokencut_pool is not None:
            return self.tokencut_pool.submit(patch_keys)  # .result() later
        p = self.params["tokencut"]
        return tokencut_maps(patch_keys, p["tau"], p["eps"], p["map"])

    def compute(self, methods, x: torch.Tensor, rows: np.ndarray, keys: list[str]) -> dict:
        """x float32 [B, 3, 224, 224] on the device; rows int64 [B] into ``keys``."""
        if self.device != "cpu" or self.amp:
            return self._compute(methods, x, rows, keys)
        # fp32 on the CPU: oneDNN's convolutions round differently with the number of threads
        # (a one-process run vs torchrun's one thread per rank, another machine); PyTorch's
        # native kernels give the same bits for any thread count (ResNet-50 ~15% slower).
        mkldnn_before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return self._compute(methods, x, rows, keys)
        finally:
            torch.backends.mkldnn.enabled = mkldnn_before

    def _compute(self, methods, x: torch.Tensor, rows: np.ndarray, keys: list[str]) -> dict:
        from attgmae.maps.dino import dino_maps, dino_outputs
        from attgmae.maps.gradcam import gradcam_maps
        from attgmae.maps.random_map import random_maps

        results = {}
        if any(m in methods for m in DINO_METHODS):
            # cls_attn [B, heads, 196], patch_keys [B, 196, 768]
            cls_attn, patch_keys = dino_outputs(self.models["dino"], x, amp=self.amp)
            if "tokencut" in methods:
                results["tokencut"] = self._tokencut(patch_keys)
            if "dino" in methods:
                maps = dino_maps(cls_attn, self.params["dino"]["heads"])  # [B, 14, 14]
                results["dino"] = maps.float().cpu().numpy()
        if "gradcam" in methods:
            target = None
            if self.cam_targets is not None:
                target = torch.as_tensor(self.cam_targets[rows], device=x.device)
            p = self.params["gradcam"]
            cam = gradcam_maps(
                self.models["resnet"], x, p["layer"], target, p["method"], amp=self.amp
            )
            results["gradcam"] = torch.as_tensor(cam).float().cpu().numpy()
        if "random" in methods:
            results["random"] = np.asarray(
                random_maps([keys[r] for r in rows], self.params["random"]["seed"])
            )
        return results

    def close(self) -> None:
        if self.tokencut_pool is not None:
            self.tokencut_pool.close()


class ChunkBuffer:
    """One chunk's maps as its batches arrive; written once every row is in and done."""

    def __init__(self, chunk_index: int, start: int, stop: int, methods: list[str]):
        self.chunk_index, self.start, self.stop = chunk_index, start, stop
        self.methods = methods
        self.maps = {m: np.zeros((stop - start, 14, 14), dtype=np.float32) for m in methods}
        self.ok = np.zeros(stop - start, dtype=bool)
        self.errors: dict[str, str] = {}
        self.pending = []  # (method, offset, pending result) from the TokenCut pool
        self.rows_in = 0

    def add(self, rows: np.ndarray, results: dict, ok: np.ndarray, errors: dict) -> None:
        offset = int(rows[0]) - self.start
        for method, value in results.items():
            if hasattr(value, "result"):
                self.pending.append((method, offset, value))
            else:
                self.maps[method][offset : offset + len(rows)] = value
        self.ok[offset : offset + len(rows)] = ok
        self.errors.update(errors)
        self.rows_in += len(rows)

    def ready(self) -> bool:
        complete = self.rows_in == self.stop - self.start
        return complete and all(value.done() for _, _, value in self.pending)

    def write(self, writers: dict) -> None:
        for method, offset, value in self.pending:
            maps = value.result()  # [b, 14, 14]
            self.maps[method][offset : offset + len(maps)] = maps
        self.pending = []
        for method in self.methods:
            # Failed images were run as black frames; their rows are stored as zeros.
            maps = np.where(self.ok[:, None, None], self.maps[method], 0.0)
            writers[method].write_chunk(self.chunk_index, maps, self.ok, self.errors)


def compute_pending(cfg, keys, writers, computer, device, info) -> tuple[int, float]:
    """Compute and stage every chunk this rank still owes. -> (images computed, seconds)."""
    from tqdm import tqdm

    from attgmae.maps.preprocess import normalize_batch

    # The union of every writer's pending chunks; each chunk computes only the methods missing it.
    bounds: dict[int, tuple[int, int]] = {}
    needs: dict[int, list[str]] = {}
    for method, writer in writers.items():
        for chunk_index, start, stop in writer.pending_chunks():
            if bounds.setdefault(chunk_index, (start, stop)) != (start, stop):
                raise RuntimeError(f"stores disagree on the rows of chunk {chunk_index}")
            needs.setdefault(chunk_index, []).append(method)
    plan = plan_batches([(c, *bounds[c]) for c in sorted(bounds)], cfg.batch_size)
    num_todo = sum(len(rows) for _, rows in plan)
    if not plan:
        return 0, 0.0
    if not info.distributed and num_todo < len(keys):
        _log(info, f"resuming: {len(keys) - num_todo} of {len(keys)} images already done")

    loader = DataLoader(
        DecodedImages(cfg.images_root, keys),
        batch_sampler=[rows.tolist() for _, rows in plan],
        num_workers=cfg.num_workers,
        collate_fn=collate_decoded,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    bar = tqdm(
        total=num_todo,
        unit="img",
        desc="generate",
        dynamic_ncols=True,
        disable=not (cfg.progress and info.is_main) or num_todo == 0,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    buffers: deque[ChunkBuffer] = deque()
    computed = failed = 0
    started = time.perf_counter()
    try:
        for (chunk_index, planned_rows), (rows, pixels, reasons) in zip(plan, loader):
            rows = rows.numpy()
            assert np.array_equal(rows, planned_rows), "loader and plan out of step"
            if not buffers or buffers[-1].chunk_index != chunk_index:
                buffers.append(ChunkBuffer(chunk_index, *bounds[chunk_index], needs[chunk_index]))
            ok = np.array([reason is None for reason in reasons])
            errors = {keys[r]: why for r, why in zip(rows, reasons) if why is not None}
            x = normalize_batch(pixels, device=device)  # float32 [B, 3, 224, 224]
            results = computer.compute(needs[chunk_index], x, rows, keys)
            buffers[-1].add(rows, results, ok, errors)
            computed, failed = computed + len(rows), failed + len(errors)
            bar.update(len(rows))
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            # Write finished chunks in order; wait on the pool only when two chunks are queued.
            while buffers and (buffers[0].ready() or len(buffers) > 2):
                buffers.popleft().write(writers)
        while buffers:
            buffers.popleft().write(writers)
    finally:
        bar.close()
    return computed, time.perf_counter() - started


# ----------------------------------------------------------------------------- the run


def _log(info: distributed.DistInfo, message: str) -> None:
    if info.is_main:
        print(message, file=sys.stderr, flush=True)


def _complete_already(path: Path, keys: list[str], params: dict) -> bool:
    """True when ``path`` is a complete store of these keys and parameters (nothing to do);
    GenerateInputError when something else is in the way."""
    from attgmae.store import StoreError, open_store

    if not path.exists():
        return False
    try:
        store = open_store(path)
    except StoreError as err:
        raise GenerateInputError(f"{err}; pass --overwrite to replace {path}") from None
    if list(store.keys) != keys:
        raise GenerateInputError(
            f"{path} holds maps of other images; pass --overwrite or choose another --out"
        )
    if store.attrs.get("params") != json.loads(json.dumps(params)):
        raise GenerateInputError(
            f"{path} holds maps made with other parameters ({store.attrs.get('params')}); "
            "pass --overwrite or choose another --out"
        )
    return True


def open_writers(cfg, keys, labels, attrs_by_method, info) -> dict:
    """One MapStoreWriter per method. Rank 0 creates or resumes the partial stores first; the
    other ranks attach after a barrier."""
    from attgmae.store import MapStoreWriter, StoreError

    layout = {"chunk_rows": cfg.chunk_rows, "shard_rows": cfg.shard_rows}
    layout = {name: rows for name, rows in layout.items() if rows}  # else the store's defaults
    writers = {}

    def open_all():
        for method, attrs in attrs_by_method.items():
            writers[method] = MapStoreWriter(
                store_path(cfg.out_dir, method, cfg.fmt),
                keys,
                method=method,
                attrs=attrs,
                labels=labels,
                overwrite=cfg.overwrite,
                fmt=cfg.fmt,
                rank=info.rank,
                world_size=info.world_size,
                **layout,
            )

    error = None
    if info.is_main:
        try:
            open_all()
        except StoreError as err:
            error = str(err)
    # Every rank learns whether rank 0 succeeded before attaching (no rank left waiting).
    if distributed.max_across_ranks(int(error is not None), info):
        raise GenerateInputError(error or "rank 0 could not open the stores")
    if not info.is_main:
        open_all()
    return writers


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


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Generate (or resume) every requested store. Raises GenerateInputError on bad input."""
    check_config(cfg)
    keys = list_keys(cfg)
    class_names, labels = folder_labels(keys)
    cam_targets = None
    if "gradcam" in cfg.methods and cfg.cam_target == "label":
        cam_targets = imagenet_targets(class_names, labels)
    device = resolve_device(cfg.device)
    info = distributed.init_distributed(device)
    if device.startswith("cuda") and info.distributed:
        device = f"cuda:{info.local_rank}"
    if device.startswith("cuda"):
        configure_cuda_backends(fp32=not use_bf16(cfg, device))
    try:
        return _run(
            cfg,
            keys,
            class_names,
            labels if (labels >= 0).any() else None,
            cam_targets,
            device,
            info,
        )
    finally:
        distributed.cleanup(info)


def _run(cfg, keys, class_names, labels, cam_targets, device, info) -> GenerateResult:
    from attgmae.store import open_store

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # Complete stores of these keys and parameters are left alone (a run killed between two
    # finalizations resumes here); anything else in the way needs --overwrite.
    todo, skipped = [], []
    for method in cfg.methods:
        path = store_path(out_dir, method, cfg.fmt)
        done = not cfg.overwrite and _complete_already(path, keys, method_params(cfg, method))
        (skipped if done else todo).append(method)
    if skipped:
        _log(info, f"already complete, skipped: {', '.join(skipped)} (--overwrite recomputes)")
    if cfg.random_weights and any(BACKBONE_OF[m] for m in todo):
        message = (
            "RANDOM WEIGHTS (--random_weights): these maps come from untrained networks, good "
            "only for tests and demos; the stores record random_weights=true"
        )
        _log(info, "WARNING: " + message)

    models, identities = load_models(cfg, todo, device)
    attrs = {m: store_attrs(cfg, m, identities, class_names, device) for m in todo}
    writers = open_writers(cfg, keys, labels, attrs, info)
    if todo:
        ranks = f", {info.world_size} ranks" if info.distributed else ""
        _log(info, f"generate: {len(keys)} images -> {', '.join(todo)} on {device}{ranks}")

    computer = MapComputer(replace(cfg, methods=tuple(todo)), models, device, cam_targets)
    try:
        computed, loop_seconds = compute_pending(cfg, keys, writers, computer, device, info)
    finally:
        computer.close()
    if info.distributed:
        print(f"rank {info.rank}/{info.world_size}: computed {computed} images", file=sys.stderr)

    for writer in writers.values():
        writer.finish_rank()
    distributed.barrier(info)
    stores = {m: str(store_path(out_dir, m, cfg.fmt)) for m in cfg.methods}
    if info.is_main:
        for method, writer in writers.items():
            stores[method] = str(writer.finalize())
    distributed.barrier(info)

    total_computed, total_loop_seconds = distributed.sum_across_ranks(
        [computed, loop_seconds], info
    )
    # The stores hold the record of failures (earlier runs' too); all stores of a run share the
    # same keys and decode, so the first one speaks for all.
    failed = dict(open_store(stores[cfg.methods[0]]).failed) if info.is_main else {}
    exit_code = distributed.max_across_ranks(EXIT_SOME_FAILED if failed else EXIT_OK, info)
    mean_loop_seconds = total_loop_seconds / info.world_size
    result = GenerateResult(
        exit_code=exit_code,
        stores=stores,
        num_images=len(keys),
        num_computed=int(total_computed),
        failed=failed,
        skipped_methods=skipped,
        seconds=time.perf_counter() - started,
        img_per_s=total_computed / mean_loop_seconds if mean_loop_seconds > 0 else 0.0,
    )
    if info.is_main:
        save_run_record(cfg, result, out_dir)
        print(format_summary(result), file=sys.stderr, flush=True)
    return result


def save_run_record(cfg: GenerateConfig, result: GenerateResult, out_dir: Path) -> None:
    """The resolved config and the outcome beside the stores (written atomically)."""
    target = out_dir / RUN_RECORD
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"config": asdict(cfg), "result": asdict(result)}, indent=2) + "\n")
    os.replace(tmp, target)


def format_summary(result: GenerateResult, max_listed: int = 20) -> str:
    """The end-of-run report; each failed image is one line ``FAILED<TAB>key<TAB>reason``."""
    num_failed = len(result.failed)
    lines = [
        (
            f"images: {result.num_images}  ok: {result.num_images - num_failed}  "
            f"failed: {num_failed}  computed this run: {result.num_computed}"
        ),
        f"time: {result.seconds:.1f} s  speed: {result.img_per_s:.1f} img/s (all methods together)",
    ]
    for method, path in result.stores.items():
        note = "  (already complete)" if method in result.skipped_methods else ""
        lines.append(f"store {method}: {path}{note}")
    for key, reason in sorted(result.failed.items())[:max_listed]:
        lines.append(f"FAILED\t{key}\t{reason}")
    if num_failed > max_listed:
        lines.append(f"... {num_failed - max_listed} more: `attg-maps verify STORE` lists all")
    if num_failed:
        lines.append(
            f"exit code {EXIT_SOME_FAILED}: {num_failed} images failed (maps are zeros, "
            "status 'failed'); fix or remove them and rerun with --overwrite"
        )
    return "\n".join(lines)
