"""attgmae.maps: one module per guidance-map method; a batch of images in, [B, 14, 14] in [0, 1]
out. ``registry`` lists the methods as data; ``preprocess`` turns decoded images into the model
input. Submodules are imported on use (this package stays light for the TokenCut workers)."""
