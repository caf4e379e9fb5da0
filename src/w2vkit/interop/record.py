"""`ModelRecord`: what every reader in `interop` returns, whatever the file's format.

A record is weights in w2vkit's names plus what is needed to rebuild and feed the model: its
config, the input normalisation it was trained with, and for a fine-tuned model its vocabulary.
`kind` says which model the weights are of; `w2vkit.interop.build` turns a record into a module
with the head asked for (`heads.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from w2vkit.data.vocab import Vocabulary
from w2vkit.model.config import ModelConfig

ENCODER_PREFIX = "wav2vec2."
"""Where a CTC model (`Wav2Vec2ForCTC`, HF's layout) keeps its encoder's tensors."""


@dataclass
class ModelRecord:
    """A model read from any supported format, in w2vkit's names."""

    cfg: ModelConfig
    state_dict: dict[str, Tensor]
    """Keys of the module `kind` names: `Wav2Vec2Model`'s for "pretraining" (pretraining heads
    possibly absent: an encoder-only import), `Wav2Vec2ForCTC`'s for "ctc"."""
    normalize: bool | None = None
    """Per-utterance input normalisation the model was trained with; None = not recorded."""
    vocab: Vocabulary | None = None
    """The output symbols of a fine-tuned model, row for row; None for a pretrained one."""
    kind: str = "pretraining"
    """What the weights are: "pretraining" (a `Wav2Vec2Model`) or "ctc" (a `Wav2Vec2ForCTC`); the
    head `build` makes when none is asked for."""
    final_dropout_prob: float = 0.0
    """Dropout before a CTC output layer (fine-tuned models)."""

    def encoder_state(self) -> dict[str, Tensor]:
        """The `Wav2Vec2Model` tensors: the whole state of a pretrained model, the encoder of a
        fine-tuned one (its output layer left out)."""
        if self.kind != "ctc":
            return self.state_dict
        return {
            k.removeprefix(ENCODER_PREFIX): v
            for k, v in self.state_dict.items()
            if k.startswith(ENCODER_PREFIX)
        }


__all__ = ["ENCODER_PREFIX", "ModelRecord"]
