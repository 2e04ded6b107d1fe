"""The two on-disk formats behind one small interface: zarr v3 (sharded, zstd) and HDF5.

Only this module imports zarr and h5py. The writer decides *what* rows go where and when; a
backend creates the arrays, moves rows, and reads arrays back, for our layout and for a foreign
store (``array_info`` / ``read_array``, used by import). HDF5 files are opened per call and closed
again, so no handle survives into a forked DataLoader worker.

``concurrent_writes``: zarr accepts several processes writing *different whole shards* at once;
HDF5 accepts one writer only, so with several ranks its rows are written by rank 0 at the end.
zarr and h5py are imported where used: a process touches one format, and zarr alone takes
~0.4 s to import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .layout import IMAGE_IDENTITY, KEYS, LABELS, MAP_SHAPE, MAPS, STATUS, RefusedFileError
from .limits import ExpansionBudget, check_declared, real_bytes

REQUIRED = (MAPS, KEYS, STATUS)
ROW_ARRAYS = (MAPS, KEYS, STATUS, LABELS, IMAGE_IDENTITY)  # one row per key, each
MAX_HDF5_LINKS = 100_000  # our stores hold 6 datasets; a file with more links is not a map store


def _jsonable(attrs: dict) -> dict:
    return json.loads(json.dumps(attrs))


def _missing_arrays(names) -> None:
    missing = set(REQUIRED) - set(names)
    if missing:
        raise KeyError(", ".join(sorted(missing)))


def stamp(path) -> tuple:
    """What changes when the store at ``path`` is replaced (a rename puts another folder or file
    there): its inode, and for a zarr folder its ``zarr.json``'s inode, mtime and size.
    OSError when nothing is there."""
    info = os.stat(path)
    if not os.path.isdir(path):
        return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    meta = os.stat(os.path.join(path, "zarr.json"))
    return (info.st_dev, info.st_ino, meta.st_ino, meta.st_mtime_ns, meta.st_size)


def _declared_bytes(shape, dtype) -> int:
    """Bytes an array of ``shape`` declares; strings count at least 8 bytes each."""
    itemsize = max(np.dtype(dtype).itemsize, 8) if np.dtype(dtype).kind in "OSUT" else None
    return int(np.prod(shape, dtype=np.float64)) * (itemsize or np.dtype(dtype).itemsize)


def check_sizes(path, arrays: dict) -> None:
    """StoreError before any array is read when ``arrays`` ({name: (shape, dtype)}) declare more
    than the store's bytes on disk could hold (``limits``)."""
    declared = sum(_declared_bytes(shape, dtype) for shape, dtype in arrays.values())
    check_declared(path, declared, real_bytes(path), f"its arrays ({', '.join(sorted(arrays))})")


def check_rows(path, arrays: dict) -> None:
    """Our layout's arrays must agree on the number of rows, and declare no more than the store's
    bytes can hold (checked by the reader before it reads them; the writer reads its own partial
    store, whose unwritten rows declare more than they hold, without)."""
    rows = {name: shape[0] if len(shape) else None for name, (shape, _) in arrays.items()
            if name in ROW_ARRAYS}  # fmt: skip
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in sorted(rows.items()))
        raise RefusedFileError(
            f"{path}: its arrays disagree on the number of rows ({listed}): a damaged or crafted "
            "store; regenerate it, or import it again from a good copy"
        )
    check_sizes(path, arrays)


def _meta(attrs: dict, key_bytes, labels, status, maps) -> dict:
    """What ``read_meta`` returns: everything but the maps themselves."""
    return {
        "attrs": attrs,
        "key_bytes": key_bytes,  # [N] UTF-8 bytes: no per-key Python objects
        "labels": labels,
        "status": np.asarray(status, dtype=np.uint8),
        "num_rows": int(maps.shape[0]),
        "maps_shape": tuple(maps.shape),
        "maps_dtype": str(maps.dtype),
    }


class ZarrBackend:
    name = "zarr"
    concurrent_writes = True

    @staticmethod
    def _open_readonly(path):
        """A zarr group for reading: a folder, or a published ``.zarr.zip`` read in place."""
        import zarr

        if str(path).lower().endswith(".zip"):
            import zipfile

            from zarr.storage import ZipStore

            with zipfile.ZipFile(path) as archive:  # a deflated member may not be a bomb
                budget = ExpansionBudget(path, Path(path).stat().st_size)
                for info in archive.infolist():
                    budget.add(info.filename, info.file_size, info.compress_size)
            return zarr.open_group(store=ZipStore(str(path), mode="r"), mode="r")
        return zarr.open_group(str(path), mode="r")

    @staticmethod
    def _shapes(group) -> dict:
        return {name: (group[name].shape, group[name].dtype) for name in group.array_keys()}

    @staticmethod
    def create(path, keys, labels, attrs: dict, chunk_rows: int, shard_rows: int) -> None:
        """Empty maps and status (all rows 'missing'), the keys and labels filled in."""
        import zarr
        from zarr.codecs import ZstdCodec

        num_rows = len(keys)
        group = zarr.open_group(str(path), mode="w")
        zstd = ZstdCodec(level=3)

        def sharded(name, row_shape, dtype):  # chunks of rows inside one file per shard
            group.create_array(
                name,
                shape=(num_rows, *row_shape),
                chunks=(chunk_rows, *row_shape),
                shards=(shard_rows, *row_shape),
                dtype=dtype,
                compressors=zstd,
                fill_value=0,
            )

        sharded(MAPS, MAP_SHAPE, "float16")
        sharded(STATUS, (), "uint8")
        ZarrBackend.add_identity(path, num_rows, chunk_rows, shard_rows, group)
        key_array = group.create_array(
            KEYS, shape=(num_rows,), chunks=(shard_rows,), dtype=str, compressors=zstd
        )
        key_array[:] = np.array(keys, dtype=object)
        if labels is not None:
            label_array = group.create_array(
                LABELS, shape=(num_rows,), chunks=(shard_rows,), dtype="int64", compressors=zstd
            )
            label_array[:] = np.asarray(labels, dtype=np.int64)
        group.attrs.update(_jsonable(attrs))

    @staticmethod
    def add_identity(path, num_rows, chunk_rows, shard_rows, group=None) -> None:
        """The IMAGE_IDENTITY array, all rows -1 (not recorded), sharded as the maps are."""
        import zarr
        from zarr.codecs import ZstdCodec

        group = group if group is not None else zarr.open_group(str(path), mode="r+")
        group.create_array(
            IMAGE_IDENTITY,
            shape=(num_rows, 2),
            chunks=(chunk_rows, 2),
            shards=(shard_rows, 2),
            dtype="int64",
            compressors=ZstdCodec(level=3),
            fill_value=-1,
        )

    @staticmethod
    def write_rows(path, start: int, maps: np.ndarray, status: np.ndarray, identity) -> None:
        """Rows [start, start + len(maps)); the caller writes whole shards only."""
        import zarr

        group = zarr.open_group(str(path), mode="r+")
        stop = start + len(maps)
        group[MAPS][start:stop] = maps.astype(np.float16, copy=False)
        group[STATUS][start:stop] = status.astype(np.uint8, copy=False)
        group[IMAGE_IDENTITY][start:stop] = np.asarray(identity, dtype=np.int64)

    @staticmethod
    def update_attrs(path, attrs: dict) -> None:
        import zarr

        zarr.open_group(str(path), mode="r+").attrs.update(_jsonable(attrs))

    @staticmethod
    def read_meta(path) -> dict:
        group = ZarrBackend._open_readonly(path)
        names = set(group.array_keys())
        _missing_arrays(names)
        return _meta(
            dict(group.attrs),
            np.strings.encode(np.asarray(group[KEYS][:]), "utf-8"),
            group[LABELS][:] if LABELS in names else None,
            group[STATUS][:],
            group[MAPS],
        )

    @staticmethod
    def read_maps(path, rows=None) -> np.ndarray:
        """float16 maps; all rows, or the sorted int array ``rows``."""
        maps = ZarrBackend._open_readonly(path)[MAPS]
        if rows is None:
            return np.asarray(maps[:])
        return np.asarray(maps.get_orthogonal_selection((rows, slice(None), slice(None))))

    @staticmethod
    def read_identity(path):
        """int64 [N, 2] (size, mtime_ns) per image, or None for a store without them."""
        group = ZarrBackend._open_readonly(path)
        if IMAGE_IDENTITY not in set(group.array_keys()):
            return None
        return np.asarray(group[IMAGE_IDENTITY][:], dtype=np.int64)

    @staticmethod
    def file_of(path, array: str, row: int) -> str:
        """The file (or .zip member) that holds ``row`` of ``array``."""
        stored = ZarrBackend._open_readonly(path)[array]
        rows = (stored.shards or stored.chunks)[0]
        member = f"{array}/c/" + "/".join([str(row // rows)] + ["0"] * (stored.ndim - 1))
        if str(path).lower().endswith(".zip"):
            return f"{path} (member {member})"
        return f"{path}/{member}"

    @staticmethod
    def array_info(path) -> dict:
        """{name: (shape, numpy dtype)} of every array in the group (any layout)."""
        group = ZarrBackend._open_readonly(path)
        return {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in
                ZarrBackend._shapes(group).items()}  # fmt: skip

    @staticmethod
    def read_array(path, name: str) -> np.ndarray:
        return np.asarray(ZarrBackend._open_readonly(path)[name][:])


def _refuse_outside_data(f, path) -> None:
    """StoreError when an HDF5 file reaches outside itself: an external link, a dataset kept in
    external files (``external=``), or a virtual dataset. Any of them would read another local
    file into the store (and from there into an export). Links are walked, never followed."""
    import h5py

    problems, count = [], [0]

    def visit(name):
        count[0] += 1
        if count[0] > MAX_HDF5_LINKS:
            problems.append(f"holds more than {MAX_HDF5_LINKS} objects")
            return True
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{name!r} is an external link to {link.filename}:{link.path}")
        elif isinstance(link, h5py.HardLink):
            item = f.get(name)
            if isinstance(item, h5py.Dataset) and item.is_virtual:
                problems.append(f"dataset {name!r} is virtual (its data lie in other files)")
            elif isinstance(item, h5py.Dataset) and item.external:
                files = ", ".join(sorted({str(entry[0]) for entry in item.external}))
                problems.append(f"dataset {name!r} keeps its data in external files ({files})")
        elif not isinstance(link, h5py.SoftLink):
            problems.append(f"{name!r} is a link of an unknown kind")
        return True if problems else None

    f.visit_links(visit)
    if problems:
        raise RefusedFileError(
            f"{path}: {problems[0]}; an HDF5 file read from outside must hold its own data "
            "(no external links, external storage or virtual datasets): refused"
        )


def _open_h5(path, mode: str = "r"):
    """The one HDF5 opener. Read-only opens check that the file holds its own data first."""
    import h5py

    f = h5py.File(path, mode)
    if mode == "r":
        try:
            _refuse_outside_data(f, path)
        except BaseException:
            f.close()
            raise
    return f


class H5Backend:
    name = "h5"
    concurrent_writes = False

    @staticmethod
    def create(path, keys, labels, attrs: dict, chunk_rows: int, shard_rows: int) -> None:
        """The same arrays as the zarr layout: maps chunked by rows (shuffle + LZF, h5py's
        built-in fast filters), status zeros, keys and labels filled in."""
        import h5py

        num_rows = len(keys)
        with _open_h5(path, "w") as f:
            f.create_dataset(
                MAPS,
                shape=(num_rows, *MAP_SHAPE),
                dtype=np.float16,
                chunks=(min(chunk_rows, max(num_rows, 1)), *MAP_SHAPE),
                compression="lzf",
                shuffle=True,
                fillvalue=0,
            )
            f.create_dataset(STATUS, data=np.zeros(num_rows, dtype=np.uint8))
            f.create_dataset(KEYS, data=list(keys), dtype=h5py.string_dtype("utf-8"))
            if labels is not None:
                f.create_dataset(LABELS, data=np.asarray(labels, dtype=np.int64))
            H5Backend._set_attrs(f, attrs)
        H5Backend.add_identity(path, num_rows, chunk_rows, shard_rows)

    @staticmethod
    def add_identity(path, num_rows, chunk_rows, shard_rows) -> None:
        """The IMAGE_IDENTITY dataset, all rows -1 (not recorded)."""
        with _open_h5(path, "r+") as f:
            f.create_dataset(IMAGE_IDENTITY, data=np.full((num_rows, 2), -1, dtype=np.int64))

    @staticmethod
    def write_rows(path, start: int, maps: np.ndarray, status: np.ndarray, identity) -> None:
        stop = start + len(maps)
        with _open_h5(path, "r+") as f:
            f[MAPS][start:stop] = maps.astype(np.float16, copy=False)
            f[STATUS][start:stop] = status.astype(np.uint8, copy=False)
            f[IMAGE_IDENTITY][start:stop] = np.asarray(identity, dtype=np.int64)

    @staticmethod
    def _set_attrs(f, attrs: dict) -> None:
        # Scalars stay plain HDF5 attributes; lists and dicts are JSON strings (decoded on read).
        for name, value in _jsonable(attrs).items():
            if isinstance(value, (dict, list)) or value is None:
                f.attrs[name] = "json:" + json.dumps(value)
            else:
                f.attrs[name] = value

    @staticmethod
    def update_attrs(path, attrs: dict) -> None:
        with _open_h5(path, "r+") as f:
            H5Backend._set_attrs(f, attrs)

    @staticmethod
    def _get_attrs(f) -> dict:
        out = {}
        for name, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if isinstance(value, str) and value.startswith("json:"):
                value = json.loads(value[5:])
            elif isinstance(value, np.generic):
                value = value.item()
            out[name] = value
        return out

    @staticmethod
    def _shapes(f) -> dict:
        import h5py

        return {name: (f[name].shape, f[name].dtype) for name in f.keys()
                if isinstance(f[name], h5py.Dataset)}  # fmt: skip

    @staticmethod
    def read_meta(path) -> dict:
        with _open_h5(path) as f:
            _missing_arrays(f.keys())
            return _meta(
                H5Backend._get_attrs(f),
                f[KEYS][:].astype(bytes),
                f[LABELS][:] if LABELS in f else None,
                f[STATUS][:],
                f[MAPS],
            )

    @staticmethod
    def read_maps(path, rows=None) -> np.ndarray:
        with _open_h5(path) as f:
            if rows is None:
                return f[MAPS][:]
            return f[MAPS][np.asarray(rows)]

    @staticmethod
    def read_identity(path):
        """int64 [N, 2] (size, mtime_ns) per image, or None for a store without them."""
        with _open_h5(path) as f:
            return f[IMAGE_IDENTITY][:].astype(np.int64) if IMAGE_IDENTITY in f else None

    @staticmethod
    def file_of(path, array: str, row: int) -> str:
        """The file that holds ``row`` of ``array``: the one HDF5 file."""
        return f"{path} (dataset {array})"

    @staticmethod
    def array_info(path) -> dict:
        with _open_h5(path) as f:
            return H5Backend._shapes(f)

    @staticmethod
    def read_array(path, name: str) -> np.ndarray:
        with _open_h5(path) as f:
            return f[name][:]


BACKENDS = {"zarr": ZarrBackend, "h5": H5Backend}


def backend_for(fmt: str):
    """The backend of a format name that ``layout.store_format`` returned."""
    return BACKENDS[fmt]
