"""``attg-train`` on tar shards: every rank and loader worker streams its own shards.

The order of an epoch is a pure function of (seed, epoch, world size, loader workers, batch
size, shuffle buffer):

1. the shards are put in the epoch's order (``shard_order``, seeded by (seed, epoch));
2. with T = ranks x workers streams and m = S // T shards each, rank r takes every W-th of the
   first m * T shards from r, and its logical worker w every K-th of those from w: no shard is
   read twice, and the S mod T shards left over change from epoch to epoch;
3. each stream reads its shards in turn (webdataset's tar reader) through webdataset's shuffle
   buffer (``--shuffle_buffer`` samples, filled before the first is drawn, seeded by (seed,
   epoch, rank, worker)), and yields ``quota`` samples: the same for every stream, a multiple of
   the batch size (the sum of the m smallest shards' counts, rounded down), so that every rank
   runs the same number of iterations and each loader worker's batches are whole;
4. the DataLoader takes batch j from worker j mod K; every random choice of a sample comes from
   (seed, epoch, index) with index its position in the sorted key list, recorded in the shard,
   as for images from a folder (``pretrain_dataset.augmented_sample``).

Resuming at iteration s of an epoch: DataLoader worker w plays logical stream (w + s) mod K, so
the first batch comes from the stream the uninterrupted run would have used, and each stream
skips the samples of its batches among the first s, read but not decoded. Exact as long as the
world size, workers, batch size and buffer are those of the interrupted run.
"""

from __future__ import annotations

import random
import tarfile
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from attgmae.core.errors import InputError
from attgmae.data.images import ImageDecodeError, decode_rgb_bytes
from attgmae.data.pretrain_dataset import BadImageError, augmented_sample
from attgmae.data.shard_access import ShardReader
from attgmae.data.shards import ShardError, ShardSample, ShardSet, decode_sample
from attgmae.data.transforms import JointTransform

_ORDER_TAG, _SHUFFLE_TAG = 0x5A4D, 0x5B0F  # keep these seeds apart from the samples' own


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of the shards."""
    return np.random.default_rng([seed, epoch, _ORDER_TAG]).permutation(num_shards)


@dataclass(frozen=True)
class StreamPlan:
    world_size: int
    workers: int  # logical streams per rank (the loader's workers, 1 for none)
    batch_size: int
    shards_per_stream: int
    quota: int  # samples each stream yields per epoch

    @property
    def iters_per_epoch(self) -> int:
        return self.workers * self.quota // self.batch_size

    def streams(self, order: np.ndarray, rank: int, worker: int) -> list[int]:
        """The shards of one stream in an epoch of shard order ``order``."""
        used = order[: self.shards_per_stream * self.world_size * self.workers]
        return [int(s) for s in used[rank :: self.world_size][worker :: self.workers]]


def plan_streams(counts, world_size: int, workers: int, batch_size: int) -> StreamPlan:
    """The split of shards with ``counts`` samples; InputError when they cannot feed them."""
    streams = world_size * workers
    per_stream = len(counts) // streams
    if per_stream == 0:
        raise InputError(
            f"{len(counts)} shards cannot feed {world_size} rank(s) x {workers} loader "
            f"worker(s) ({streams} streams, one shard or more each): lower --num_workers, or "
            "pack with a smaller --shard_size"
        )
    quota = int(sum(sorted(counts)[:per_stream])) // batch_size * batch_size
    if quota == 0:
        raise InputError(
            f"--batch_size {batch_size} is larger than the {per_stream} shard(s) each of the "
            f"{streams} streams (ranks x loader workers) reads: lower it or --num_workers"
        )
    return StreamPlan(world_size, workers, batch_size, per_stream, quota)


class ShardTrainStream(IterableDataset):
    """The samples of one rank, as ``PretrainDataset`` makes them, streamed from shards.

    ``set_epoch(epoch, start)`` as ``EpochSampler``'s (``start``: this rank's samples already
    drawn this epoch); ``len`` and ``stream[(row, epoch)]`` read one sample by its row in the
    shards' key order (the reconstruction figures)."""

    def __init__(
        self,
        shards: ShardSet,
        plan: StreamPlan,
        rank: int,
        transform: JointTransform,
        num_patches: int,
        guidance: str,
        method,
        seed: int,
        shuffle_buffer: int,
        skip_bad_images: bool = False,
    ):
        self.urls = [str(path) for path in shards.paths]
        self.reader = ShardReader(shards)
        self.plan, self.rank = plan, rank
        self.transform, self.num_patches = transform, num_patches
        self.guidance, self.method = guidance, method
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.skip_bad_images = skip_bad_images
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start_step = epoch, start // self.plan.batch_size

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item):
        row, epoch = item if isinstance(item, tuple) else (item, 0)
        shard, _ = self.reader.locate(row)
        sample = decode_sample(self.reader.members(row), self.urls[shard], self._maps())
        return self._augment(sample, epoch)

    def _maps(self):
        return [self.method] if self.guidance == "store" else []

    def _augment(self, sample: ShardSample, epoch: int, substitute=None) -> dict:
        """The training sample of ``sample`` (its generator from its index), its image and map
        those of ``substitute`` when its own image does not decode (--skip_bad_images)."""
        rng = np.random.default_rng([self.seed, epoch, sample.index])
        source, bad = (sample, "") if substitute is None else (substitute, sample.key)
        image = decode_rgb_bytes(source.image, source.where)
        return augmented_sample(
            image,
            rng,
            self.transform,
            self.num_patches,
            self.guidance,
            source.maps.get(self.method),
            source.index,
            bad,
        )

    def logical_stream(self) -> int:
        """This loader worker's stream: worker w plays (w + resumed iterations) mod K."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.plan.workers:
            raise RuntimeError(f"planned for {self.plan.workers} workers, run by {workers}")
        return (worker + self.start_step) % workers

    def raw_samples(self, stream: int):
        """The members of the samples of ``stream`` this epoch, shuffled, ``quota`` of them."""
        from webdataset.filters import shuffle
        from webdataset.tariterators import tarfile_samples

        order = shard_order(len(self.urls), self.seed, self.epoch)
        shards = self.plan.streams(order, self.rank, stream)
        seed = np.random.SeedSequence([self.seed, self.epoch, self.rank, stream, _SHUFFLE_TAG])
        rng = random.Random(int(seed.generate_state(1)[0]))
        raw = tarfile_samples([{"url": self.urls[s]} for s in shards])
        mixed = shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(raw)
        count = 0
        try:
            for members in mixed:
                if count == self.plan.quota:
                    return
                yield members
                count += 1
        except ShardError:
            raise
        except (OSError, ValueError, tarfile.TarError) as err:
            names = ", ".join(self.urls[s] for s in shards)
            raise ShardError(
                f"cannot read the shards {names} ({err}); copy or pack them again"
            ) from None
        if count < self.plan.quota:
            raise ShardError(
                f"the shards {', '.join(self.urls[s] for s in shards)} hold fewer "
                "samples than their index says: copy or pack them again"
            )

    def __iter__(self):
        stream = self.logical_stream()
        workers = self.plan.workers
        skip = max(0, (self.start_step - stream + workers - 1) // workers) * self.plan.batch_size
        good, waiting = None, []  # bad images waiting for a good one to stand in
        for count, members in enumerate(self.raw_samples(stream)):
            if count < skip:
                continue  # drawn before the resume: read, not decoded
            sample = decode_sample(members, members.get("__url__", "?"), self._maps())
            try:
                item = self._augment(sample, self.epoch)
            except ImageDecodeError as err:
                if not self.skip_bad_images:
                    raise BadImageError(
                        f"cannot decode training image {err.path}: {err.reason}. Pack the "
                        "shards again without it, or pass --skip_bad_images to skip and "
                        "count such images."
                    ) from None
                if good is None:  # none decoded yet in this stream: the next good one stands in
                    waiting.append(sample)
                    continue
                item = self._augment(sample, self.epoch, substitute=good)
            else:
                good = sample
            for bad in waiting:
                yield self._augment(bad, self.epoch, substitute=good)
            waiting = []
            yield item
        if waiting:
            raise BadImageError(f"no image in the stream from {waiting[0].where} decodes")
