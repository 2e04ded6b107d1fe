"""Importing published map archives into a store, and exporting a store as one file.

Sources ``import_maps`` reads (see docs/store-format.md):
- a folder tree of per-image maps (.npy, .pt, 8/16-bit grayscale .png);
- one .npz, or a .pt/.pth holding a dict {key: array};
- an HDF5 or zarr store, ours (copied exactly, attributes included) or another layout;
- a .zip / .tar / .tar.gz of any of the above (``.zarr.zip`` exports included).
Everything is read and checked in memory first; the store is written only when every map is
good, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.images import IMAGE_EXTENSIONS
from .layout import (
    GRID,
    H5_SUFFIXES,
    STATUS_FAILED,
    StoreError,
    normalize_maps,
    sha256_file,
    store_format,
)
from .reader import open_store
from .writer import write_store

MAP_FILE_EXTENSIONS = (".npy", ".pt", ".pth", ".png")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_PROBLEMS_SHOWN = 10


@dataclass
class RawMaps:
    """Maps as found in a source, before checks: keys[i] belongs to maps[i] (any 2-D shape)."""

    keys: list[str]
    maps: list
    kind: str
    attrs: dict | None = None  # set when the source is one of our stores: copied as is
    status: np.ndarray | None = None
    labels: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)  # unreadable files, by name
    origins: list[str] | None = None  # the file each map came from (folder trees)

    def origin(self, i: int) -> str:
        return self.origins[i] if self.origins is not None else self.keys[i]


class ImportProblems(StoreError):
    """Several named problems; the message lists the first ones and the count."""

    def __init__(self, source, problems: list[str]):
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"cannot import {source}: {len(problems)} problem(s)\n  {shown}{tail}")
        self.problems = problems


# ---- reading sources -------------------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _safe_extract(path: Path, dest: Path) -> None:
    """Extract a zip or tar, refusing members that would land outside ``dest``."""
    dest_resolved = dest.resolve()

    def check(name: str) -> None:
        target = (dest / name).resolve()
        if dest_resolved not in target.parents and target != dest_resolved:
            raise StoreError(f"{path}: archive member {name!r} points outside the archive")

    try:
        if str(path).lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    check(name)
                archive.extractall(dest)
        else:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    check(member.name)
                    if not (member.isfile() or member.isdir()):
                        raise StoreError(
                            f"{path}: archive member {member.name!r} is a link or device"
                        )
                archive.extractall(dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise StoreError(f"{path}: cannot read archive ({err})") from None


@contextmanager
def _unpacked(source: Path):
    """The path to read: ``source`` itself, or the single item inside an archive."""
    if not _is_archive(source):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="attg-import-") as tmp:
        root = Path(tmp)
        _safe_extract(source, root)
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if (root / "zarr.json").exists():
            yield root  # a zipped zarr group (our .zarr.zip exports)
        elif len(entries) == 1:
            # one file or store inside, or one folder wrapping the tree (as `tar czf x.tgz maps/`)
            yield entries[0]
        else:
            yield root


def _read_map_file(path: Path) -> np.ndarray:
    name = path.name.lower()
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if name.endswith((".pt", ".pth")):
        import torch

        value = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"holds a {type(value).__name__}, not a tensor")
        return value.float().numpy()
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a readable PNG")
    if image.ndim != 2:
        raise ValueError(f"PNG with {image.shape[2]} channels; maps must be grayscale")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG of {image.dtype}; expected 8 or 16 bit")
    return image.astype(np.float32) / np.iinfo(image.dtype).max


def _strip_map_extension(rel: str) -> str:
    lower = rel.lower()
    for ext in MAP_FILE_EXTENSIONS:
        if lower.endswith(ext):
            return rel[: -len(ext)]
    return rel


def _read_tree(root: Path) -> RawMaps:
    from tqdm import tqdm

    raw = RawMaps(keys=[], maps=[], kind="folder of map files", origins=[])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [
            Path(dirpath) / name
            for name in sorted(filenames)
            if name.lower().endswith(MAP_FILE_EXTENSIONS) and not name.startswith(".")
        ]
    # A published ImageNet archive is ~1.28M small files: show progress (on a terminal only).
    for path in tqdm(paths, desc="reading maps", unit="map", disable=None, mininterval=1.0):
        try:
            raw.maps.append(_read_map_file(path))
            raw.keys.append(_strip_map_extension(path.relative_to(root).as_posix()))
            raw.origins.append(str(path))
        except Exception as err:  # any reader error is reported by file name
            raw.problems.append(f"{path}: unreadable ({err})")
    if not raw.keys and not raw.problems:
        raise StoreError(f"{root}: no map files (.npy, .pt, .png) found")
    return raw


def _read_dict_file(path: Path) -> RawMaps:
    if path.name.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                items = {k: data[k] for k in data.files}
        except Exception as err:
            raise StoreError(f"{path}: cannot read npz ({err})") from None
        kind = "npz"
    else:
        import torch

        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise StoreError(f"{path}: cannot read torch file ({err})") from None
        if not isinstance(value, dict):
            raise StoreError(
                f"{path}: holds a {type(value).__name__}; expected a dict {{key: map}}"
            )
        items = {
            str(k): (v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in value.items()
        }
        kind = "torch dict"
    return RawMaps(keys=list(items), maps=list(items.values()), kind=kind)


def _foreign_arrays(names_and_arrays, maps_name, keys_name, where):
    """Pick the maps and keys arrays of a store in another layout."""
    arrays = dict(names_and_arrays)
    maps_name = maps_name or ("maps" if "maps" in arrays else None)
    keys_name = keys_name or ("keys" if "keys" in arrays else None)
    if maps_name is None:
        candidates = [n for n, a in arrays.items() if len(a.shape) == 3]
        if len(candidates) != 1:
            raise StoreError(
                f"{where}: cannot tell which array holds the maps {sorted(arrays)}; "
                "pass --maps-name"
            )
        maps_name = candidates[0]
    if keys_name is None:
        candidates = [n for n, a in arrays.items() if len(a.shape) == 1 and a.dtype.kind in "OSUT"]
        if len(candidates) != 1:
            raise StoreError(
                f"{where}: cannot tell which array holds the keys {sorted(arrays)}; "
                "pass --keys-name"
            )
        keys_name = candidates[0]
    for name in (maps_name, keys_name):
        if name not in arrays:
            raise StoreError(f"{where}: no array named {name!r} (has {sorted(arrays)})")
    return arrays[maps_name], arrays[keys_name]


def _decode_keys(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(values)]


def _read_store(path: Path, maps_name, keys_name) -> RawMaps:
    fmt = "h5" if path.is_file() else "zarr"
    try:
        ours = open_store(path, allow_incomplete=True, fmt=fmt)
    except StoreError:
        ours = None  # another layout: read below with --maps-name / --keys-name
    if ours is not None:
        if not ours.attrs.get("complete"):
            raise StoreError(f"{path}: store is incomplete; finish the run that writes it first")
        maps = ours.read_all()
        return RawMaps(
            keys=list(ours.keys),
            maps=list(maps),
            kind="attgmae store",
            attrs=dict(ours.attrs),
            status=ours.status,
            labels=ours.labels,
        )
    try:
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                datasets = {n: f[n] for n in f.keys() if isinstance(f[n], h5py.Dataset)}
                maps_ds, keys_ds = _foreign_arrays(datasets.items(), maps_name, keys_name, path)
                maps, keys = maps_ds[:], _decode_keys(keys_ds[:])
        else:
            import zarr

            group = zarr.open_group(str(path), mode="r")
            arrays = {n: group[n] for n in group.array_keys()}
            maps_arr, keys_arr = _foreign_arrays(arrays.items(), maps_name, keys_name, path)
            maps, keys = np.asarray(maps_arr[:]), _decode_keys(keys_arr[:].tolist())
    except StoreError:
        raise
    except Exception as err:
        raise StoreError(f"{path}: cannot read store ({type(err).__name__}: {err})") from None
    if len(maps) != len(keys):
        raise StoreError(f"{path}: {len(maps)} maps but {len(keys)} keys")
    return RawMaps(keys=keys, maps=list(maps), kind=f"{fmt} store (foreign layout)")


def read_source(source, maps_name=None, keys_name=None) -> RawMaps:
    """Read any supported source (archives must be unpacked by the caller)."""
    path = Path(source)
    if not path.exists():
        raise StoreError(f"{path}: no such file or folder")
    lower = str(path).lower()
    if path.is_dir():
        if lower.endswith(".zarr") or (path / "zarr.json").exists():
            return _read_store(path, maps_name, keys_name)
        return _read_tree(path)
    if lower.endswith(H5_SUFFIXES):
        return _read_store(path, maps_name, keys_name)
    if lower.endswith((".npz", ".pt", ".pth")):
        return _read_dict_file(path)
    raise StoreError(
        f"{path}: unknown source type; expected a folder, .npz, .pt/.pth, .h5, "
        ".zarr, .zip or .tar(.gz)"
    )


# ---- keys and checks -------------------------------------------------------------------------
def _image_index(images_root: Path) -> dict[str, list[str]]:
    """stem path ('a/b') -> image keys ('a/b.JPEG') under images_root."""
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(images_root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = (Path(dirpath) / name).relative_to(images_root).as_posix()
                index.setdefault(rel.rsplit(".", 1)[0], []).append(rel)
    return index


def match_keys_to_images(keys, images_root) -> tuple[list[str | None], list[str]]:
    """Each key as the relative path of its image under ``images_root`` (matched by stem)."""
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise StoreError(f"--images {images_root}: not a directory")
    index = _image_index(images_root)
    image_keys = {k for keys_ in index.values() for k in keys_}
    matched, problems = [], []
    for key in keys:
        if key in image_keys:
            matched.append(key)
            continue
        stem = key
        if stem.lower().endswith(IMAGE_EXTENSIONS):
            stem = stem.rsplit(".", 1)[0]
        hits = index.get(stem, [])
        if len(hits) == 1:
            matched.append(hits[0])
        else:
            matched.append(None)
            what = "no image" if not hits else f"several images ({', '.join(hits)})"
            problems.append(f"{key}: {what} with this stem under {images_root}")
    return matched, problems


def resize_area(grid_map: np.ndarray) -> np.ndarray:
    """Area resampling to 14x14 (cv2 INTER_AREA), float32."""
    import cv2

    return cv2.resize(grid_map.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)


def check_and_stack(raw: RawMaps, resize: bool, normalize: bool) -> tuple[np.ndarray, list[str]]:
    """float32 [N, 14, 14] and the problems found (by key)."""
    out = np.zeros((len(raw.maps), GRID, GRID), dtype=np.float32)
    problems = []
    for i, grid_map in enumerate(raw.maps):
        key = raw.origin(i)
        grid_map = np.asarray(grid_map)
        while grid_map.ndim > 2 and grid_map.shape[0] == 1:
            grid_map = grid_map[0]
        if grid_map.ndim != 2:
            problems.append(f"{key}: map of shape {list(grid_map.shape)} is not 2-D")
            continue
        if not np.isfinite(grid_map).all():
            problems.append(f"{key}: map holds NaN or Inf")
            continue
        if grid_map.shape != (GRID, GRID):
            if not resize:
                problems.append(
                    f"{key}: map is {grid_map.shape[0]}x{grid_map.shape[1]}, not "
                    f"{GRID}x{GRID} (pass --resize to area-resample it)"
                )
                continue
            grid_map = resize_area(grid_map)
        out[i] = grid_map
    if normalize:
        out = normalize_maps(out)
    else:
        low, high = out.min(axis=(1, 2)), out.max(axis=(1, 2))
        for i in np.flatnonzero((low < 0) | (high > 1)):
            problems.append(
                f"{raw.origin(i)}: values in [{low[i]:.3g}, {high[i]:.3g}], outside "
                "[0, 1] (drop --no-normalize to min-max normalize)"
            )
    return out, problems


# ---- import / export -------------------------------------------------------------------------
def import_maps(
    source,
    out,
    *,
    images=None,
    method=None,
    resize=False,
    normalize=True,
    maps_name=None,
    keys_name=None,
    overwrite=False,
    fmt=None,
) -> dict:
    """Import ``source`` into a new store at ``out``; returns a summary dict."""
    source = Path(source)
    store_format(out, fmt)  # fail early on a bad output name
    if Path(out).exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    with _unpacked(source) as path:
        raw = read_source(path, maps_name, keys_name)
    problems = list(raw.problems)
    if raw.attrs is not None:
        maps = np.stack(raw.maps).astype(np.float32) if raw.maps else np.zeros((0, GRID, GRID))
    else:
        maps, map_problems = check_and_stack(raw, resize, normalize)
        problems += map_problems
    keys = list(raw.keys)
    if images is not None:
        keys, key_problems = match_keys_to_images(keys, images)
        problems += key_problems
    seen: dict[str, str] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(f"duplicate key {key} (from {seen[key]} and {raw.origin(i)})")
        seen.setdefault(key, raw.origin(i))
    if problems:
        raise ImportProblems(source, problems)
    if not keys:
        raise StoreError(f"{source}: holds no maps")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    keys = [keys[i] for i in order]
    maps = maps[order]
    if raw.attrs is not None:
        attrs = dict(raw.attrs)
        status = raw.status[order]
        ok = status != STATUS_FAILED
        labels = None if raw.labels is None else raw.labels[order]
        errors = attrs.get("failed", {})
        method = method or attrs.get("method", "imported")
    else:
        attrs = {
            "params": {},
            "model": {"architecture": "unknown (imported)"},
            "preprocessing": "unknown (imported)",
            "source": {
                "path": source.name,
                "kind": raw.kind,
                "sha256": sha256_file(source) if source.is_file() else None,
                "resized": bool(resize),
                "normalized": bool(normalize),
            },
        }
        ok, labels, errors = None, None, None
        method = method or "imported"
    try:
        write_store(
            out,
            keys,
            maps,
            method=method,
            attrs=attrs,
            labels=labels,
            ok=ok,
            errors=errors,
            overwrite=overwrite,
            fmt=fmt,
        )
    except BaseException:
        shutil.rmtree(f"{str(out).rstrip('/')}.partial", ignore_errors=True)
        raise
    return {"count": len(keys), "kind": raw.kind, "method": method, "out": str(out)}


def export_store(store_path, out) -> tuple[Path, Path]:
    """Write a store as one publishable file (``.zarr.zip`` or ``.h5``) plus ``OUT.sha256``."""
    out = Path(out)
    store = open_store(store_path)
    lower = out.name.lower()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if lower.endswith(".zarr.zip"):
        if store.fmt == "zarr":
            _zip_dir(store.path, tmp)
        else:
            with tempfile.TemporaryDirectory(prefix="attg-export-") as scratch:
                inner = Path(scratch) / "store.zarr"
                _copy_store(store, inner)
                _zip_dir(inner, tmp)
    elif lower.endswith(H5_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="attg-export-") as scratch:
            inner = Path(scratch) / "store.h5"
            _copy_store(store, inner)
            shutil.move(inner, tmp)
    else:
        raise StoreError(f"{out}: export name must end in .zarr.zip or .h5")
    os.replace(tmp, out)
    manifest = Path(f"{out}.sha256")
    manifest_tmp = manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}")
    manifest_tmp.write_text(f"{sha256_file(out)}  {out.name}\n")
    os.replace(manifest_tmp, manifest)
    return out, manifest


def _copy_store(store, dest: Path) -> None:
    ok = store.status != STATUS_FAILED
    write_store(
        dest,
        list(store.keys),
        store.read_all().astype(np.float32),
        method=store.method,
        attrs=dict(store.attrs),
        labels=store.labels,
        ok=ok,
        errors=store.failed,
    )


def _zip_dir(folder: Path, out: Path) -> None:
    # Chunks are zstd-compressed already: store them as is (ZIP_STORED), which zarr reads fastest.
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
