"""HuBERT pretraining: frame labels from k-means (`w2vkit targets`), the masked-prediction model
and loss (fairseq's `hubert` model and criterion)."""
