"""Numbers several stages must agree on.

Nothing here imports torch: the command-line parsers read their defaults from this module (and
the config dataclasses built on it) without the seconds that loading torch takes."""

# Per-channel RGB statistics of ImageNet: every network here (DINO, ResNet-50, MAE) was trained
# on inputs normalized with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A guidance map is a 14 x 14 grid: one value per patch of a 224 x 224 image cut into 16 x 16
# patches (ViT-B/16 and ViT-L/16), the input size every map method sees.
MAP_INPUT_SIZE = 224
MAP_GRID = 14

# The flag (of every command that reads weights or checkpoints) that allows unpickling a file
# in full: attgmae.core.torchfile names it in its errors.
TRUST_FLAG = "--trust_checkpoint"

# How long a rank of a multi-process run waits at a collective for the slowest one. NCCL's
# default of 10 minutes can abort a long rank-0-only step (finalizing stores, the k-NN monitor).
DEFAULT_TIMEOUT_MIN = 60.0

# Forward precisions of the evaluation and fine-tuning commands (attgmae.core.device resolves
# "auto": bf16 autocast on CUDA, fp32 on CPU).
PRECISIONS = ("auto", "bf16", "fp32")

# The guidance temperature (attgmae.guidance): the default cosine's endpoints (ours: the paper
# does not publish them; docs/training.md says why these) and the masking-ratio ablation's
# constant (supplementary Sec. G, the paper's).
TAU_START, TAU_END = 1.0, 0.7
TAU_CONSTANT = 0.75
