"""bench/small_budget.py: held-out corpora, the probe table and its chance row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import small_budget  # noqa: E402


def test_context_stacks_neighbours_with_repeated_edges():
    features = np.arange(10, dtype=float).reshape(5, 2)  # frame t = [2t, 2t + 1]
    stacked = small_budget.with_context(features, 1)
    for t in range(5):
        expected = [features[min(max(t + d, 0), 4)] for d in (-1, 0, 1)]
        np.testing.assert_array_equal(stacked[t], np.concatenate(expected))


def test_chance_is_the_commonest_training_phone_scored_on_test():
    train = np.array(["sil", "sil", "a", "sil", "b"])
    test = np.array(["a", "sil", "b", "b"])
    assert small_budget.chance_accuracy(train, test) == 0.25  # one "sil" among 4 test frames


def test_voice_variants_are_disjoint_and_as_many_as_issue_18():
    sets = [
        small_budget.PRETRAIN_VARIANTS,
        small_budget.PROBE_TRAIN_VARIANTS,
        small_budget.PROBE_TEST_VARIANTS,
    ]
    assert [len(small_budget.voices(v)) for v in sets] == [208, 24, 80]
    assert len(set().union(*map(set, sets))) == sum(map(len, sets))


@pytest.mark.slow  # three corpora, a pretraining run and 8 probes: ~30 s on 2 busy cores
def test_quick_run_prints_every_row_with_accuracies_in_range(tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    result = small_budget.main(["--quick", "--config", "tiny", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    for row in ("chance", "random initialisation", "`tiny`", "80-band log-mel |", "±4 frames"):
        assert row in out
    assert json.loads(out.strip().splitlines()[-1]) == result
    (seed,) = result["seeds"]
    assert seed["updates"] == 3 and np.isfinite(seed["final_loss_bits"])
    accuracies = [result[k] for k in ("chance", "log_mel", "log_mel_context")]
    accuracies += seed["pretrained_layers"] + seed["random_layers"]
    assert len(seed["pretrained_layers"]) == 3  # encoder input and tiny's two layers
    assert all(0 <= a <= 1 for a in accuracies)
    sets = small_budget.held_out_probe_sets(
        tmp_path, {s: tmp_path / f"probe_{s}" / "manifest" for s in ("train", "test")}
    )
    train, test = (np.concatenate(sets[s].labels) for s in ("train", "test"))
    names, counts = np.unique(train, return_counts=True)
    assert result["chance"] == np.mean(test == names[counts.argmax()])
    seen = set(small_budget._texts(tmp_path / "pretrain" / "audio").values()) | set(
        small_budget._texts(tmp_path / "probe_train" / "audio").values()
    )
    assert sets["test"].texts and not seen & set(sets["test"].texts)


@pytest.mark.slow  # two CPU recipes for 3 updates each, 8 probes each
def test_quick_run_compares_objectives_each_with_its_cpu_recipe(tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    result = small_budget.main(
        ["--quick", "--objective", "data2vec2", "best_rq", "--cache", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "| `data2vec2_cpu` " in out and "| `best_rq_cpu` " in out  # label: recipe + overrides
    assert out.count("at random initialisation (best layer)") == 2  # each its own architecture
    assert sorted(result["runs"]) == ["best_rq_cpu", "data2vec2_cpu"]
    for (seed,) in result["runs"].values():
        assert seed["updates"] == 3 and np.isfinite(seed["final_loss_bits"])
        assert seed["left_plateau_at"] is None  # no contrastive plateau to leave
        assert len(seed["pretrained_layers"]) == 5  # encoder input and 4 layers


def test_leaving_the_plateau_means_staying_below_it(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  num_negatives: 10\n")  # plateau log2(11)
    losses = [3.2, 3.47, 3.46, 3.3, 3.1]  # an early dip is no escape; update 40 is
    records = [{"split": "train", "num_updates": 10 * (n + 1), "loss_0": x, "accuracy": 0.1}
               for n, x in enumerate(losses)]  # fmt: skip
    records.insert(2, {"split": "valid", "num_updates": 20, "loss_0": 9.0})
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = small_budget.plateau_summary(tmp_path / "train_log.jsonl")
    assert summary["left_plateau_at"] == 40 and summary["updates"] == 50
    assert summary["plateau_bits"] == pytest.approx(3.4594, abs=1e-4)
    assert summary["final_loss_bits"] == 3.1
