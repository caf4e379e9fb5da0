"""CTC fine-tuning of wav2vec 2.0 encoders: labels, model, objective, decoding, n-gram LMs."""
