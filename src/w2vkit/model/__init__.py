"""The wav2vec 2.0 model: one concept per module, each usable alone."""
