"""The CTC objective plugged into the shared training loop: step, log summary, WER/CER validation.

fairseq's `ctc` criterion: log-softmax in fp32, `F.ctc_loss(..., blank=0, reduction="sum",
zero_infinity=True)`, input lengths from the frame padding mask. The loss is a sum; its
`sample_size` is the number of sentences (`sentence_avg`, fairseq's fine-tuning recipes) or of
target letters, and the loop divides the update's gradient by its global sum, as fairseq's trainer.
Logged `loss` is in bits per sample_size unit, `nll_loss` in bits per letter (fairseq's names);
the console shows `nll_loss`, the one unit of both the training and the validation records.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from w2vkit.data.vocab import BLANK, Vocabulary
from w2vkit.finetune.config import FinetuneConfig
from w2vkit.finetune.decode import ErrorCounts, char_errors, greedy_decode, word_errors
from w2vkit.train import dist
from w2vkit.train.metrics import LOOP_COLUMNS, Column
from w2vkit.train.state import Objective, StepOutput


def ctc_loss(
    logits: Tensor,
    lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    *,
    zero_infinity: bool = True,
) -> Tensor:
    """Summed CTC negative log-likelihood. Shape: logits (B, T, V), targets (B, L) -> scalar."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (B, T, V) -> (T, B, V)
    return F.ctc_loss(
        log_probs,
        targets,
        lengths,
        target_lengths,
        blank=BLANK,
        reduction="sum",
        zero_infinity=zero_infinity,
    )


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Window sums -> fairseq's CTC log record."""
    sample_size = max(sums.get("sample_size", 0.0), 1.0)
    record = {"loss": sums["loss"] / sample_size / math.log(2)}
    record["nll_loss"] = sums["loss"] / max(sums.get("ntokens", 0.0), 1.0) / math.log(2)
    return record | {k: sums[k] for k in ("ntokens", "nsentences", "sample_size") if k in sums}


def make_objective(cfg: FinetuneConfig, vocab: Vocabulary) -> Objective:
    ctc = cfg.ctc

    def step(model: nn.Module, batch: Any, step: int, generator) -> StepOutput:
        """`batch`: a LabelledBatch on the device."""
        out = model(
            batch.wav,
            batch.padding_mask,
            freeze_encoder=step < ctc.freeze_encoder_steps,
            generator=generator,
        )
        loss = ctc_loss(
            out.logits,
            out.lengths,
            batch.targets,
            batch.target_lengths,
            zero_infinity=ctc.zero_infinity,
        )
        ntokens = batch.target_lengths.sum()
        num_rows = batch.target_lengths.numel()
        sample_size: Tensor | int = num_rows if ctc.sentence_avg else ntokens
        sums: dict[str, Tensor | float] = {
            "loss": loss.detach(),
            "ntokens": ntokens,
            "nsentences": num_rows,
            "sample_size": sample_size,
        }
        return StepOutput(loss=loss, sample_size=sample_size, sums=sums)

    def validate(model: nn.Module, loader, step_count: int) -> dict[str, float]:
        device = next(model.parameters()).device
        words, chars = ErrorCounts(), ErrorCounts()
        loss_sum = ntokens = 0.0
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(device)
                out = model(batch.wav, batch.padding_mask)
                loss_sum += float(
                    ctc_loss(out.logits, out.lengths, batch.targets, batch.target_lengths)
                )
                ntokens += float(batch.target_lengths.sum())
                hyps = [vocab.text(h.tokens) for h in greedy_decode(out.logits, out.lengths)]
                refs = [
                    vocab.text(row[:n].tolist())
                    for row, n in zip(batch.targets, batch.target_lengths.tolist(), strict=True)
                ]
                words.add(word_errors(refs, hyps))
                chars.add(char_errors(refs, hyps))
        totals = torch.tensor(
            [words.errors, words.length, chars.errors, chars.length, loss_sum, ntokens],
            dtype=torch.float64,
            device=device,
        )
        w_err, w_len, c_err, c_len, loss, tokens = dist.all_reduce_sum(totals).tolist()
        bits_per_letter = loss / max(tokens, 1.0) / math.log(2)
        return {
            "loss": bits_per_letter,
            "nll_loss": bits_per_letter,  # the train records' name for the same unit
            "wer": 100 * w_err / max(w_len, 1.0),
            "cer": 100 * c_err / max(c_len, 1.0),
        }

    return Objective(
        step=step,
        summarize=summarize,
        validate=validate,
        best_metric="wer",
        tie_breaks=("cer", "loss"),
    )


def console_columns(labels: str) -> tuple[Column, ...]:
    """The console table of `w2vkit finetune`: the loss in bits per target symbol (`nll_loss`, the
    same unit in train and validation lines, named in the header: `bits/ltr` for data.labels=ltr;
    a train record's `loss` is per sentence under ctc.sentence_avg), then WER and CER."""
    return (
        Column("nll_loss", f"bits/{labels}", ".3f"),
        Column("wer", "wer%", ".2f"),
        Column("cer", "cer%", ".2f"),
        *LOOP_COLUMNS,
    )


__all__ = ["console_columns", "ctc_loss", "make_objective", "summarize"]
