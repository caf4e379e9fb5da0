"""HuBERT pieces alone: k-means labels and the `.km` layout, MFCCs, the loss against a slow
explicit computation, labels cropped in step with the audio, the cluster-balance finding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from w2vkit import cli
from w2vkit.data.collate import collate
from w2vkit.data.frame_labels import FrameLabels
from w2vkit.model.config import tiny
from w2vkit.pretrain.hubert import kmeans
from w2vkit.pretrain.hubert.config import HubertConfig
from w2vkit.pretrain.hubert.health import HubertMonitor, cluster_balance, monitor_for, top_share
from w2vkit.pretrain.hubert.loss import hubert_loss, label_perplexity, summarize
from w2vkit.pretrain.hubert.mfcc import deltas, mfcc_features
from w2vkit.pretrain.hubert.model import HubertModel


def _blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(5, 3))
    return (centres[rng.integers(0, 5, 2000)] + rng.normal(size=(2000, 3))).astype(np.float32)


def test_labels_are_the_nearest_centroid_and_the_seed_fixes_the_centroids():
    frames = _blobs()
    centroids = kmeans.fit_kmeans(frames, 5, seed=3)
    assert centroids.shape == (5, 3)
    np.testing.assert_array_equal(centroids, kmeans.fit_kmeans(frames, 5, seed=3))
    # Slow reference: the argmin of the Euclidean distance, frame by frame.
    slow = [int(np.argmin([np.linalg.norm(x - c) for c in centroids])) for x in frames]
    np.testing.assert_array_equal(kmeans.nearest_centroid(frames, centroids), slow)
    # Well separated blobs: every blob is one cluster (labels agree up to renaming).
    labels = kmeans.nearest_centroid(frames, centroids)
    assert len(np.unique(labels)) == 5


def test_km_files_have_fairseqs_layout(tmp_path):
    rows = [np.array([3, 3, 0]), np.array([], dtype=np.int64), np.array([12])]
    assert kmeans.write_km(tmp_path / "train.km", rows) == 3
    assert (tmp_path / "train.km").read_text() == "3 3 0\n\n12\n"
    kmeans.write_dictionary(tmp_path / "dict.km.txt", 3)
    assert (tmp_path / "dict.km.txt").read_text() == "0 1\n1 1\n2 1\n"
    back = kmeans.read_km(tmp_path / "train.km")
    assert [r.tolist() for r in back] == [[3, 3, 0], [], [12]]
    (tmp_path / "bad.km").write_text("1 2\n1 x\n")
    with pytest.raises(ValueError, match=r"bad.km:2: labels must be space-separated integers"):
        kmeans.read_km(tmp_path / "bad.km")


def test_frame_sample_is_uniform_and_bounded():
    chunks = [np.full((100, 2), i, dtype=np.float32) for i in range(10)]
    sample = kmeans.sample_frames(iter(chunks), 300, seed=0)
    assert sample.shape == (300, 2)
    counts = np.bincount(sample[:, 0].astype(int), minlength=10)
    assert counts.min() > 10  # every utterance is represented, not just the first three
    assert kmeans.sample_frames(iter(chunks[:1]), 300, seed=0).shape == (100, 2)


def test_mfcc_frames_and_deltas():
    wav = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    features = mfcc_features(wav)
    assert features.shape == (1 + (16000 - 400) // 160, 39)
    assert torch.isfinite(features).all()
    # Deltas of a ramp: slope 1 inside; at the ends the repeated edge gives (1*1 + 2*2) / 10.
    ramp = torch.arange(8, dtype=torch.float64)[:, None]
    np.testing.assert_allclose(deltas(ramp)[:, 0], [0.5, 0.8, 1, 1, 1, 1, 0.8, 0.5])
    # A louder copy shifts only the log energies: C0 (the mean log-mel) moves by 2 log(2) * sqrt(23).
    louder = mfcc_features(2 * wav)
    np.testing.assert_allclose(
        (louder[:, 0] - features[:, 0]).numpy(), 2 * math.log(2) * math.sqrt(23), rtol=1e-4
    )
    np.testing.assert_allclose(louder[:, 1:13], features[:, 1:13], atol=1e-3)


def _model(hubert: HubertConfig, label_rate: float) -> HubertModel:
    torch.manual_seed(0)
    return HubertModel(tiny(), hubert, label_rate=label_rate).eval()


def test_loss_matches_a_slow_explicit_computation():
    hubert = HubertConfig(num_classes=[7, 5], pred_nomask_weight=0.5, feature_penalty_weight=10.0)
    model = _model(hubert, label_rate=100)
    gen = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 16160, generator=gen)
    # 100 Hz labels of 16160 samples: 1 + 15760 // 160 = 99 -> 49 frames need 98, the conv gives 50.
    labels = [
        torch.randint(0, 7, (2, 99), generator=gen),
        torch.randint(0, 5, (2, 99), generator=gen),
    ]
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.update(context=o[-1]))
    model.feature_extractor.register_forward_hook(lambda m, i, o: seen.update(conv=o))
    time_mask = torch.zeros(2, 49, dtype=torch.bool)
    time_mask[0, 3:13] = time_mask[1, 20:40] = True
    out = model(wav, None, labels, time_mask=time_mask)
    terms = hubert_loss(out, hubert)
    # The conv gives 50 frames; the 50th has no label and is dropped, penalty included.
    assert seen["conv"].shape[-1] == 50 and out.time_mask.shape == (2, 49)
    # Slow: every frame, every label set, the softmax over classes of cosine / 0.1 written out.
    context, embeddings = seen["context"], model.label_embeddings.detach()
    heads = [embeddings[:7], embeddings[7:]]
    totals = {True: 0.0, False: 0.0}
    for b in range(2):
        for t in range(49):
            projected = model.context_proj(context[b, t]).detach()  # (2 * F,)
            for i, classes in enumerate(heads):
                p = projected[i * 32 : (i + 1) * 32]
                cos = [float(p @ c / (p.norm() * c.norm())) for c in classes]
                scores = [c / 0.1 for c in cos]
                label = int(labels[i][b, 2 * t])
                log_z = math.log(sum(math.exp(s) for s in scores))
                totals[bool(time_mask[b, t])] += log_z - scores[label]
    num_masked = int(time_mask.sum())
    sample_size = num_masked + (98 - num_masked)
    penalty = 10.0 * float(seen["conv"].detach()[..., :49].pow(2).mean()) * sample_size
    assert terms.sample_size == sample_size
    assert float(terms.masked) == pytest.approx(totals[True], rel=1e-5)
    assert float(terms.unmasked) == pytest.approx(totals[False], rel=1e-5)
    assert float(terms.loss) == pytest.approx(
        totals[True] + 0.5 * totals[False] + penalty, rel=1e-5
    )
    record = summarize(
        {"loss": float(terms.loss), "sample_size": sample_size, "count": 4, "correct": 1}
    )
    assert record["loss"] == pytest.approx(float(terms.loss) / sample_size / math.log(2))
    assert record["accuracy"] == 0.25


def test_label_perplexity_counts_the_classes_in_use():
    assert float(label_perplexity(torch.tensor([0, 1, 2, 3]), 10)) == pytest.approx(4.0)
    assert float(label_perplexity(torch.tensor([5, 5, 5]), 10)) == pytest.approx(1.0)


def test_labels_are_cropped_with_the_audio(tmp_path):
    # Label j of a row is its sample 160 j (100 Hz): the crop offset shows in the first label.
    lengths = [16000, 20000, 24000]
    (tmp_path / "train.km").write_text(
        "".join(
            " ".join(str(j + 1000 * r) for j in range(n // 160)) + "\n"
            for r, n in enumerate(lengths)
        )
    )
    labels = FrameLabels(
        [tmp_path / "train.km"],
        np.arange(3),
        np.array(lengths),
        label_rate=100.0,
        sample_rate=16000,
    )
    wavs = [torch.zeros(n) for n in lengths]
    batch = collate(wavs, [0, 1, 2], pad=False, generator=torch.Generator().manual_seed(4))
    assert batch.offsets is not None and batch.offsets.tolist()[0] == 0
    assert batch.offsets.tolist()[1:] != [0, 0]
    out = labels.attach(batch)
    assert out.labels is not None and out.labels[0].shape == (3, 100)
    for r, offset in enumerate(batch.offsets.tolist()):
        first = round(offset * 100 / 16000)
        assert out.labels[0][r].tolist() == [1000 * r + first + j for j in range(100)]


def test_a_label_file_that_does_not_fit_its_manifest_is_named(tmp_path):
    (tmp_path / "train.km").write_text("1 2 3\n")
    with pytest.raises(Exception, match=r"train.km:1: 3 labels for 16000 samples"):
        FrameLabels(
            [tmp_path / "train.km"],
            np.arange(1),
            np.array([16000]),
            label_rate=100.0,
            sample_rate=16000,
        )


def test_clusters_where_a_few_classes_hold_most_frames_are_a_finding():
    balanced = np.full(100, 50)
    assert top_share(balanced) == pytest.approx(0.1)
    assert cluster_balance(balanced, source="train.km") is None
    skewed = np.concatenate([np.full(5, 2000), np.full(95, 10), np.zeros(0, int)])
    skewed[-3:] = 0
    finding = cluster_balance(skewed, source="train.km")
    assert finding is not None and finding.code == "clusters_unbalanced"
    assert "the 10 most frequent of 100 classes hold 92% of the frames" in finding.message
    assert "3 classes are never used" in finding.message
    assert "--max-frames" in finding.what_to_try


def test_hubert_without_label_files_is_a_usage_error(capsys, tmp_path):
    code = cli.main(
        [
            "pretrain",
            "hubert_cpu",
            f"data.manifest_dir={tmp_path}",
            "data.labels=[]",
            "--print-config",
        ]
    )
    assert code == 2
    assert (
        "data.labels: objective hubert needs one label file name per hubert.num_classes entry (1), got []"
        in capsys.readouterr().err
    )


def test_a_run_reports_its_unbalanced_training_labels_once(tmp_path):
    # 20 classes, class 0 holds 90% of the frames.
    (tmp_path / "train.km").write_text(
        " ".join(["0"] * 171 + [str(k) for k in range(1, 20)]) + "\n"
    )
    config = {
        "data": {"manifest_dir": str(tmp_path), "labels": ["km"]},
        "hubert": {"num_classes": [20]},
    }
    monitor = monitor_for(config)
    first = monitor.observe({"split": "train", "num_updates": 10, "gnorm": 1.0})
    assert [f.code for f in first] == ["clusters_unbalanced"]
    assert "the 2 most frequent of 20 classes hold 91% of the frames" in first[0].message
    assert monitor.observe({"split": "train", "num_updates": 20, "gnorm": 1.0}) == []


def test_a_low_label_perplexity_in_the_log_is_the_same_finding():
    monitor = HubertMonitor(None, "train.km", num_classes=100)
    records = [{"split": "train", "num_updates": k, "label_ppl": 4.0} for k in (10, 20, 30)]
    assert monitor.observe(records[0]) == monitor.observe(records[1]) == []
    (finding,) = monitor.observe(records[2])
    assert finding.code == "clusters_unbalanced"
    assert (
        finding.message
        == "the labels of the scored frames use 4.0 of 100 classes (perplexity) for 3 log records"
    )
    assert monitor.observe({"split": "train", "num_updates": 40, "label_ppl": 60.0}) == []
