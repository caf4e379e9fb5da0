"""w2vkit: wav2vec 2.0 self-supervised pretraining, from raw audio to speech representations.

```python
import w2vkit

model = w2vkit.load_model("wav2vec_small.pt")  # fairseq .pt, HF directory or w2vkit checkpoint
features = w2vkit.embed_file(model, "speech.flac", layer=6)  # (T, D) numpy
```

`from w2vkit import Wav2Vec2Model, ModelConfig` for the model itself. Imported lazily so that
data-only commands (`w2vkit manifest`) do not pay for building the model code.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Wav2Vec2Model", "embed_file", "load_model"]

_LAZY = {
    "Wav2Vec2Model": "w2vkit.model.wav2vec2",
    "ModelConfig": "w2vkit.model.config",
    "load_model": "w2vkit.interop",
    "embed_file": "w2vkit.embed.utterance",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'w2vkit' has no attribute {name!r}")
