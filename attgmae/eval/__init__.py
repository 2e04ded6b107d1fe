"""attgmae.eval: frozen-encoder evaluation (k-NN, linear probe, few-shot, LARS).

Protocols are pure functions on tensors (``knn``, ``linprobe``, ``fewshot``, ``lars``); loading
the encoder (``encoder``), extracting and caching features (``features``) and writing results
(``report``) are separate modules.
"""
