"""Refactoring check: the same inputs and seeds must give the same stores, checkpoints and
evaluation JSON before and after a change that should not alter results.

    python scripts/same_outputs.py run OUT_DIR        # run every command on the example set
    python scripts/same_outputs.py compare OLD NEW [--ignore NAME ...]   # exit 0 when they agree

``run`` uses the installed console scripts (so run it once on the old commit, once on the new).
``compare`` compares map arrays, keys, status, labels and attributes of every store (except the
creation time and software versions), the tensors and the recorded arguments of every checkpoint,
and every number of every evaluation JSON (except timings, speeds and absolute paths).
``--ignore`` names further keys to skip wherever they occur (a config field a change added).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

BIN = Path(sys.executable).parent
VOLATILE_ATTRS = {"created", "software"}
# Timings, and the hashes of checkpoint files (they record their absolute output paths).
VOLATILE_JSON = {"timing_s", "elapsed_s", "seconds", "img_per_s", "software", "train_img_per_s",
                 "checkpoint_sha256", "sha256"}


def _sh(*argv) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ex = out / "ex"
    _sh(BIN / "attg-maps", "make-example", ex, "--train_per_class", 6, "--val_per_class", 3)
    maps = out / "maps"
    _sh(BIN / "attg-maps", "import", ex / "masks/train", maps / "truth.zarr", "--images",
        ex / "train", "--resize", "--method", "truth")
    common = ["--random_weights", "--device", "cpu", "--batch_size", 8, "--num_workers", 1,
              "--no_progress", "--chunk_rows", 8, "--shard_rows", 16]
    _sh(BIN / "attg-maps", "generate", ex / "train", "--out", maps,
        "--methods", "dino,tokencut,gradcam,random", *common)
    _sh(BIN / "attg-maps", "generate", ex / "train", "--out", maps / "h5", "--format", "h5",
        "--methods", "tokencut,random", "--dino_heads", "max", *common)
    _sh(BIN / "attg-maps", "export", maps / "tokencut.zarr", out / "tokencut.h5")
    _sh(BIN / "attg-maps", "export", maps / "h5/random.h5", out / "random.zarr.zip")
    _sh(BIN / "attg-maps", "import", out / "random.zarr.zip", maps / "random_back.zarr")
    train = [BIN / "attg-train", "--data_path", ex, "--model", "mae_vit_tiny_patch16",
             "--epochs", 2, "--warmup_epochs", 1, "--batch_size", 8, "--accum_iter", 2,
             "--num_workers", 0, "--device", "cpu", "--seed", 0, "--blr", 1e-3]
    _sh(*train, "--maps", maps / "truth.zarr", "--tau", 0.7, "--tau_end", 1.0,
        "--output_dir", out / "guided")
    _sh(*train, "--guidance", "random", "--output_dir", out / "random_guided")
    _sh(*train, "--guidance", "none", "--output_dir", out / "vanilla")
    _sh(BIN / "attg-eval", "knn", "--checkpoint", out / "guided/checkpoint-last.pth",
        out / "vanilla/checkpoint-last.pth", "--labels", "guided", "vanilla",
        "--data_path", ex, "--output_dir", out / "knn", "--nb_knn", 5, 10, "--device", "cpu",
        "--num_workers", 0, "--batch_size", 16)
    _sh(BIN / "attg-eval", "linprobe", "--checkpoint", out / "guided/checkpoint-last.pth",
        "--data_path", ex, "--output_dir", out / "linprobe", "--epochs", 2, "--warmup_epochs", 1,
        "--batch_size", 8, "--eff_batch_size", 16, "--device", "cpu", "--num_workers", 0,
        "--shots", 3, "--seeds", 0, 1)


def _store_arrays(path: Path) -> tuple[dict, dict]:
    """(arrays by name, attributes) of a zarr folder, .zarr.zip or HDF5 store, read raw."""
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            arrays = {name: f[name][:] for name in f.keys()}
            attrs = {}
            for name, value in f.attrs.items():
                value = value.decode() if isinstance(value, bytes) else value
                if isinstance(value, str) and value.startswith("json:"):
                    value = json.loads(value[5:])
                attrs[name] = value.item() if isinstance(value, np.generic) else value
        return arrays, attrs
    import zarr

    if path.name.endswith(".zip"):
        from zarr.storage import ZipStore

        group = zarr.open_group(store=ZipStore(str(path), mode="r"), mode="r")
    else:
        group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}, dict(group.attrs)


def _same_store(old: Path, new: Path) -> list[str]:
    (a_arrays, a_attrs), (b_arrays, b_attrs) = _store_arrays(old), _store_arrays(new)
    problems = []
    if sorted(a_arrays) != sorted(b_arrays):
        problems.append(f"arrays {sorted(a_arrays)} vs {sorted(b_arrays)}")
    for name in set(a_arrays) & set(b_arrays):
        if a_arrays[name].dtype != b_arrays[name].dtype or not np.array_equal(
            a_arrays[name], b_arrays[name]
        ):
            problems.append(f"array {name} differs")
    for name in set(a_attrs) | set(b_attrs):
        if name not in VOLATILE_ATTRS and a_attrs.get(name) != b_attrs.get(name):
            problems.append(f"attribute {name}: {a_attrs.get(name)!r} vs {b_attrs.get(name)!r}")
    return problems


def _same_value(a, b, where: str) -> list[str]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        problems = []
        for key in set(a) | set(b):
            if key in VOLATILE_JSON:
                continue
            if key not in a or key not in b:
                problems.append(f"{where}.{key}: only in {'new' if key in b else 'old'}")
            else:
                problems += _same_value(a[key], b[key], f"{where}.{key}")
        return problems
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _same_value(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and hasattr(b, "__dict__"):  # argparse.Namespace (checkpoint args)
        return _same_value(vars(a), vars(b), where)
    if isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):
        return []  # absolute paths differ between the two output folders
    return [] if a == b or (a != a and b != b) else [f"{where}: {a!r} vs {b!r}"]


def compare(old: Path, new: Path, ignore=()) -> int:
    VOLATILE_JSON.update(ignore)
    problems, checked = [], 0
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old)
        other = new / rel
        if "features" in rel.parts or rel.parts[0] == "ex":
            continue
        name = path.name
        is_store = name.endswith((".zarr", ".h5", ".zarr.zip")) and ".partial" not in str(rel)
        if is_store and (path.is_dir() or path.is_file()):
            if not other.exists():
                problems.append(f"{rel}: missing in new")
                continue
            problems += [f"{rel}: {p}" for p in _same_store(path, other)]
            checked += 1
        elif name.endswith(".pth"):
            a = torch.load(path, map_location="cpu", weights_only=False)
            b = torch.load(other, map_location="cpu", weights_only=False)
            problems += _same_value(a, b, str(rel))
            checked += 1
        elif name.endswith(".json") and "zarr" not in str(rel):
            a, b = json.loads(path.read_text()), json.loads(other.read_text())
            problems += _same_value(a, b, str(rel))
            checked += 1
        elif name == "log.txt":
            a = [json.loads(line) for line in path.read_text().splitlines()]
            b = [json.loads(line) for line in other.read_text().splitlines()]
            problems += _same_value(a, b, str(rel))
            checked += 1
    for problem in problems:
        print("DIFFERS", problem)
    print(f"{checked} outputs compared, {len(problems)} differences")
    return 1 if problems or not checked else 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run":
        run(Path(rest[0]))
    else:
        ignored = rest[rest.index("--ignore") + 1 :] if "--ignore" in rest else []
        sys.exit(compare(Path(rest[0]), Path(rest[1]), ignored))
