"""attgmae.eval: encoder evaluation (k-NN, linear probe, few-shot, LARS, fine-tuning pieces).

Protocols are pure functions on tensors (``knn``, ``linprobe``, ``fewshot``, ``lars``); loading
the encoder (``attgmae.models.encoder``), extracting and caching features (``features``) and
writing results (``report``) are separate modules. For fine-tuning: ``lr_decay`` (MAE's
layer-wise lr decay groups, ``param_groups_lrd``), ``subsets`` (ImageNet 1% / 10% list files),
``finetune`` (loss, mixup, evaluation of a classifier) and ``finetune_model`` (the model to
fine-tune from any accepted checkpoint).
"""

from attgmae.eval.lr_decay import param_groups_lrd

__all__ = ["param_groups_lrd"]
