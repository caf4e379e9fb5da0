"""`HubertConfig`: the HuBERT objective's own section (`hubert:` in a pretraining config).

Defaults are fairseq's `hubert_base_librispeech` recipe (Hsu et al., 2021, arXiv:2106.07447) with
the `hubert` criterion (masked prediction only, the feature penalty at weight 10), for labels of
the second iteration: 50 Hz, one per encoder frame (iteration 1's MFCC labels: 100 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from w2vkit.config import check
from w2vkit.data.config import DataConfig
from w2vkit.pretrain.config import PretrainConfig


@dataclass(kw_only=True)
class HubertConfig:
    """Frame targets, the prediction head and the loss weights of HuBERT pretraining."""

    num_classes: list[int] = field(default_factory=lambda: [100])
    """Classes of each label set (k of its k-means), one per `data.labels` file."""
    untie_final_proj: bool = True
    """One projection per label set (fairseq's BASE recipe); False shares one across sets."""
    pred_masked_weight: float = 1.0
    pred_nomask_weight: float = 0.0
    """Weights of the prediction losses on masked and unmasked frames (fairseq criterion)."""
    feature_penalty_weight: float = 10.0
    """fairseq `loss_weights: [10]`: the mean squared conv feature, times the scored frames."""

    def __post_init__(self) -> None:
        check(len(self.num_classes) >= 1, "hubert.num_classes", "needs at least one label set")
        check(
            all(int(k) >= 2 for k in self.num_classes),
            "hubert.num_classes",
            f"every label set needs >= 2 classes, got {self.num_classes}",
        )
        for name in ("pred_masked_weight", "pred_nomask_weight", "feature_penalty_weight"):
            check(getattr(self, name) >= 0, f"hubert.{name}", "must be >= 0")
        check(
            self.pred_masked_weight > 0 or self.pred_nomask_weight > 0,
            "hubert.pred_masked_weight",
            "pred_masked_weight and pred_nomask_weight are both 0: nothing to learn",
        )


@dataclass(kw_only=True)
class HubertPretrainConfig(PretrainConfig):
    """A HuBERT pretraining run: the wav2vec 2.0 run's sections plus `hubert`."""

    objective: str = "hubert"
    data: DataConfig = field(default_factory=lambda: DataConfig(labels=["km"]))
    """Labels from `<split>.km` beside each manifest by default (`w2vkit targets` writes them)."""
    hubert: HubertConfig = field(default_factory=HubertConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.objective == "hubert",
            "objective",
            f"a run with a hubert section trains objective hubert, got {self.objective!r}",
        )
        check(
            len(self.data.labels) == len(self.hubert.num_classes),
            "data.labels",
            f"objective hubert needs one label file name per hubert.num_classes entry "
            f"({len(self.hubert.num_classes)}), got {self.data.labels}",
        )


__all__ = ["HubertConfig", "HubertPretrainConfig"]
