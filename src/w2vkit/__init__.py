"""w2vkit: wav2vec 2.0 self-supervised pretraining, from raw audio to speech representations.

`from w2vkit import Wav2Vec2Model, ModelConfig`. Imported lazily so that data-only commands
(`w2vkit manifest`) do not pay for building the model code.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Wav2Vec2Model"]


def __getattr__(name: str):
    if name == "Wav2Vec2Model":
        from w2vkit.model.wav2vec2 import Wav2Vec2Model

        return Wav2Vec2Model
    if name == "ModelConfig":
        from w2vkit.model.config import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'w2vkit' has no attribute {name!r}")
