"""attgmae.core: the small jobs every layer shares, each written once.

errors (the one user-facing error type and its exit code), files (atomic writes, sha256),
device (``auto``/``cpu``/``cuda``/``cuda:N``), distributed (torchrun / SLURM process groups),
provenance (software versions), constants (ImageNet mean/std, the 14x14 map grid), minmax (per-map
normalization), listing (image keys of a folder), identity (an image's size and mtime, to tell
when it was replaced), torchfile (reading and writing weights and checkpoints), lock (one writer
per output), outputs (claiming an output before any work: its path checked, its lock held by
rank 0), signals (SIGTERM / SIGUSR1: a flag the loops that resume answer by saving and exiting
75).

Nothing here imports another attgmae package, so every layer may import it; modules that need
torch import it at the top, the others (used by the store) stay free of it.
"""
