"""The fairseq wav2vec objective (fairseq `criterion/wav2vec_criterion.py`) on hand-built outputs."""

from __future__ import annotations

import math

import pytest
import torch

from w2vkit.model.negatives import contrastive_logits
from w2vkit.model.quantizer import GumbelVectorQuantizer
from w2vkit.model.wav2vec2 import PretrainOutput
from w2vkit.pretrain.wav2vec2 import contrastive_accuracy, diversity_loss, pretraining_loss


def _output(
    logits: torch.Tensor,
    *,
    prob_perplexity: float | None = 100.0,
    num_vars: int = 640,
    features_penalty: float = 0.0,
) -> PretrainOutput:
    n = logits.shape[0]
    return PretrainOutput(
        logits=logits,
        time_mask=torch.ones(1, n, dtype=torch.bool),
        frame_padding_mask=None,
        features_penalty=torch.tensor(features_penalty),
        prob_perplexity=None if prob_perplexity is None else torch.tensor(prob_perplexity),
        code_perplexity=None if prob_perplexity is None else torch.tensor(prob_perplexity / 2),
        num_vars=num_vars if prob_perplexity is not None else 0,
        temperature=1.5,
        negative_indices=torch.zeros(n, logits.shape[1] - 1, dtype=torch.long),
    )


@pytest.mark.parametrize("num_negatives", [1, 10, 100])
def test_equal_similarities_give_log_k_plus_1_per_masked_frame(num_negatives):
    logits = torch.full((7, 1 + num_negatives), 3.0)
    terms = pretraining_loss(_output(logits), diversity_weight=0.0, feature_penalty_weight=0.0)
    assert terms.contrastive.item() == pytest.approx(7 * math.log(num_negatives + 1), rel=1e-6)
    assert terms.loss.item() == pytest.approx(terms.contrastive.item())
    assert terms.sample_size == 7


def test_context_equal_to_target_with_orthogonal_negatives_gives_near_zero_loss():
    # Orthogonal rows of different lengths.
    targets = torch.eye(8)[:6] * torch.arange(1.0, 7.0)[:, None]
    idx = torch.tensor([[j for j in range(6) if j != i][:4] for i in range(6)])
    logits = contrastive_logits(targets.clone(), targets, idx, logit_temperature=0.01)
    assert torch.allclose(logits[:, 0], torch.full((6,), 100.0)) and torch.allclose(
        logits[:, 1:], torch.zeros(6, 4)
    )
    terms = pretraining_loss(_output(logits), diversity_weight=0.0, feature_penalty_weight=0.0)
    assert 0 <= terms.contrastive.item() < 1e-6  # exactly: 6 * log(1 + 4 exp(-100))
    assert terms.num_correct.item() == 6


def test_diversity_is_zero_when_code_use_is_uniform():
    assert diversity_loss(torch.tensor(640.0), 640).item() == 0.0
    assert diversity_loss(torch.tensor(2.0), 640).item() == pytest.approx(638 / 640)
    quantizer = GumbelVectorQuantizer(16, 2, 8, 12).eval()
    with torch.no_grad():
        quantizer.weight_proj.weight.zero_()  # every frame: the uniform distribution over entries
    ppl = quantizer(torch.randn(20, 16), 1.0).prob_perplexity
    assert abs(diversity_loss(ppl, quantizer.num_vars).item()) < 1e-5


def test_total_equals_the_fairseq_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 6, generator=g) * 3
    logits[2, 4] = float("-inf")
    out = _output(logits, prob_perplexity=123.5, num_vars=640, features_penalty=0.37)
    terms = pretraining_loss(out, diversity_weight=0.1, feature_penalty_weight=10.0)
    # L_c = sum_rows -log softmax(row)[0]; loss = L_c + w0 (GV - ppl)/GV S + w1 pen S, S = 9
    contrastive = 0.0
    for row in logits.double().tolist():
        contrastive += -(row[0] - math.log(sum(math.exp(v) for v in row)))
    diversity = 0.1 * (640 - 123.5) / 640 * 9
    penalty = 10.0 * 0.37 * 9
    assert terms.contrastive.item() == pytest.approx(contrastive, rel=1e-6)
    assert terms.diversity.item() == pytest.approx(diversity, rel=1e-6)
    assert terms.feature_penalty.item() == pytest.approx(penalty, rel=1e-6)
    assert terms.loss.item() == pytest.approx(contrastive + diversity + penalty, rel=1e-6)
    assert (terms.sample_size, terms.num_count) == (9, 9)
    assert terms.prob_perplexity.item() == pytest.approx(123.5)
    assert terms.code_perplexity.item() == pytest.approx(61.75)
    assert terms.temperature == 1.5


def test_terms_with_zero_weight_or_no_quantizer_are_skipped():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    no_quantizer = pretraining_loss(_output(logits, prob_perplexity=None, features_penalty=2.0))
    assert no_quantizer.diversity.item() == 0.0 and no_quantizer.prob_perplexity.item() == 0.0
    assert no_quantizer.loss.item() == pytest.approx(
        no_quantizer.contrastive.item() + 10 * 2.0 * 5, rel=1e-6
    )
    unweighted = pretraining_loss(
        _output(logits, features_penalty=2.0), diversity_weight=0.0, feature_penalty_weight=0.0
    )
    assert unweighted.loss.item() == pytest.approx(unweighted.contrastive.item())


def test_loss_gradient_reaches_logits_perplexity_and_penalty():
    logits = torch.randn(4, 3, requires_grad=True)
    out = _output(logits)
    out.prob_perplexity.requires_grad_(True)
    out.features_penalty.requires_grad_(True)
    pretraining_loss(out).loss.backward()
    assert logits.grad.abs().sum() > 0
    assert out.prob_perplexity.grad.item() == pytest.approx(-0.1 / 640 * 4)
    assert out.features_penalty.grad.item() == pytest.approx(10.0 * 4)


def fairseq_accuracy(logits: torch.Tensor) -> tuple[int, int]:
    """fairseq `Wav2vecCriterion` logging, literally."""
    max = logits.argmax(-1) == 0
    min = logits.argmin(-1) == 0
    both = max & min
    corr = max.long().sum().item() - both.long().sum().item()
    count = float(max.numel())
    return corr, int(count)


def test_accuracy_excludes_all_equal_rows():
    logits = torch.tensor(
        [
            [1.0, 1.0, 1.0],  # all equal: not counted as correct
            [2.0, 1.0, 0.0],  # correct
            [0.0, 1.0, 2.0],  # wrong
            [5.0, -math.inf, -math.inf],  # every distractor was the positive's own code: correct
            [1.0, 1.0, 0.0],  # tie for the best with a distractor: fairseq counts it (first argmax)
            [-math.inf, -math.inf, -math.inf],
        ]
    )
    assert contrastive_accuracy(logits) == (3, 6)
    assert contrastive_accuracy(logits) == fairseq_accuracy(logits)
    terms = pretraining_loss(_output(logits[:5]), diversity_weight=0.0, feature_penalty_weight=0.0)
    assert (terms.num_correct.item(), terms.num_count) == (3, 5)
    assert (terms.num_negatives_equal.item(), terms.num_negatives) == (2, 10)  # the -inf ones
    assert terms.accuracy == pytest.approx(0.6)


def test_accuracy_equals_fairseq_on_random_rows_with_ties():
    g = torch.Generator().manual_seed(2)
    logits = torch.randint(0, 3, (500, 5), generator=g).float()
    assert contrastive_accuracy(logits) == fairseq_accuracy(logits)


def test_unit_weights_are_applied_not_skipped():
    """Weight 1 is a weight like any other (only 0 skips a term); no quantizer logs 0 perplexities."""
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    out = _output(logits, prob_perplexity=320.0, num_vars=640, features_penalty=0.25)
    terms = pretraining_loss(out, diversity_weight=1.0, feature_penalty_weight=1.0)
    assert terms.diversity.item() == pytest.approx((640 - 320) / 640 * 6, rel=1e-6)
    assert terms.feature_penalty.item() == pytest.approx(0.25 * 6, rel=1e-6)
    assert terms.loss.item() == pytest.approx(terms.contrastive.item() + 3.0 + 1.5, rel=1e-6)
    no_quantizer = pretraining_loss(_output(logits, prob_perplexity=None))
    assert (no_quantizer.prob_perplexity, no_quantizer.code_perplexity) == (0.0, 0.0)
