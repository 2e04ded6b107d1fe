"""attgmae.maps: one module per guidance-map method; a batch of images in, [B, 14, 14] in [0, 1]
out. ``registry`` describes every method as data; ``compute`` dispatches a batch through it.
Submodules are imported on use: the registry must load fast for the command line, and the
TokenCut worker processes import ``ncut`` alone."""
