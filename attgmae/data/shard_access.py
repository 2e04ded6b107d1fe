"""Random access to the samples of tar shards, for what does not stream them: ``attg-maps
generate`` over shards (keys from the samples, images from their bytes) and the training
run's reconstruction figures.

Each shard's member table (headers only, grouped into samples as webdataset groups them) is
read once per process when first needed; a member is then one seek and one read. Samples are
addressed by their row in the shards' sorted keys: shards hold consecutive keys (``attg-maps
pack`` writes them in key order), so ordered by their first sample, row r lies in the shard
where the running count passes r.
"""

from __future__ import annotations

import tarfile

import numpy as np
from torch.utils.data import Dataset

from attgmae.core.identity import UNKNOWN
from attgmae.data.map_inputs import check_on_device, image_item
from attgmae.data.shards import KEY, ShardError, ShardSample, ShardSet, decode_sample


def _split_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """A member's (sample name, suffix), split as webdataset's reader splits them."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


class ShardReader:
    """The samples of ``shards`` by row (their sorted keys); pickles without its tables."""

    def __init__(self, shards: ShardSet):
        order = np.argsort(shards.firsts, kind="stable")  # consecutive keys, in key order
        self.paths = [shards.paths[i] for i in order]
        self.ends = np.cumsum([shards.counts[i] for i in order])  # row after each shard's last
        self._tables: dict[int, list] = {}

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "ends": self.ends, "_tables": {}}

    def _table(self, shard: int) -> list:
        """[(sample name, {suffix: (offset, size)})] of one shard, in the order written."""
        if shard not in self._tables:
            samples: dict[str, dict] = {}
            try:
                with tarfile.open(self.paths[shard], "r:") as tar:
                    for member in tar:
                        name, suffix = _split_name(member.name)
                        if member.isreg() and name is not None:
                            samples.setdefault(name, {})[suffix.lower()] = (
                                member.offset_data,
                                member.size,
                            )
            except (OSError, tarfile.TarError) as err:
                raise ShardError(
                    f"{self.paths[shard]}: cannot be read as a tar ({err}); copy or pack it again"
                ) from None
            table = list(samples.items())
            expected = self.ends[shard] - (self.ends[shard - 1] if shard else 0)
            if len(table) != expected:
                raise ShardError(
                    f"{self.paths[shard]} holds {len(table)} samples, its index "
                    f"says {expected}: copy or pack it again"
                )
            self._tables[shard] = table
        return self._tables[shard]

    def locate(self, row: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.ends, row, side="right"))
        return shard, row - (int(self.ends[shard - 1]) if shard else 0)

    def members(self, row: int) -> dict:
        """The members (suffix -> bytes, ``__key__``) of the sample at ``row``."""
        shard, position = self.locate(row)
        name, places = self._table(shard)[position]
        with open(self.paths[shard], "rb") as handle:
            return {"__key__": name, **_read(handle, places)}

    def sample(self, row: int, methods=None) -> ShardSample:
        shard, _ = self.locate(row)
        return decode_sample(self.members(row), self.paths[shard].name, methods)

    def keys(self) -> list[str]:
        """Every sample's key, in row order (the key members only are read)."""
        keys = []
        for shard, path in enumerate(self.paths):
            with open(path, "rb") as handle:
                for _, places in self._table(shard):
                    keys.append(_read(handle, places, (KEY,))[KEY].decode("utf-8"))
        return keys


def _read(handle, places: dict, only=None) -> dict:
    members = {}
    for suffix, (offset, size) in places.items():
        if only is None or suffix in only:
            handle.seek(offset)
            members[suffix] = handle.read(size)
    return members


def shard_keys(shards: ShardSet) -> list[str]:
    """The sorted keys of the images in ``shards``; ShardError when they are not (shards of two
    packs, or a damaged one)."""
    keys = ShardReader(shards).keys()
    for before, after in zip(keys, keys[1:]):
        if not before < after:
            raise ShardError(
                f"the shards' keys are not sorted and unique ({before!r} before "
                f"{after!r}): shards of several packs?"
            )
    return keys


class ShardImages(Dataset):
    """``map_inputs.DecodedImages`` over shards: row -> (row, uint8 [224, 224, 3] tensor (the
    device payload with ``on_device``) or None, failure reason or None, identity (unknown: no
    file to stat)). A sample whose checksum fails is an error (damage), an image that does not
    decode a failure record."""

    def __init__(self, shards: ShardSet, keys: list[str], on_device: str = ""):
        check_on_device(on_device)
        self.reader = ShardReader(shards)
        self.keys = keys
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, row: int):
        sample = self.reader.sample(row, methods=())
        if sample.key != self.keys[row]:
            raise ShardError(
                f"{sample.where}: found at row {row}, where {self.keys[row]} was "
                "listed: the shards changed since they were listed; rerun"
            )
        identity = (UNKNOWN, UNKNOWN)
        return image_item(row, lambda: sample.image, sample.where, identity, self.on_device)
