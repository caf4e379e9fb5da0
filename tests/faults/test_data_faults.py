"""Faults 1, 2, 4, 12: audio that decodes differently from its manifest, and a changed manifest.

Each test breaks a file (or the manifest) the way a field run meets it and checks the message
and that nothing is lost: the run completes its updates, the bad file is named once and left
out, the rest of its batch is kept, and counts are of distinct files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import audiogen
import fault_runs as runs
import numpy as np
import pytest
import torch

from w2vkit.data.dataset import AudioDataset
from w2vkit.data.loader import build_dataloader
from w2vkit.data.manifest import read_manifest
from w2vkit.data.sampler import BucketBatchSampler
from w2vkit.model.config import tiny
from w2vkit.model.limits import min_input_samples
from w2vkit.train import checkpoint


@pytest.fixture
def corpus(tmp_path) -> Path:
    """12 tones of 0.6-2.0 s, all in train.tsv (no valid split)."""
    return runs.make_manifest(tmp_path, num_files=12, valid_percent=0.0)


def _loader(manifest_dir: Path, **dataset_args):
    dataset = AudioDataset(
        manifest_dir / "train.tsv",
        min_samples=1000,
        max_samples=8000,
        min_decoded_samples=min_input_samples(tiny()),
        **dataset_args,
    )
    sampler = BucketBatchSampler(
        dataset.sizes, max_batch_samples=32000, required_batch_size_multiple=1, seed=3
    )
    return dataset, sampler, build_dataloader(dataset, sampler, seed=3)


def test_fault01_truncated_file_is_replaced_not_fatal(corpus, tmp_path, caplog):
    """A WAV cut to 1000 of its frames after the manifest was written: replaced, named once."""
    manifest = read_manifest(corpus / "train.tsv")
    bad = int(np.argmax(manifest.num_frames))
    path = manifest.root / manifest.paths[bad]
    audiogen.truncate(path, (44 + 2 * 1000) / path.stat().st_size)  # header + 1000 frames
    with caplog.at_level(logging.WARNING):
        code = runs.pretrain(corpus, tmp_path / "run", "train.max_steps=8")
    assert code == 0  # before: a traceback at the batch holding it, again after every resume
    named = [r.getMessage() for r in caplog.records if path.name in r.getMessage()]
    assert len(named) == 1, named  # named once, not once per epoch or per worker
    assert "shorter than its manifest" in named[0] and "1000 of " in named[0]
    saved = checkpoint.load(tmp_path / "run" / checkpoint.LAST)
    assert saved["progress"]["step"] == 8 and saved["progress"]["num_nonfinite"] == 0
    assert {r["num_failed_files"] for r in runs.records(tmp_path / "run")} <= {0, 1}
    assert runs.records(tmp_path / "run")[-1]["num_failed_files"] == 1


def test_fault01_decode_below_what_masking_needs_is_a_failure(corpus):
    """3000 samples (9 frames) pass the manifest's min_samples but masking would cover them all."""
    need = min_input_samples(tiny())
    assert 3000 < need == 4240  # 13 frames: the first length static spans of 10 leave unmasked
    runs.replace_audio(corpus / "train.tsv", 0, audiogen.tone(3000)[:, 0], frames=3000)
    dataset, sampler, loader = _loader(corpus)
    for batch in loader:
        assert batch.wav.shape[1] >= need and 0 not in batch.indices.tolist()
    assert sampler.failures.reasons == {0: f"too short (3000 < {need} samples the model needs)"}


def test_fault02_nan_file_is_excluded_and_its_batch_kept(corpus, caplog):
    """NaN samples: the file is named once and replaced; the other rows of its batch stay."""
    wav = audiogen.tone(20_000)[:, 0]
    wav[5000:5010] = np.nan
    path = runs.replace_audio(corpus / "train.tsv", 3, wav, subtype="FLOAT")
    dataset, sampler, loader = _loader(corpus)
    planned = {key.position: key.indices for key in BucketBatchSampler(
        dataset.sizes, max_batch_samples=32000, required_batch_size_multiple=1, seed=3
    )}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for _epoch in range(3):
            for batch in loader:
                assert torch.isfinite(batch.wav).all()
                rows = planned[batch.position] if batch.epoch == 0 else None
                if rows is not None and 3 in rows:
                    assert len(batch.indices) == len(rows)  # replaced, none thrown away
                    assert 3 not in batch.indices.tolist()
    assert [r.getMessage() for r in caplog.records].count(
        f"skipping {path} (item 3): non-finite samples (10 NaN/Inf samples); it is replaced in "
        "every batch from now on"
    ) == 1
    assert sampler.failures.num_files == 1 and sampler.failures.num_events == 3


def test_fault04_failed_files_are_counted_once_across_epochs_and_resume(corpus, tmp_path):
    """4 bad files over many epochs and a resume: num_failed_files is 4, events counted apart."""
    bad = [1, 4, 7, 10]
    for row in bad:
        audiogen.truncate(
            read_manifest(corpus / "train.tsv").root
            / read_manifest(corpus / "train.tsv").paths[row],
            0.05,
        )
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=6") == 0
    assert runs.pretrain(corpus, out, "train.max_steps=14") == 0
    last = runs.records(out)[-1]
    assert last["num_updates"] == 14
    assert last["num_failed_files"] == len(bad)
    assert last["num_failed_decodes"] > len(bad)  # events: every epoch meets them again
    saved = checkpoint.load(out / checkpoint.LAST)["sampler"]["decode_failures"]
    assert saved["indices"].tolist() == sorted(
        AudioDataset(corpus / "train.tsv", min_samples=1000).manifest_rows.tolist().index(r)
        for r in bad
    )


def test_fault12_changed_manifest_is_refused_on_resume(corpus, tmp_path, capsys):
    """One line appended to train.tsv (same batch count): refused, or a new epoch if allowed."""
    out = tmp_path / "run"
    assert runs.pretrain(corpus, out, "train.max_steps=3") == 0
    before = checkpoint.load(out / checkpoint.LAST)
    tsv = corpus / "train.tsv"
    first_row = tsv.read_text().splitlines()[1]
    extra = corpus.parent / "audio" / "extra.wav"
    audiogen.write_tone(extra, 0.7)
    tsv.write_text(tsv.read_text() + f"extra.wav\t{first_row.split(chr(9))[1]}\n")
    assert runs.pretrain(corpus, out, "train.max_steps=6") == 2
    assert "the data changed since the checkpoint" in capsys.readouterr().err
    after = checkpoint.load(out / checkpoint.LAST)
    assert after["progress"]["step"] == 3  # nothing written: the checkpoint is untouched
    assert torch.equal(
        before["model"]["context_proj.weight"], after["model"]["context_proj.weight"]
    )
    assert runs.pretrain(corpus, out, "train.max_steps=6", "train.allow_data_change=true") == 0
    resumed = checkpoint.load(out / checkpoint.LAST)
    assert resumed["progress"]["step"] == 6
    assert resumed["sampler"]["num_items"] == before["sampler"]["num_items"] + 1
