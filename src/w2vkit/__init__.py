"""w2vkit: wav2vec 2.0 self-supervised pretraining, from raw audio to speech representations.

```python
import w2vkit

model = w2vkit.load_model("wav2vec_small.pt")  # fairseq .pt, HF directory or w2vkit checkpoint
features = w2vkit.embed_file(model, "speech.flac", layer=6)  # (T, D) numpy
```

`w2vkit.load_model` is the one way to read a model from a file: any format `w2vkit convert` reads,
a fine-tuned one as a `Wav2Vec2ForCTC` (`head="encoder"` for its encoder alone). `from w2vkit
import Wav2Vec2Model, Wav2Vec2ForCTC, ModelConfig` for the models themselves. Imported lazily so that
data-only commands (`w2vkit manifest`) do not pay for building the model code.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Wav2Vec2ForCTC", "Wav2Vec2Model", "embed_file", "load_model"]

_LAZY = {
    "Wav2Vec2Model": "w2vkit.model.wav2vec2",
    "Wav2Vec2ForCTC": "w2vkit.model.ctc",
    "ModelConfig": "w2vkit.model.config",
    "load_model": "w2vkit.interop",
    "embed_file": "w2vkit.features.utterance",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'w2vkit' has no attribute {name!r}")
