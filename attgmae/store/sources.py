"""Reading the maps of a published source as they are, before any check (``attg-maps import``).

Sources (see docs/store-format.md):
- a folder tree of per-image maps (.npy, .pt, 8/16-bit grayscale .png);
- one .npz, or a .pt/.pth holding a dict {key: array};
- an HDF5 or zarr store, ours (copied exactly, attributes and image identities included) or
  another layout; a ``.zarr.zip`` is read in place.
Archives are unpacked first (``unpack.unpacked``). Whatever declares a size (an ``.npy`` header,
an ``.npz``'s members, a store's arrays) is checked against the file's real size before it is
read (``limits``); HDF5 files that reach outside themselves are refused (``backends``).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from attgmae.core.progress import Progress

from .backends import backend_for, check_sizes
from .layout import H5_SUFFIXES, RefusedFileError, StoreError
from .limits import ExpansionBudget, check_declared
from .reader import open_store

MAP_FILE_EXTENSIONS = (".npy", ".pt", ".pth", ".png")


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
    image_identity: np.ndarray | None = None  # int64 [N, 2], from one of our stores

    def origin(self, i: int) -> str:
        return self.origins[i] if self.origins is not None else self.keys[i]


def _load_torch(path: Path):
    # torch only for .pt sources: it takes seconds to import, and most archives are .npy/.npz.
    from attgmae.core.torchfile import load_torch_file

    _check_zip_members(path)  # a .pt is a zip (torch >= 1.6)
    return load_torch_file(path, what="map")


def _check_npy(path: Path) -> None:
    """An .npy's header declares its shape: no more than the file holds."""
    formats = np.lib.format
    with open(path, "rb") as handle:
        version = formats.read_magic(handle)
        read_header = formats.read_array_header_1_0 if version == (1, 0) else (
            formats.read_array_header_2_0)  # fmt: skip
        shape, _, dtype = read_header(handle)
        header = handle.tell()
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    real = path.stat().st_size - header
    if declared > real:
        raise ValueError(f"its header declares {declared:,} bytes of data, the file holds {real:,}")


def read_map_file(path: Path) -> np.ndarray:
    """One map file -> a float array as stored (PNG scaled to [0, 1])."""
    name = path.name.lower()
    if name.endswith(".npy"):
        _check_npy(path)
        return np.load(path, allow_pickle=False)
    if name.endswith((".pt", ".pth")):
        value = _load_torch(path)
        if not hasattr(value, "numpy"):
            raise ValueError(f"holds a {type(value).__name__}, not a tensor")
        return value.float().numpy()
    _check_png(path)
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


def read_tree(root: Path) -> RawMaps:
    """Every map file under ``root``; a file that cannot be read is a named problem."""
    raw = RawMaps(keys=[], maps=[], kind="folder of map files", origins=[])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [
            Path(dirpath) / name
            for name in sorted(filenames)
            if name.lower().endswith(MAP_FILE_EXTENSIONS) and not name.startswith(".")
        ]
    # A published ImageNet archive is ~1.28M small files: show progress (lines in a log file).
    with Progress(len(paths), "reading maps", unit="map") as bar:
        for path in paths:
            try:
                raw.maps.append(read_map_file(path))
                raw.keys.append(_strip_map_extension(path.relative_to(root).as_posix()))
                raw.origins.append(str(path))
            except Exception as err:  # any reader error is reported by file name
                raw.problems.append(f"{path}: unreadable ({err})")
            bar.update(1)
    if not raw.keys and not raw.problems:
        raise StoreError(f"{root}: no map files (.npy, .pt, .png) found")
    return raw


def _check_zip_members(path: Path) -> None:
    """An .npz (or .pt) is a zip: its members' declared sizes against the file's (``limits``)."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: its own reader says what is wrong with it
    with zipfile.ZipFile(path) as archive:
        budget = ExpansionBudget(path, path.stat().st_size)
        for info in archive.infolist():
            budget.add(info.filename, info.file_size, info.compress_size)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type


def _check_png(path: Path) -> None:
    """A PNG's header declares its size: no more pixels than its bytes can hold (``limits``)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE):
        return  # cv2 says it is not a readable PNG
    width, height = struct.unpack(">II", head[16:24])
    declared = width * height * PNG_CHANNELS.get(head[25], 4) * max(head[24], 8) // 8
    check_declared(path, declared, path.stat().st_size, "its PNG header")


def read_dict_file(path: Path) -> RawMaps:
    """A .npz, or a .pt/.pth dict {key: map}."""
    if path.name.lower().endswith(".npz"):
        _check_zip_members(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                items = {k: data[k] for k in data.files}
        except Exception as err:
            raise StoreError(f"{path}: cannot read npz ({err})") from None
        return RawMaps(keys=list(items), maps=list(items.values()), kind="npz")
    value = _load_torch(path)
    if not isinstance(value, dict):
        raise StoreError(f"{path}: holds a {type(value).__name__}; expected a dict {{key: map}}")
    items = {
        str(k): (v.float().numpy() if hasattr(v, "numpy") else np.asarray(v))
        for k, v in value.items()
    }
    return RawMaps(keys=list(items), maps=list(items.values()), kind="torch dict")


def _pick_array(info: dict, name, wanted: str, fits, flag: str, where) -> str:
    """The array name given (``name``), else ``wanted`` if present, else the one that ``fits``."""
    if name is None:
        if wanted in info:
            name = wanted
        else:
            candidates = [n for n, (shape, dtype) in info.items() if fits(shape, dtype)]
            if len(candidates) != 1:
                raise StoreError(
                    f"{where}: cannot tell which array holds the {wanted} {sorted(info)}; "
                    f"pass {flag}"
                )
            name = candidates[0]
    if name not in info:
        raise StoreError(f"{where}: no array named {name!r} (has {sorted(info)})")
    return name


def _decode_keys(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(values)]


def read_store(path: Path, maps_name=None, keys_name=None) -> RawMaps:
    """One of our stores (copied exactly), or another HDF5/zarr layout: its maps array (3-D)
    and keys array (1-D strings), found by name or by shape."""
    fmt = "zarr" if path.is_dir() or str(path).lower().endswith(".zip") else "h5"
    try:
        ours = open_store(path, allow_incomplete=True, fmt=fmt)
    except RefusedFileError:
        raise
    except StoreError:
        ours = None  # another layout: read below with --maps_name / --keys_name
    if ours is not None:
        if not ours.attrs.get("complete"):
            raise StoreError(f"{path}: store is incomplete; finish the run that writes it first")
        return RawMaps(
            keys=list(ours.keys),
            maps=list(ours.read_all()),
            kind="attgmae store",
            attrs=dict(ours.attrs),
            status=ours.status,
            labels=ours.labels,
            image_identity=ours.image_identity,
        )
    backend = backend_for(fmt)
    try:
        info = backend.array_info(path)
        maps_name = _pick_array(
            info, maps_name, "maps", lambda shape, _: len(shape) == 3, "--maps_name", path
        )
        keys_name = _pick_array(
            info,
            keys_name,
            "keys",
            lambda shape, dtype: len(shape) == 1 and dtype.kind in "OSUT",
            "--keys_name",
            path,
        )
        check_sizes(path, {name: info[name] for name in (maps_name, keys_name)})
        maps = backend.read_array(path, maps_name)
        keys = _decode_keys(backend.read_array(path, keys_name).tolist())
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
            return read_store(path, maps_name, keys_name)
        return read_tree(path)
    if lower.endswith((*H5_SUFFIXES, ".zarr.zip")):
        return read_store(path, maps_name, keys_name)
    if lower.endswith((".npz", ".pt", ".pth")):
        return read_dict_file(path)
    raise StoreError(
        f"{path}: unknown source type; expected a folder, .npz, .pt/.pth, .h5, "
        ".zarr, .zip or .tar(.gz)"
    )
