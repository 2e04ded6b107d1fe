"""One rank of `attg-eval knn` then `attg-eval linprobe` under torchrun, in one launch and one
process group (see tests/test_eval_ddp.py): ``torchrun eval_ranks.py KNN_ARGS -- PROBE_ARGS``."""

import gc
import sys

import torch
import torch.distributed as dist

from attgmae.cli.eval import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    argv = sys.argv[1:]
    cut = argv.index("--")
    dist.init_process_group("gloo")  # the commands use it and leave it (one rendezvous)
    code = main(argv[:cut]) or main(argv[cut + 1 :])
    gc.collect()  # as attgmae.core.distributed.cleanup: DDP wrappers freed before the group
    dist.destroy_process_group()
    sys.exit(code)
