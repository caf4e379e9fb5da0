"""The wav2vec 2.0 objective (`objective: wav2vec2`): fairseq's `wav2vec` criterion (Eq. 2-4, Sec. 3.2).

loss = sum over masked frames of InfoNCE cross-entropy
     + diversity_weight * (G*V - prob_perplexity) / (G*V) * N
     + feature_penalty_weight * mean(z**2) * N
Everything is summed over the N masked frames; the trainer divides by the global sum of N over
ranks and accumulation steps, once per update, which makes the update a per-masked-frame mean.

`pretraining_objective` is this criterion as the training loop's `Objective`: the step (the
Gumbel temperature of the update, the forward, the loss, the logged sums, all left on the device)
and `summarize`, fairseq's `reduce_metrics`. Logged keys: `loss` (bits per masked frame = sum loss /
sum sample_size / ln 2), `loss_0` contrastive, `loss_1` diversity, `loss_2` feature penalty (same
scaling; a part with weight 0 is not logged, as fairseq), `accuracy` (= correct / count),
`negatives_equal_positive` (fraction of negatives identical to their positive, which are no
distractors: a high value makes the task trivial), `prob_perplexity`, `code_perplexity`, `temp`
(averaged over micro-batches).

`WAV2VEC2` is its registry entry: the model with its pretraining heads, the health monitor on every
train log line, the console columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.config import check
from w2vkit.data.collate import Batch
from w2vkit.model.config import QuantizerConfig
from w2vkit.model.wav2vec2 import PretrainOutput, Wav2Vec2Model
from w2vkit.pretrain.config import PretrainConfig
from w2vkit.pretrain.objective import PretrainObjective
from w2vkit.pretrain.schedule import gumbel_temperature
from w2vkit.pretrain.wav2vec2_health import monitor_for
from w2vkit.train.metrics import LOOP_COLUMNS, Column, Value
from w2vkit.train.state import Objective, StepOutput

LOSS_KEYS = ("loss", "loss_0", "loss_1", "loss_2")
"""Summed losses that `summarize` reports in bits per masked frame."""


@dataclass(kw_only=True)
class LossConfig:
    """Weights of the extra terms of the pretraining loss (fairseq `criterion.loss_weights`)."""

    diversity_weight: float = 0.1
    """alpha in Eq. (2): codebook diversity penalty."""
    feature_penalty_weight: float = 10.0
    """L2 penalty on the conv features; 0 for LARGE LV-60."""

    def __post_init__(self) -> None:
        check(
            self.diversity_weight >= 0,
            "loss.diversity_weight",
            f"must be >= 0, got {self.diversity_weight}",
        )
        check(
            self.feature_penalty_weight >= 0,
            "loss.feature_penalty_weight",
            f"must be >= 0, got {self.feature_penalty_weight}",
        )


@dataclass(kw_only=True)
class Wav2Vec2PretrainConfig(PretrainConfig):
    """A wav2vec 2.0 pretraining run; the defaults reproduce fairseq's BASE LibriSpeech recipe."""

    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class LossTerms:
    loss: Tensor
    """Summed objective to backpropagate (not yet divided by sample_size)."""
    contrastive: Tensor
    diversity: Tensor
    """Weighted and N-scaled diversity term (fairseq logs it as loss_1)."""
    feature_penalty: Tensor
    """Weighted and N-scaled feature penalty (fairseq loss_2)."""
    sample_size: int
    """N, the masked frames scored."""
    num_correct: Tensor
    """fairseq's accuracy numerator (0-dim, long, on the logits' device: no host sync)."""
    num_count: int
    num_negatives_equal: Tensor
    """Negatives identical to their positive (-inf logits, no distractor): 0-dim long tensor."""
    num_negatives: int
    prob_perplexity: Tensor
    """Detached (0-dim); 0 without a quantizer. So is `code_perplexity`."""
    code_perplexity: Tensor
    temperature: float

    @property
    def accuracy(self) -> float:
        return float(self.num_correct) / max(self.num_count, 1)


def contrastive_loss(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive at column 0, summed over rows. logits (N, 1+K) -> scalar."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="sum")


def diversity_loss(prob_perplexity: Tensor, num_vars: int) -> Tensor:
    """(G*V - perplexity) / (G*V): 0 when every codebook entry is used equally (Eq. 4)."""
    return (num_vars - prob_perplexity) / num_vars


def num_correct(logits: Tensor) -> Tensor:
    """fairseq's count: rows whose argmax is the positive, minus rows where all logits are equal.

    A 0-dim long tensor on the logits' device."""
    with torch.no_grad():
        best = logits.argmax(-1) == 0
        # argmax and argmin are both 0 only when every logit in the row ties.
        tied = best & (logits.argmin(-1) == 0)
        return best.sum() - tied.sum()


def contrastive_accuracy(logits: Tensor) -> tuple[int, int]:
    """(correct, rows) as Python ints (copies to the host)."""
    return int(num_correct(logits)), logits.shape[0]


def pretraining_loss(
    output: PretrainOutput, *, diversity_weight: float = 0.1, feature_penalty_weight: float = 10.0
) -> LossTerms:
    sample_size = output.logits.shape[0]
    contrastive = contrastive_loss(output.logits)
    zero = contrastive.new_zeros(())
    diversity = zero
    if diversity_weight != 0 and output.prob_perplexity is not None:
        diversity = (
            diversity_weight
            * diversity_loss(output.prob_perplexity.float(), output.num_vars)
            * sample_size
        )
    penalty = zero
    if feature_penalty_weight != 0:
        penalty = feature_penalty_weight * output.features_penalty.float() * sample_size
    return LossTerms(
        loss=contrastive + diversity + penalty,
        contrastive=contrastive,
        diversity=diversity,
        feature_penalty=penalty,
        sample_size=sample_size,
        num_correct=num_correct(output.logits),
        num_count=sample_size,
        num_negatives_equal=torch.isneginf(output.logits[:, 1:]).sum(),
        num_negatives=output.logits[:, 1:].numel(),
        prob_perplexity=_detached_or_zero(output.prob_perplexity, zero),
        code_perplexity=_detached_or_zero(output.code_perplexity, zero),
        temperature=output.temperature,
    )


def _detached_or_zero(value: Tensor | None, zero: Tensor) -> Tensor:
    return zero if value is None else value.detach()


def logged_sums(
    terms: LossTerms, *, diversity_weight: float, feature_penalty_weight: float, quantized: bool
) -> dict[str, Value]:
    """The criterion's summed log values of one micro-batch (tensors, detached, on the device).

    fairseq logs a part only when its weight is non-zero: loss_1 diversity (with a quantizer),
    loss_2 feature penalty. The loop adds `loss` and `sample_size`.
    """
    sums: dict[str, Value] = {
        "loss_0": terms.contrastive.detach(),
        "correct": terms.num_correct,
        "count": terms.num_count,
        "negatives_equal": terms.num_negatives_equal,
        "negatives": terms.num_negatives,
    }
    if diversity_weight and quantized:
        sums["loss_1"] = terms.diversity.detach()
    if feature_penalty_weight:
        sums["loss_2"] = terms.feature_penalty.detach()
    return sums


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """fairseq's wav2vec `reduce_metrics`: losses in bits per masked frame, accuracy over counted rows."""
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    out = {key: sums[key] / sample_size / math.log(2) for key in LOSS_KEYS if key in sums}
    if sums.get("count"):
        out["accuracy"] = sums["correct"] / sums["count"]
    if sums.get("negatives"):
        out["negatives_equal_positive"] = sums["negatives_equal"] / sums["negatives"]
    out["sample_size"] = sums.get("sample_size", 0.0)
    return out


def logit_spread(output: PretrainOutput) -> dict[str, Value]:
    """`train.diagnostics`: where the positive stands among the negatives (device tensors).

    `logit_pos` / `logit_neg` are the mean positive / negative logit (cosine / logit temperature;
    negatives equal to their positive, at -inf, left out), `logit_neg_max` the mean of each row's
    largest negative: at chance the three meet. `feature_rms`: the RMS of the conv features that
    reach the quantizer (sqrt of the feature penalty's mean square)."""
    logits = output.logits.detach().float()  # (N, 1+K)
    negatives = logits[:, 1:]
    finite = torch.isfinite(negatives)
    return {
        "logit_pos": logits[:, 0].mean(),
        "logit_neg": negatives.where(finite, 0.0).sum() / finite.sum().clamp(min=1),
        "logit_neg_max": negatives.amax(dim=1).clamp(min=-1e4).mean(),
        "feature_rms": output.features_penalty.detach().float().sqrt(),
    }


def pretraining_objective(
    weights: LossConfig,
    quantizer: QuantizerConfig,
    *,
    nominal_steps: int = 0,
    diagnostics: bool = False,
) -> Objective[Batch]:
    """The training loop's Objective for wav2vec 2.0 pretraining (validation: the same step).

    A time budget's plan fits the Gumbel temperature schedule to it: update k then gets the
    temperature of update `progress(k) * nominal_steps` of the configured schedule (`progress`: the
    plan's share of the run done, 1 at its end), so the temperature reaches a value at the same
    fraction of the run as with `nominal_steps` updates (the config's LR schedule length), and
    follows a re-plan without a jump. Without `nominal_steps` the decay stays per update.

    `rescue` (`train.on_stuck=rescue`, `w2vkit.train.rescue`) applies the diagnosed change:
    at chance, the temperature anneals per update and no longer stretched to the plan, and each
    further such rescue doubles its pace (a stretched anneal kept a 7,000-update plan at 1.15 for
    thousands of updates: docs/convergence.md); a collapsed codebook doubles
    `loss.diversity_weight` (0 becomes 0.1). `diagnostics` adds `logit_spread` to the logged means.
    """
    progress: Callable[[int], float] | None = None
    anneal_pace = 0  # 0: the configured schedule; n: per update, 2**(n-1) times as fast
    diversity_weight = weights.diversity_weight

    def plan(run_progress: Callable[[int], float]) -> None:
        nonlocal progress
        progress = run_progress if nominal_steps > 0 and not anneal_pace else None

    def rescue(finding: str) -> str | None:
        nonlocal progress, anneal_pace, diversity_weight
        if finding == "loss_at_chance":
            anneal_pace, progress = anneal_pace + 1, None
            pace = 2 ** (anneal_pace - 1)
            return (
                f"Gumbel temperature annealed per update{f' x{pace}' if pace > 1 else ''} "
                f"(decay {quantizer.temperature_decay**pace:.6g}), not stretched to the plan"
            )
        if finding == "codebook_collapse":
            before, diversity_weight = diversity_weight, 2 * diversity_weight or 0.1
            return f"loss.diversity_weight {before:g} -> {diversity_weight:g}"
        return None

    def wav2vec_step(
        model: nn.Module, batch: Batch, step: int, generator: torch.Generator
    ) -> StepOutput:
        # `step` counts completed optimizer updates, not forwards: accumulation keeps the decay.
        at = progress(step) * nominal_steps if progress is not None else step
        temperature = gumbel_temperature(at * 2 ** max(anneal_pace - 1, 0), quantizer)
        output = model(batch.wav, batch.padding_mask, temperature=temperature, generator=generator)
        terms = pretraining_loss(
            output,
            diversity_weight=diversity_weight,
            feature_penalty_weight=weights.feature_penalty_weight,
        )
        quantized = output.prob_perplexity is not None
        means: dict[str, Value] = {}
        if quantized:
            means = {
                "prob_perplexity": terms.prob_perplexity,
                "code_perplexity": terms.code_perplexity,
                "temp": terms.temperature,
            }
        if diagnostics:
            means |= logit_spread(output)
        sums = logged_sums(
            terms,
            diversity_weight=diversity_weight,
            feature_penalty_weight=weights.feature_penalty_weight,
            quantized=quantized,
        )
        return StepOutput(loss=terms.loss, sample_size=terms.sample_size, sums=sums, means=means)

    return Objective(step=wav2vec_step, summarize=summarize, plan=plan, rescue=rescue)


def _objective(cfg: Wav2Vec2PretrainConfig) -> Objective:
    """The criterion with its temperature fitted to the run's length."""
    return pretraining_objective(
        cfg.loss,
        cfg.model.quantizer,
        nominal_steps=cfg.total_steps,
        diagnostics=cfg.train.diagnostics,
    )


def _model(cfg: Any) -> Wav2Vec2Model:
    return Wav2Vec2Model.from_config(cfg.model)


CONSOLE_COLUMNS = (
    Column("loss", "loss", ".3f"),
    Column("loss_0", "contrast", ".3f"),
    Column("loss_1", "diverse", ".3f"),
    Column("loss_2", "penalty", ".3f"),
    Column("accuracy", "accuracy", ".3f"),
    Column("prob_perplexity", "prob_ppl", ".1f"),
    Column("code_perplexity", "code_ppl", ".1f"),
    *LOOP_COLUMNS,
)
"""The console table of a wav2vec 2.0 run on a terminal (losses in bits per masked frame)."""

WAV2VEC2 = PretrainObjective(
    name="wav2vec2",
    config=Wav2Vec2PretrainConfig,
    new_model=_model,
    objective=_objective,
    columns=CONSOLE_COLUMNS,
    health=monitor_for,
)

__all__ = [
    "CONSOLE_COLUMNS",
    "LOSS_KEYS",
    "LossConfig",
    "LossTerms",
    "contrastive_accuracy",
    "contrastive_loss",
    "diversity_loss",
    "logged_sums",
    "logit_spread",
    "num_correct",
    "pretraining_loss",
    "pretraining_objective",
    "summarize",
    "WAV2VEC2",
    "Wav2Vec2PretrainConfig",
]
