"""attgmae: attention-guided masked autoencoders (AttG, WACV 2025).

Stage 1 writes guidance maps (``attgmae.maps`` + ``attgmae.store``); stage 2 pretrains a guided
MAE (``attgmae.models``, ``attgmae.guidance``, ``attgmae.data``); ``attgmae.eval`` judges it.
"""

__version__ = "0.1.0"
