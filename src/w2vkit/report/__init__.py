"""`w2vkit report`: training curves, codebook usage, probe results and health findings as HTML/Markdown with PNGs."""
