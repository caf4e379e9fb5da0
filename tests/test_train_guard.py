"""The loop's guards against non-finite numbers, and reading a run's negatives from its config:
exact values and messages (these survived mutation testing when only the loop tests ran)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from w2vkit.config import to_dict
from w2vkit.model.config import base, tiny
from w2vkit.pretrain.wav2vec2_health import negatives_from_config
from w2vkit.train.best import improves, rank
from w2vkit.train.guard import strict_record, warn_nonfinite_valid


def test_strict_record_turns_non_finite_floats_into_null_and_names_them():
    record = {"loss": math.nan, "gnorm": math.inf, "lr": 1e-3, "num_updates": 7, "split": "train"}
    strict = strict_record(record)
    assert strict == {
        "loss": None, "gnorm": None, "lr": 1e-3, "num_updates": 7, "split": "train",
        "nonfinite": ["loss", "gnorm"],
    }  # fmt: skip
    json.dumps(strict, allow_nan=False)  # strict JSON
    assert strict_record({"loss": 1.0}) == {"loss": 1.0}
    again = strict_record({"nonfinite": ["loss"], "gnorm": -math.inf})
    assert again == {"nonfinite": ["loss", "gnorm"], "gnorm": None}


def test_a_finite_equal_or_smaller_metric_improves_and_ties_go_to_the_later_validation():
    def loss(value):
        return rank({"loss": value}, ("loss",))

    assert (
        improves(loss(1.0), (2.0,))
        and improves(loss(2.0), (2.0,))
        and not improves(loss(3.0), (2.0,))
    )
    assert not improves(loss(math.nan), (2.0,)) and not improves(loss(-math.inf), (2.0,))
    assert rank({}, ("loss",)) is None and not improves(None, (2.0,))
    assert improves(loss(5.0), ())  # the first validation is the best so far


def test_tie_breaks_rank_a_stuck_first_metric():
    keys = ("wer", "cer", "loss")
    first = rank({"wer": 100.0, "cer": 99.8, "loss": 5.0}, keys)
    later = rank({"wer": 100.0, "cer": 77.0, "loss": 4.0}, keys)
    worse = rank({"wer": 100.0, "cer": 80.0, "loss": 1.0}, keys)
    assert first == (100.0, 99.8, 5.0) and improves(later, first) and not improves(first, later)
    assert not improves(worse, later) and improves(rank({"wer": 99.0, "cer": 100.0}, keys), later)
    assert rank({"wer": 100.0, "cer": math.nan, "loss": 4.0}, keys) == (100.0, math.inf, 4.0)
    # A best from a checkpoint written before tie-breaks has its metric alone: equal WER wins.
    assert improves(later, (100.0,)) and not improves(later, (99.0,))


def test_non_finite_validation_warning_names_the_files_that_failed():
    assert warn_nonfinite_valid({"loss": 1.5}, 10, None) is None
    assert warn_nonfinite_valid({}, 10, None) is None
    plain = warn_nonfinite_valid({"loss": math.nan}, 10, None)
    assert plain == (
        "warning: validation loss at update 10 is nan: logged as null, and checkpoint_best.pt "
        "is not updated from it"
    )
    failures = SimpleNamespace(reasons={i: "bad" for i in (9, 2, 5, 7, 3)})
    loader = SimpleNamespace(
        sampler=SimpleNamespace(failures=failures), path_of=lambda i: f"f{i}.wav"
    )
    named = warn_nonfinite_valid({"loss": math.inf}, 20, loader)
    assert named == (
        "warning: validation loss at update 20 is inf: logged as null, and checkpoint_best.pt "
        "is not updated from it; validation files that failed to decode: f2.wav, f3.wav, f5.wav, "
        "f7.wav"
    )
    no_failures = SimpleNamespace(sampler=SimpleNamespace(failures=SimpleNamespace(reasons={})))
    assert warn_nonfinite_valid({"loss": math.nan}, 1, no_failures).endswith("updated from it")


def test_negatives_and_codebooks_from_a_run_config():
    assert negatives_from_config(to_dict(base())) == (100, 2)
    cfg = to_dict(tiny())
    cfg["num_cross_sample_negatives"], cfg["num_codebook_negatives"] = 3, 4
    assert negatives_from_config(cfg) == (tiny().num_negatives + 7, tiny().quantizer.num_groups)
    cfg["quantizer"]["quantize_targets"] = False
    assert negatives_from_config(cfg)[1] == 0
    assert negatives_from_config({}) == (0, 2)  # keys a config leaves out: none, G = 2
