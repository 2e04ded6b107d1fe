"""Tar shards of images with their maps, as the webdataset library writes and reads them.

One sample is one training image with all that training needs, its members named
``NNNNNNNNNN.<suffix>`` where NNNNNNNNNN is the image's position in the sorted key list (ten
digits: a webdataset sample name may hold no dot, and keys do):

    NNNNNNNNNN.<ext>           the image file's original bytes (its extension, lower case)
    NNNNNNNNNN.<method>.npy    its 14x14 map (float16 ``.npy``) from each store, by method
    NNNNNNNNNN.key.txt         its key, the path relative to the image folder
    NNNNNNNNNN.cls             its label: class index of its first folder (``folder_labels``)
    NNNNNNNNNN.sha256.json     the sha256 of each member above, checked whenever it is read

``attg-maps pack`` writes them (``pipelines/pack.py``) with the samples in key order, and an
index beside them, ``<prefix>index.json`` for shards ``<prefix>NNNNNN.tar``: each shard's file,
first sample and count, the keys' digest, the stores' identities and what the join counted.
Training and ``attg-maps generate`` read the index for the sample count without opening a tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attgmae.core.constants import MAP_GRID
from attgmae.core.errors import InputError
from attgmae.core.listing import IMAGE_EXTENSIONS

SHARDS_FORMAT = "attgmae-shards"
SHARDS_VERSION = 1
KEY, LABEL, CHECKSUMS = "key.txt", "cls", "sha256.json"
NAME_DIGITS = 10
IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


class ShardError(InputError):
    """A shard or shard index that cannot be used: missing, damaged, or of another pack."""


def sample_name(index: int) -> str:
    return f"{index:0{NAME_DIGITS}d}"


def map_member(method: str) -> str:
    return f"{method}.npy"


def check_method(method: str, where) -> str:
    """A store's method as a member name: no dot or slash, not a name taken by another member."""
    if not re.fullmatch(r"[a-z0-9_-]+", method or "") or method.lower() in IMAGE_SUFFIXES:
        raise ShardError(
            f"{where}: its method {method!r} cannot name a map in a shard (lower-case letters, "
            "digits, '_' and '-' only, not an image extension)"
        )
    return method


def map_bytes(maps16: np.ndarray) -> bytes:
    """One float16 [14, 14] map as ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(maps16, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


def encode_sample(index: int, key: str, label: int, image: bytes, maps: dict) -> dict:
    """The members of one sample (``ShardWriter.write``'s dict, every value bytes): ``maps``
    {method: float16 [14, 14]}."""
    ext = Path(key).suffix.lower().lstrip(".")
    members = {ext: image, KEY: key.encode("utf-8"), LABEL: str(int(label)).encode("ascii")}
    members.update({map_member(m): map_bytes(v) for m, v in maps.items()})
    digests = {name: hashlib.sha256(value).hexdigest() for name, value in members.items()}
    members[CHECKSUMS] = json.dumps(digests, sort_keys=True).encode("ascii")
    return {"__key__": sample_name(index), **members}


@dataclass
class ShardSample:
    """One sample read back, its checksums checked."""

    index: int  # position in the sorted key list (the seed of its augmentation)
    key: str
    label: int
    image: bytes  # the image file's original bytes
    where: str  # shard and key, for messages
    maps: dict = field(default_factory=dict)  # {method: float16 [14, 14]}


def decode_sample(members: dict, where: str, methods=None) -> ShardSample:
    """Members of one sample (suffix -> bytes, ``__key__`` its name) -> ShardSample; ShardError
    naming the shard and sample when a member is missing or differs from its checksum.
    ``methods``: the maps to decode (default all)."""
    name = str(members.get("__key__", "?")).rsplit("/", 1)[-1]
    here = f"{where}: sample {name}"
    try:
        digests = json.loads(members[CHECKSUMS])
    except (KeyError, ValueError):
        raise ShardError(
            f"{here} has no readable {CHECKSUMS}: not a shard `attg-maps pack` "
            "wrote, or a damaged one; pack it again"
        ) from None
    for member, digest in digests.items():
        value = members.get(member)
        if value is None or hashlib.sha256(value).hexdigest() != digest:
            what = "is missing" if value is None else "differs from its checksum"
            raise ShardError(
                f"{here}: its {member} {what}: the shard is damaged; copy or pack it again"
            )
    key = members[KEY].decode("utf-8")
    ext = Path(key).suffix.lower().lstrip(".")
    if not name.isdigit() or ext not in digests:
        raise ShardError(f"{here} ({key}): not a sample `attg-maps pack` wrote")
    sample = ShardSample(int(name), key, int(members[LABEL]), members[ext], f"{where}: {key}")
    wanted = [m[: -len(".npy")] for m in digests if m.endswith(".npy")]
    for method in wanted if methods is None else methods:
        if map_member(method) not in members:
            raise ShardError(
                f"{here} ({key}) holds no {method} map (it holds: {', '.join(wanted) or 'none'})"
            )
        grid = np.load(io.BytesIO(members[map_member(method)]), allow_pickle=False)
        if grid.shape != (MAP_GRID, MAP_GRID) or grid.dtype != np.float16:
            raise ShardError(f"{here} ({key}): its {method} map is {grid.dtype} {grid.shape}")
        sample.maps[method] = grid
    return sample


# ----------------------------------------------------------------------------- shard sets


def is_shard_source(path) -> bool:
    """Whether ``path`` names tar shards (a file, a brace pattern such as
    ``train-{000000..000099}.tar``, or several joined by ``::``) rather than a folder."""
    return str(path).endswith(".tar")


def expand_shards(pattern) -> list[str]:
    """The shard files a pattern names, as webdataset expands it (braces, ``::``)."""
    from webdataset.shardlists import expand_urls

    return expand_urls(str(pattern))


def index_path(pattern) -> Path:
    """``<prefix>index.json`` beside shards ``<prefix>NNNNNN.tar``: the pack's ``%06d``, the
    training's ``{000000..000099}`` or one shard's digits replaced by ``index``."""
    pattern = str(pattern).split("::")[0]
    folder, name = Path(pattern).parent, Path(pattern).name
    stem = re.sub(r"\.tar$", "", name)
    for placeholder in (r"\{[^}]*\}", r"%0?\d*d", r"\d+"):
        found = list(re.finditer(placeholder, stem))
        if found:
            last = found[-1]
            return folder / f"{stem[: last.start()]}index{stem[last.end() :]}.json"
    return folder / f"{stem}-index.json"


@dataclass
class ShardSet:
    """The shards a pattern names, with what their index says of them."""

    index: dict
    paths: list[Path]
    counts: list[int]
    firsts: list[int]  # position of each shard's first sample in the sorted key list

    @property
    def num_samples(self) -> int:
        return int(sum(self.counts))

    @property
    def methods(self) -> list[str]:
        return [store["method"] for store in self.index["stores"]]

    def store(self, method: str) -> dict:
        for store in self.index["stores"]:
            if store["method"] == method:
                return store
        raise ShardError(
            f"the shards hold no {method} maps (they hold: "
            f"{', '.join(self.methods) or 'none'}); --maps names one of those"
        )


def open_shards(pattern) -> ShardSet:
    """The shards of ``pattern`` and their index; ShardError naming what is missing."""
    where = index_path(pattern)
    try:
        index = json.loads(where.read_text())
    except FileNotFoundError:
        raise ShardError(
            f"{where} not found: shards are read with the index `attg-maps pack` "
            "writes beside them (pack them with it)"
        ) from None
    except (OSError, ValueError) as err:
        raise ShardError(f"{where} cannot be read ({err}); pack the shards again") from None
    if index.get("format") != SHARDS_FORMAT or index.get("version") != SHARDS_VERSION:
        raise ShardError(
            f"{where}: not an index of `attg-maps pack` (format "
            f"{index.get('format')} {index.get('version')})"
        )
    listed = {entry["file"]: entry for entry in index["shards"]}
    paths, counts, firsts = [], [], []
    for url in expand_shards(pattern):
        entry = listed.get(Path(url).name)
        if entry is None or Path(url).parent != where.parent:
            raise ShardError(f"{url} is not one of the shards {where} lists")
        if not Path(url).is_file():
            raise ShardError(f"{url} not found (listed in {where})")
        paths.append(Path(url))
        counts.append(int(entry["count"]))
        firsts.append(int(entry["first"]))
    if not paths:
        raise ShardError(f"{pattern} names no shard")
    return ShardSet(index, paths, counts, firsts)
