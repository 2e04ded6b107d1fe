"""Memory of the joined map table per rank and loader worker: each process's own copy (the join
every rank made before) vs one table per node, memory-mapped (``attgmae.data.shared_table``).

One command runs it all on CPU (not a test): a synthetic ImageNet-1k store (1,281,167 keys
like ``n01440764/n01440764_10026.JPEG``, written once into ``--work``), then three torchrun
launches of ``--ranks`` gloo ranks, each with ``--workers`` loader workers started by spawn
(Python 3.14's default; a spawned worker unpickles its own copy of what the dataset holds):

- ``copy``:   every rank joins the store itself (``join_maps``), as attg-train did;
- ``build``:  the node's table removed first: local rank 0 builds it, the others wait and map;
- ``reuse``:  the table is there: local rank 0 checks it (sizes, sha256), every rank maps it.

Every worker first reads the whole table (every map and key: what an epoch reads), so the
figures are those of a run in its steady state. Each process's private memory (USS:
Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) and proportional share (PSS) are read
while every process of the launch is alive, minus nothing; ``base`` is the rank's USS after
importing torch and joining the process group, before any data.

    python benchmarks/shared_table.py --work /tmp/attg-shared-bench
    python benchmarks/shared_table.py --work /tmp/b --keys 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from store import imagenet_like_keys, synthetic_maps
from torch.utils.data import DataLoader

from attgmae.core.distributed import barrier, init_distributed
from attgmae.data.pretrain_dataset import EpochSampler, PretrainDataset, join_maps
from attgmae.data.shared_table import open_node_table, table_folder
from attgmae.data.transforms import JointTransform
from attgmae.store import write_store

PHASES = ("copy", "build", "reuse")
GIB = 1024**3


def memory(pid="self") -> dict:
    """USS and PSS (bytes) of a process, and its peak resident size."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"uss": uss, "pss": fields.get("Pss", 0), "peak_rss": peak}


class ReadsEverything(PretrainDataset):
    """The training dataset, decoding no image (the store's keys have no files): its first item
    in each process reads every map and key, as an epoch would."""

    def _decode(self, index: int):
        return index, np.zeros((32, 32, 3), dtype=np.uint8), ""

    def __getitem__(self, item):
        if not getattr(self, "_read_all", False):  # every page of the maps, rows and keys
            maps = self.join.maps
            self._read_all = all(float(np.asarray(maps[a : a + 65536]).max()) >= 0
                                 for a in range(0, len(maps), 65536))  # fmt: skip
            self._read_all &= int(np.asarray(self.join.rows[:]).max()) >= -1
            self._read_all &= int(np.asarray(self.keys[:]).view(np.uint8).max()) > 0
        return super().__getitem__(item)


def make_store(work: Path, count: int) -> Path:
    store = work / "synthetic.zarr"
    if store.exists():
        return store
    keys = imagenet_like_keys(count)
    started = time.perf_counter()
    write_store(store, keys, synthetic_maps(count), method="synthetic")
    np.save(work / "keys.npy", np.char.encode(np.asarray(keys, dtype=str), "utf-8"))
    print(f"wrote {store} ({count} maps) in {time.perf_counter() - started:.0f} s", flush=True)
    return store


def load_keys(work: Path) -> np.ndarray:
    """The key list as the folder listing gives it (numpy str)."""
    return np.char.decode(np.load(work / "keys.npy"), "utf-8")


def rank_main(args) -> None:
    info = init_distributed(torch.device("cpu"))
    work = Path(args.work)
    store = work / "synthetic.zarr"
    base = memory()["uss"]
    barrier(info)
    started = time.perf_counter()
    if args.phase == "copy":
        keys = load_keys(work)
        join = join_maps(keys, store)
    else:
        join = open_node_table(lambda: load_keys(work), info, log=lambda m: None,
                               store_path=store)  # fmt: skip
        keys = join.keys
    setup_s = time.perf_counter() - started
    dataset = ReadsEverything(work, keys, JointTransform(32), 4, "store", join)
    barrier(info)
    loader = DataLoader(
        dataset, batch_size=8, sampler=EpochSampler(len(dataset), info.world_size, info.rank),
        num_workers=args.workers, multiprocessing_context="spawn", persistent_workers=True,
    )  # fmt: skip
    batches = iter(loader)
    for _ in range(2 * args.workers):  # each worker has made its first item: read everything
        next(batches)
    barrier(info)  # every process of the launch is alive and has read the table
    mine = {"rank": info.rank, "phase": args.phase, "setup_s": setup_s, "base_uss": base,
            **memory(), "workers": [memory(w.pid) for w in batches._workers]}  # fmt: skip
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, mine)
    barrier(info)
    if info.rank == 0:
        with open(work / f"result-{args.phase}.json", "w") as f:
            json.dump(gathered, f, indent=1)
    del batches
    torch.distributed.destroy_process_group()


def launch(args, phase: str) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(args.ranks), __file__, "--phase", phase, "--work", args.work,
               "--workers", str(args.workers)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    print(f"{phase}: launch took {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((Path(args.work) / f"result-{phase}.json").read_text())


def report(results: dict) -> str:
    def gib(value):
        return f"{value / GIB:.3f}"

    lines = ["| path | process | setup s | USS GiB | PSS GiB | peak RSS GiB | USS - base |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for phase, ranks in results.items():
        for entry in sorted(ranks, key=lambda e: e["rank"]):
            lines.append(f"| {phase} | rank {entry['rank']} | {entry['setup_s']:.1f} | "
                         f"{gib(entry['uss'])} | {gib(entry['pss'])} | "
                         f"{gib(entry['peak_rss'])} | {gib(entry['uss'] - entry['base_uss'])} |")
            for w, worker in enumerate(entry["workers"]):
                lines.append(f"| {phase} | rank {entry['rank']} worker {w} | | "
                             f"{gib(worker['uss'])} | {gib(worker['pss'])} | "
                             f"{gib(worker['peak_rss'])} | |")  # fmt: skip
    lines += ["", "| path | all processes: PSS GiB (the node's memory they hold) | USS GiB |",
              "|---|---|---|"]  # fmt: skip
    for phase, ranks in results.items():
        everyone = [*ranks, *(w for entry in ranks for w in entry["workers"])]
        lines.append(f"| {phase} | {gib(sum(e['pss'] for e in everyone))} | "
                     f"{gib(sum(e['uss'] for e in everyone))} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the store, table and results")
    parser.add_argument("--keys", type=int, default=1_281_167)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # a launched rank
    args = parser.parse_args()
    if args.phase:
        return rank_main(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = make_store(work, args.keys)
    results = {}
    for phase in PHASES:
        if phase == "build":  # the table of this store and key list, removed: built anew
            keys = load_keys(work)
            from attgmae.data.shared_table import built_from

            folder = table_folder(built_from(keys, store)[0])
            shutil.rmtree(folder, ignore_errors=True)
        results[phase] = launch(args, phase)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{args.ranks} gloo ranks x {args.workers} spawn workers, {args.keys} keys, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(report(results))


if __name__ == "__main__":
    main()
