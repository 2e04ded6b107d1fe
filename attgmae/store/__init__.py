"""The map store: one method's 14x14 guidance maps for one image set (zarr v3 or HDF5)."""

from .layout import (
    GRID,
    STATUS_FAILED,
    STATUS_OK,
    StoreError,
    normalize_maps,
    store_format,
)
from .reader import MapStore, MapTable, StoreReplacedError, open_store
from .writer import MapStoreWriter, write_store

__all__ = [
    "GRID",
    "STATUS_FAILED",
    "STATUS_OK",
    "MapStore",
    "MapStoreWriter",
    "MapTable",
    "StoreError",
    "StoreReplacedError",
    "normalize_maps",
    "open_store",
    "store_format",
    "write_store",
]
