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

import numpy as np

from .layout import KEYS, LABELS, MAP_SHAPE, MAPS, STATUS

REQUIRED = (MAPS, KEYS, STATUS)


def _jsonable(attrs: dict) -> dict:
    return json.loads(json.dumps(attrs))


def _missing_arrays(names) -> None:
    missing = set(REQUIRED) - set(names)
    if missing:
        raise KeyError(", ".join(sorted(missing)))


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
            from zarr.storage import ZipStore

            return zarr.open_group(store=ZipStore(str(path), mode="r"), mode="r")
        return zarr.open_group(str(path), mode="r")

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
    def write_rows(path, start: int, maps: np.ndarray, status: np.ndarray) -> None:
        """Rows [start, start + len(maps)); the caller writes whole shards only."""
        import zarr

        group = zarr.open_group(str(path), mode="r+")
        stop = start + len(maps)
        group[MAPS][start:stop] = maps.astype(np.float16, copy=False)
        group[STATUS][start:stop] = status.astype(np.uint8, copy=False)

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
        return {
            name: (group[name].shape, np.dtype(group[name].dtype)) for name in group.array_keys()
        }

    @staticmethod
    def read_array(path, name: str) -> np.ndarray:
        return np.asarray(ZarrBackend._open_readonly(path)[name][:])


class H5Backend:
    name = "h5"
    concurrent_writes = False

    @staticmethod
    def create(path, keys, labels, attrs: dict, chunk_rows: int, shard_rows: int) -> None:
        """The same arrays as the zarr layout: maps chunked by rows (shuffle + LZF, h5py's
        built-in fast filters), status zeros, keys and labels filled in."""
        import h5py

        num_rows = len(keys)
        with h5py.File(path, "w") as f:
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

    @staticmethod
    def write_rows(path, start: int, maps: np.ndarray, status: np.ndarray) -> None:
        import h5py

        stop = start + len(maps)
        with h5py.File(path, "r+") as f:
            f[MAPS][start:stop] = maps.astype(np.float16, copy=False)
            f[STATUS][start:stop] = status.astype(np.uint8, copy=False)

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
        import h5py

        with h5py.File(path, "r+") as f:
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
    def read_meta(path) -> dict:
        import h5py

        with h5py.File(path, "r") as f:
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
        import h5py

        with h5py.File(path, "r") as f:
            if rows is None:
                return f[MAPS][:]
            return f[MAPS][np.asarray(rows)]

    @staticmethod
    def file_of(path, array: str, row: int) -> str:
        """The file that holds ``row`` of ``array``: the one HDF5 file."""
        return f"{path} (dataset {array})"

    @staticmethod
    def array_info(path) -> dict:
        import h5py

        with h5py.File(path, "r") as f:
            return {
                name: (f[name].shape, f[name].dtype)
                for name in f.keys()
                if isinstance(f[name], h5py.Dataset)
            }

    @staticmethod
    def read_array(path, name: str) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as f:
            return f[name][:]


BACKENDS = {"zarr": ZarrBackend, "h5": H5Backend}


def backend_for(fmt: str):
    """The backend of a format name that ``layout.store_format`` returned."""
    return BACKENDS[fmt]
