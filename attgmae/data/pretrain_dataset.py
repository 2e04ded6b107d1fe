"""Stage 2 input: training images joined by key with their guidance maps.

Keys are image paths relative to ``<data_path>/train`` ('/'-separated), which is what
``attg-maps generate <data_path>/train`` writes. The join happens once, before training, in the
main process: the map rows live in one numpy array (no per-key Python objects), so DataLoader
workers forked afterwards share it copy-on-write instead of each loading the store.

Every random choice of a sample (crop box, flip, mask noise, random-guidance map) comes from a
generator seeded by ``(seed, epoch, index)``. A sample is therefore the same whichever worker,
rank or world size draws it, and after a resume: 2 processes see exactly what 1 process sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from attgmae.core.constants import MAP_GRID
from attgmae.core.errors import InputError
from attgmae.core.identity import changed_images
from attgmae.core.listing import list_split
from attgmae.data.images import ImageDecodeError, decode_rgb
from attgmae.data.transforms import JointTransform
from attgmae.guidance import fresh_random_map
from attgmae.store import STATUS_OK, open_store

GUIDANCE_MODES = ("store", "random", "none")
MISSING_POLICIES = ("error", "uniform")
# Images replaced since their maps were computed: stop, train them with uniform weights, or with
# the maps of the images they replaced.
CHANGED_POLICIES = ("error", "uniform", "accept")
# How many following images to try in place of an undecodable one (--skip_bad_images).
_MAX_SUBSTITUTES = 64


class MapJoinError(InputError):
    """Images without maps (or a store that does not fit): found before training starts."""


class BadImageError(InputError):
    """An image that cannot be decoded; one-argument so DataLoader workers can re-raise it."""


@dataclass
class MapJoin:
    """Result of joining image keys with a map table."""

    rows: np.ndarray  # int64 [N]: row of each image's map in ``maps``, -1 when missing
    maps: np.ndarray  # float16 [M, G, G]: the table's maps, shared (not copied) per image
    missing: np.ndarray  # str [K]: image keys with no usable map
    extra: int  # maps whose key matches no image (fine: e.g. a subset of images is trained)
    method: str = "?"  # the store's map method, recorded with the run
    changed: tuple[str, ...] = ()  # image keys replaced since their maps were computed


def join_maps(keys: np.ndarray, store_path, missing_policy: str = "error", image_root=None,
              changed_policy: str = "error", identities=None) -> MapJoin:  # fmt: skip
    """Look up every image key in the map store at ``store_path`` (loaded fully into memory).

    Maps that the store marks as failed count as missing. With ``missing_policy='error'`` any
    missing map raises MapJoinError naming how many and the first few; with ``'uniform'`` those
    images train with a zero map (every patch weight gamma, as vanilla MAE). With ``image_root``,
    images whose size or mtime differ from what the store recorded when their map was computed
    (``core.identity``) raise MapJoinError naming them too, unless ``changed_policy`` is
    ``'uniform'`` (zero maps) or ``'accept'`` (the old maps). The stat of every joined image
    costs about as much as the listing's own walk (docs/training.md); ``identities`` (int64
    [N, 2], ``core.identity.image_identities`` of ``keys``) spares it when already taken.
    """
    if missing_policy not in MISSING_POLICIES:
        raise ValueError(f"missing_policy must be one of {MISSING_POLICIES}")
    if changed_policy not in CHANGED_POLICIES:
        raise ValueError(f"changed_policy must be one of {CHANGED_POLICIES}")
    store = open_store(store_path)
    table = store.load()
    rows = np.asarray(table.index_of([str(k) for k in keys]), dtype=np.int64)
    extra = int(len(table.keys) - np.unique(rows[rows >= 0]).size)
    # A key whose map computation failed has a row, but no usable map.
    status = np.asarray(store.status)
    if status.size:
        failed = (rows >= 0) & (status[np.maximum(rows, 0)] != STATUS_OK)
        rows[failed] = -1
    missing = np.asarray(keys)[rows < 0]
    if missing.size and missing_policy == "error":
        first = ", ".join(str(k) for k in missing[:5])
        raise MapJoinError(
            f"{missing.size} of {len(keys)} training images have no map in {store_path} "
            f"(first: {first}). Keys are paths relative to <data_path>/train; make the maps with "
            f"`attg-maps generate <data_path>/train`, or pass --missing_maps uniform to train "
            f"those images with uniform weights."
        )
    changed = (
        [] if image_root is None
        else _changed_since_maps(store, image_root, keys, rows, identities)
    )  # fmt: skip
    if changed and changed_policy == "error":
        raise MapJoinError(
            f"{len(changed)} of {len(keys)} training images changed since their maps in "
            f"{store_path} were computed (another size or mtime; first: {', '.join(changed[:5])})"
            ": their maps belong to the images they replaced. Rerun the `attg-maps generate` "
            "that made the store (it recomputes only those), or pass --changed_images uniform to "
            "train them with uniform weights, or --changed_images accept to keep the old maps."
        )
    if changed and changed_policy == "uniform":
        rows[np.isin(np.asarray(keys, dtype=str), changed)] = -1
    return MapJoin(rows=rows, maps=np.asarray(table.maps), missing=missing, extra=extra,
                   method=store.method, changed=tuple(changed))  # fmt: skip


def _changed_since_maps(store, image_root, keys, rows, identities=None) -> list[str]:
    """Joined image keys whose image is not the one the store recorded for its map."""
    recorded = store.image_identity
    if recorded is None:  # a store from before identities were recorded: nothing to compare
        return []
    joined = np.flatnonzero(rows >= 0)
    now = None if identities is None else np.asarray(identities)[joined]
    return changed_images(image_root, [str(keys[i]) for i in joined], recorded[rows[joined]], now)


class PretrainDataset(Dataset):
    """``dataset[(index, epoch)]`` -> dict of one augmented sample.

    image uint8 [3, S, S]; box float32 [4] (crop, relative x0 y0 x1 y1); flip bool;
    noise float32 [L] (mask noise); map float32 [G, G] whole-image map (guided modes only);
    index int; bad str (key of an undecodable image skipped in favour of this one, or '').
    """

    def __init__(
        self,
        image_root,
        keys,
        transform: JointTransform,
        num_patches: int,
        guidance: str = "none",
        join: MapJoin | None = None,
        seed: int = 0,
        skip_bad_images: bool = False,
        map_grid: int = MAP_GRID,
    ):
        if guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {guidance!r}")
        if guidance == "store" and join is None:
            raise ValueError("guidance 'store' needs the joined maps")
        self.image_root = Path(image_root)
        # UTF-8 bytes in one numpy array: no per-key Python objects whose refcounts would copy
        # the pages into every forked worker, and 4x smaller than numpy unicode. Keys already
        # as bytes (a node's shared table, mapped from its file) are kept as they are.
        if getattr(keys, "dtype", None) is not None and keys.dtype.kind == "S":
            self.keys = keys
        else:
            self.keys = np.char.encode(np.asarray(keys, dtype=str), "utf-8")
        self.transform = transform
        self.num_patches = num_patches
        self.guidance = guidance
        self.join = join
        self.seed = seed
        self.skip_bad_images = skip_bad_images
        self.map_grid = join.maps.shape[-1] if join is not None else map_grid

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, index: int) -> str:
        return self.keys[index].decode("utf-8")

    def sample_rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def _decode(self, index: int):
        """-> (index actually used, uint8 image, key of the bad image replaced or '')."""
        try:
            return index, decode_rgb(self.image_root / self.key(index)), ""
        except ImageDecodeError as err:
            if not self.skip_bad_images:
                raise BadImageError(
                    f"cannot decode training image {err.path}: {err.reason}. Remove or replace "
                    f"it, or pass --skip_bad_images to skip and count such images."
                ) from None
            bad_key = self.key(index)
        # Substitute the next decodable image so batches keep their size (counted by the caller).
        for step in range(1, _MAX_SUBSTITUTES + 1):
            other = (index + step) % len(self.keys)
            try:
                return other, decode_rgb(self.image_root / self.key(other)), bad_key
            except ImageDecodeError:
                continue
        raise BadImageError(
            f"{_MAX_SUBSTITUTES + 1} images in a row from {self.image_root / bad_key} on cannot "
            f"be decoded: is {self.image_root} the right folder?"
        )

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        rng = self.sample_rng(index, epoch)
        used, img, bad_key = self._decode(index)
        stored = None
        if self.guidance == "store":
            row = self.join.rows[used]  # -1: missing under --missing_maps uniform (zero map)
            stored = self.join.maps[row] if row >= 0 else np.zeros((self.map_grid,) * 2)
        return augmented_sample(img, rng, self.transform, self.num_patches, self.guidance,
                                stored, used, bad_key, self.map_grid)  # fmt: skip


def augmented_sample(img, rng, transform: JointTransform, num_patches: int, guidance: str,
                     stored_map, used: int, bad_key: str = "",
                     map_grid: int = MAP_GRID) -> dict:  # fmt: skip
    """One training sample (``PretrainDataset``'s dict) from a decoded image and its generator:
    crop and flip, then mask noise, then (``guidance='random'``) the random map, always drawn
    in this order; ``stored_map`` [G, G] for ``guidance='store'``. Images from a folder and
    from tar shards go through here alike."""
    image, box, flip = transform(img, rng)
    sample = {
        "image": image,
        "box": torch.from_numpy(box),
        "flip": flip,
        "noise": torch.from_numpy(rng.random(num_patches, dtype=np.float32)),
        "index": used,
        "bad": bad_key,
    }
    if guidance == "store":
        sample["map"] = torch.from_numpy(np.array(stored_map, dtype=np.float32))
    elif guidance == "random":
        sample["map"] = torch.from_numpy(fresh_random_map(rng, map_grid))
    return sample


def list_train_keys(data_path, skipped: list | None = None) -> tuple[Path, np.ndarray]:
    """The training image folder ``<data_path>/train`` and its sorted keys (``skipped``: leave
    out unreadable folders and images, appending them there)."""
    root, keys = list_split(data_path, "train", skipped)
    return root, np.asarray(keys, dtype=str)


class EpochSampler(Sampler):
    """DistributedSampler that yields ``(index, epoch)`` and can start mid-epoch.

    The epoch's order is a permutation seeded by ``seed + epoch`` (padded to a multiple of
    ``world_size`` by repeating its start); rank r takes every ``world_size``-th index from r.
    ``start`` skips this rank's first samples, so a resumed run continues with the batch the
    interrupted run would have drawn next.
    """

    def __init__(self, length: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):  # fmt: skip
        self.length = length
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.num_samples = -(-length // world_size)  # per rank, ceil

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def rank_indices(self) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=gen)
        else:
            order = torch.arange(self.length)
        total = self.num_samples * self.world_size
        if total > self.length:  # pad by repeating the start, as DistributedSampler does
            order = order.repeat(-(-total // self.length))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self):
        for index in self.rank_indices()[self.start :].tolist():
            yield index, self.epoch

    def __len__(self) -> int:
        return self.num_samples - self.start
