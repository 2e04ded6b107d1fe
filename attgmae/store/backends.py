"""The two on-disk formats behind one small interface: zarr v3 (sharded, zstd) and HDF5.

Only this module imports zarr and h5py. The writer decides *what* rows go where; a backend only
creates arrays and moves rows. HDF5 files are opened per call and closed again, so no handle
survives into a forked DataLoader worker.
"""

from __future__ import annotations

import json

import numpy as np

from .layout import CHUNK_ROWS, GRID, KEYS, LABELS, MAPS, SHARD_ROWS, STATUS


def _jsonable(attrs: dict) -> dict:
    return json.loads(json.dumps(attrs))


def _open_zarr_readonly(path):
    """A zarr group for reading: a folder, or a published ``.zarr.zip`` read in place."""
    import zarr

    if str(path).lower().endswith(".zip"):
        from zarr.storage import ZipStore

        return zarr.open_group(store=ZipStore(str(path), mode="r"), mode="r")
    return zarr.open_group(str(path), mode="r")


class ZarrBackend:
    name = "zarr"

    @staticmethod
    def create(
        path,
        keys: list[str],
        labels,
        attrs: dict,
        chunk_rows: int = CHUNK_ROWS,
        shard_rows: int = SHARD_ROWS,
    ) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        num_rows = len(keys)
        group = zarr.open_group(str(path), mode="w")
        zstd = ZstdCodec(level=3)
        group.create_array(
            MAPS,
            shape=(num_rows, GRID, GRID),
            chunks=(chunk_rows, GRID, GRID),
            shards=(shard_rows, GRID, GRID),
            dtype="float16",
            compressors=zstd,
            fill_value=0,
        )
        group.create_array(
            STATUS,
            shape=(num_rows,),
            chunks=(chunk_rows,),
            shards=(shard_rows,),
            dtype="uint8",
            compressors=zstd,
            fill_value=0,
        )
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
        """Write rows [start, start + len(maps)); the caller guarantees whole shards."""
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
        """attrs, keys (list of str), labels (int64 or None), status (uint8), num_rows."""
        group = _open_zarr_readonly(path)
        names = set(group.array_keys())
        missing = {MAPS, KEYS, STATUS} - names
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return {
            "attrs": dict(group.attrs),
            # UTF-8 bytes straight from numpy strings: no per-key Python objects
            "key_bytes": np.strings.encode(np.asarray(group[KEYS][:]), "utf-8"),
            "labels": group[LABELS][:] if LABELS in names else None,
            "status": np.asarray(group[STATUS][:], dtype=np.uint8),
            "num_rows": int(group[MAPS].shape[0]),
            "maps_shape": tuple(group[MAPS].shape),
            "maps_dtype": str(group[MAPS].dtype),
        }

    @staticmethod
    def read_maps(path, rows=None) -> np.ndarray:
        """float16 maps; all rows, or the sorted int array ``rows``."""
        maps = _open_zarr_readonly(path)[MAPS]
        if rows is None:
            return np.asarray(maps[:])
        return np.asarray(maps.get_orthogonal_selection((rows, slice(None), slice(None))))


class H5Backend:
    name = "h5"

    @staticmethod
    def create_full(path, keys: list[str], labels, attrs: dict, maps: np.ndarray, status) -> None:
        """Write a whole HDF5 store at once (HDF5 has no safe concurrent writers)."""
        import h5py

        num_rows = len(keys)
        chunk = (min(CHUNK_ROWS, max(num_rows, 1)), GRID, GRID)
        with h5py.File(path, "w") as f:
            f.create_dataset(
                MAPS,
                data=maps.astype(np.float16, copy=False),
                chunks=chunk,
                compression="lzf",
                shuffle=True,  # h5py's built-in fast filter
            )
            f.create_dataset(STATUS, data=np.asarray(status, dtype=np.uint8))
            f.create_dataset(KEYS, data=keys, dtype=h5py.string_dtype("utf-8"))
            if labels is not None:
                f.create_dataset(LABELS, data=np.asarray(labels, dtype=np.int64))
            H5Backend._set_attrs(f, attrs)

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
            missing = {MAPS, KEYS, STATUS} - set(f.keys())
            if missing:
                raise KeyError(", ".join(sorted(missing)))
            return {
                "attrs": H5Backend._get_attrs(f),
                "key_bytes": f[KEYS][:].astype(bytes),
                "labels": f[LABELS][:] if LABELS in f else None,
                "status": np.asarray(f[STATUS][:], dtype=np.uint8),
                "num_rows": int(f[MAPS].shape[0]),
                "maps_shape": tuple(f[MAPS].shape),
                "maps_dtype": str(f[MAPS].dtype),
            }

    @staticmethod
    def read_maps(path, rows=None) -> np.ndarray:
        import h5py

        with h5py.File(path, "r") as f:
            if rows is None:
                return f[MAPS][:]
            return f[MAPS][np.asarray(rows)]


def backend_for(fmt: str):
    return ZarrBackend if fmt == "zarr" else H5Backend
