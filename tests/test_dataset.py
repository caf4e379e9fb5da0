"""Decoding, resampling, cropping, padding and the DataLoader (w2vkit.data.{audio,dataset,
collate,loader}), on audio written by the tests."""

from __future__ import annotations

import logging

import audiogen
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from w2vkit.data.audio import load_audio, normalize, resampled_length
from w2vkit.data.collate import collate
from w2vkit.data.dataset import AudioDataset
from w2vkit.data.loader import build_dataloader
from w2vkit.data.manifest import Manifest, read_manifest, write_manifest
from w2vkit.data.sampler import BucketBatchSampler

RATES = (8_000, 16_000, 22_050, 44_100)


def _manifest(tmp_path, files, with_rates=True):
    """files: (name, seconds, rate, channels, fmt). Written, then listed (headers probed)."""
    paths, frames, rates, channels = [], [], [], []
    for name, seconds, rate, nch, fmt in files:
        path = audiogen.write_tone(
            tmp_path / "audio" / name, seconds, rate, nch, fmt, seed=len(paths)
        )
        info = sf.info(path)
        paths.append(name)
        frames.append(info.frames)
        rates.append(info.samplerate)
        channels.append(info.channels)
    manifest = Manifest(
        tmp_path / "audio",
        paths,
        np.array(frames),
        np.array(rates) if with_rates else None,
        np.array(channels),
    )
    write_manifest(tmp_path / "train.tsv", manifest)
    return tmp_path / "train.tsv"


def test_resampled_length_is_what_soxr_returns():
    for rate in (8_000, 11_025, 22_050, 32_000, 44_100, 48_000):
        for n in (1, 2, 3, 99, 1001, 44_101, 160_017):
            assert resampled_length(n, rate) == len(
                soxr.resample(np.zeros(n, np.float32), rate, 16_000)
            )
    vector = resampled_length(np.array([44_100, 22_050]), np.array([44_100, 22_050]))
    assert vector.tolist() == [16_000, 16_000]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_sizes_equal_decoded_lengths_at_every_rate(tmp_path, fmt):
    files = [(f"{rate}_{ch}.{fmt}", 0.73, rate, ch, None) for rate in RATES for ch in (1, 2)]
    dataset = AudioDataset(_manifest(tmp_path, files))
    for i in range(len(dataset)):
        wav = dataset.load(i)
        assert wav.dtype == torch.float32 and wav.ndim == 1
        assert len(wav) == dataset.sizes[i] == dataset.num_samples[i]
        assert abs(len(wav) - 0.73 * 16_000) <= 1


def test_resampled_content_is_the_same_tone(tmp_path):
    t = np.arange(44_100) / 44_100
    sf.write(
        tmp_path / "a.wav",
        (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32),
        44_100,
        subtype="FLOAT",
    )
    wav = load_audio(tmp_path / "a.wav")
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16_000) / 16_000)
    np.testing.assert_allclose(wav[200:-200], expected[200:-200], atol=2e-3)  # edges: filter


def test_stereo_is_averaged_to_mono(tmp_path):
    path = audiogen.write_tone(tmp_path / "s.wav", 0.5, 16_000, channels=2, seed=4)
    stereo, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(load_audio(path), stereo.mean(axis=1), atol=1e-7)
    assert np.abs(stereo[:, 0] - stereo[:, 1]).max() > 0.1  # the channels really differ


def test_normalize_matches_fairseq_layer_norm():
    wav = torch.from_numpy(audiogen.tone(12_345, seed=2)[:, 0] * 3 + 0.2)
    ours = torch.from_numpy(normalize(wav.numpy()))
    np.testing.assert_allclose(ours, F.layer_norm(wav, wav.shape), atol=1e-5)
    assert abs(float(ours.mean())) < 1e-5 and abs(float(ours.std(unbiased=False)) - 1) < 1e-4


def test_min_and_max_samples(tmp_path, caplog):
    files = [(f"{i}.wav", s, 16_000, 1, None) for i, s in enumerate([0.25, 0.5, 1.0, 2.0])]
    with caplog.at_level(logging.INFO):
        dataset = AudioDataset(
            _manifest(tmp_path, files), min_samples=6_000, max_samples=20_000, normalize=True
        )
    assert "dropped 1 of 4 items shorter than min_samples=6000" in caplog.text
    assert dataset.num_samples.tolist() == [8_000, 16_000, 32_000]
    assert dataset.sizes.tolist() == [8_000, 16_000, 20_000]
    assert dataset.path(0).name == "1.wav"
    wav = dataset.load(2)
    assert abs(float(wav.mean())) < 1e-4 and abs(float(wav.std()) - 1) < 1e-3
    with pytest.raises(ValueError, match="min_samples 30000 > max_samples 20000"):
        AudioDataset(tmp_path / "train.tsv", min_samples=30_000, max_samples=20_000)


def test_resample_warning_counts_files(tmp_path, caplog):
    files = [
        ("a.wav", 0.2, 16_000, 1, None),
        ("b.wav", 0.2, 44_100, 1, None),
        ("c.wav", 0.2, 8_000, 2, None),
    ]
    with caplog.at_level(logging.INFO):
        AudioDataset(_manifest(tmp_path, files))
    assert "2 of 3 files are not at 16000 Hz (8000 Hz: 1, 44100 Hz: 1)" in caplog.text
    assert "1 files have more than one channel" in caplog.text


def test_without_sidecar_frames_are_taken_as_16k(tmp_path):
    path = _manifest(tmp_path, [("a.wav", 0.5, 44_100, 1, None)], with_rates=False)
    assert not (tmp_path / "train.meta.tsv").exists()
    dataset = AudioDataset(read_manifest(path))
    assert dataset.sizes.tolist() == [22_050]  # fairseq's reading: native frames


def test_file_longer_than_planned_is_cropped_to_the_plan(tmp_path):
    # No sidecar: an 8 kHz file is planned at its 4000 frames but decodes to 8000 samples.
    path = _manifest(tmp_path, [("a.wav", 0.5, 8_000, 1, None)], with_rates=False)
    dataset = AudioDataset(path, pad=True)
    assert len(dataset.load(0)) == 8_000
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=4_000)
    (batch,) = list(build_dataloader(dataset, sampler, seed=0))
    assert batch.wav.shape == (1, 4_000) and batch.padding_mask is None


def test_bad_file_returns_none_and_is_logged(tmp_path, caplog):
    path = audiogen.write_tone(tmp_path / "audio" / "cut.flac", 1.0)
    frames = sf.info(path).frames
    audiogen.truncate(path, 0.5)
    write_manifest(
        tmp_path / "t.tsv", Manifest(tmp_path / "audio", ["cut.flac"], np.array([frames]))
    )
    dataset = AudioDataset(tmp_path / "t.tsv")
    with caplog.at_level(logging.WARNING):
        assert dataset.load(0) is None
    assert dataset.num_failed == 1
    assert "cut.flac" in caplog.text and "cannot decode" in caplog.text


def _ramps(lengths):
    return [torch.arange(n, dtype=torch.float32) + 1000 * i for i, n in enumerate(lengths)]


def test_collate_crop_to_shortest_at_random_offsets():
    wavs = _ramps([500, 300, 800])
    starts = set()
    for seed in range(20):
        batch = collate(wavs, [5, 6, 7], pad=False, generator=torch.Generator().manual_seed(seed))
        assert batch.wav.shape == (3, 300) and batch.padding_mask is None
        assert batch.indices.tolist() == [5, 6, 7] and batch.num_audio_samples == 900
        for row, wav in zip(batch.wav, wavs, strict=True):
            start = int(row[0] - wav[0])
            assert 0 <= start <= len(wav) - 300
            assert torch.equal(row, wav[start : start + 300])  # one contiguous slice
            starts.add((len(wav), start))
    assert len({s for n, s in starts if n == 800}) > 5  # offsets do vary
    again = collate(wavs, [5, 6, 7], pad=False, generator=torch.Generator().manual_seed(3))
    same = collate(wavs, [5, 6, 7], pad=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.wav, same.wav)


def test_collate_without_random_crop_keeps_the_start_and_respects_limits():
    wavs = _ramps([500, 300, 800])
    batch = collate(wavs, [0, 1, 2], pad=False, max_samples=[200, 300, 300], random_crop=False)
    assert batch.wav.shape == (3, 200)
    for row, wav in zip(batch.wav, wavs, strict=True):
        assert torch.equal(row, wav[:200])


def test_collate_pad_gives_mask_true_on_padding():
    wavs = _ramps([500, 300, 800])
    batch = collate(
        wavs,
        [0, 1, 2],
        pad=True,
        max_samples=[10_000, 10_000, 600],
        generator=torch.Generator().manual_seed(0),
    )
    assert batch.wav.shape == (3, 600)
    expected_mask = torch.arange(600)[None, :] >= torch.tensor([500, 300, 600])[:, None]
    assert torch.equal(batch.padding_mask, expected_mask)
    assert torch.equal(batch.wav[0, :500], wavs[0]) and torch.equal(batch.wav[1, :300], wavs[1])
    assert (batch.wav[batch.padding_mask] == 0).all()
    start = int(batch.wav[2, 0] - wavs[2][0])  # the 800-sample row was cropped to its limit
    assert torch.equal(batch.wav[2], wavs[2][start : start + 600])
    assert batch.num_audio_samples == 1400
    moved = batch.to("cpu")
    assert torch.equal(moved.padding_mask, batch.padding_mask) and moved.num_failed == 0
    assert collate(_ramps([4, 4]), [0, 1], pad=True).padding_mask is None  # nothing padded


def _corpus_dataset(tmp_path, n=24, pad=False, bad=()):
    """n mono 16 kHz wavs; those in `bad` are overwritten with junk after the manifest is made."""
    paths = audiogen.make_corpus(tmp_path / "audio", n, (0.3, 1.2), 16_000, seed=1)
    frames = np.array([sf.info(p).frames for p in paths])
    write_manifest(
        tmp_path / "train.tsv", Manifest(tmp_path / "audio", [p.name for p in paths], frames)
    )
    for i in bad:
        paths[i].write_bytes(b"corrupted after the manifest was made" * 50)
    return AudioDataset(tmp_path / "train.tsv", max_samples=15_000, pad=pad)


def _run(dataset, num_workers, epochs=(0,), **kwargs):
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=60_000, seed=5, **kwargs)
    loader = build_dataloader(dataset, sampler, seed=9, num_workers=num_workers)
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out += list(loader)
    return out


@pytest.mark.parametrize("pad", [False, True])
def test_loader_batches_are_the_same_for_any_num_workers(tmp_path, pad):
    dataset = _corpus_dataset(tmp_path, pad=pad)
    serial = _run(dataset, 0, epochs=(0, 1))
    parallel = _run(dataset, 2, epochs=(0, 1))
    assert len(serial) == len(parallel) > 2
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.wav, b.wav) and torch.equal(a.indices, b.indices)
        assert a.wav.numel() <= 60_000 and a.wav.shape[1] <= 15_000
        if pad:
            assert a.padding_mask is None or a.padding_mask.shape == a.wav.shape
    epoch0 = [b for b in serial if b.epoch == 0]
    assert sorted(i for b in epoch0 for i in b.indices.tolist()) == list(range(len(dataset)))


def test_failed_items_are_replaced_by_a_no_longer_item(tmp_path, caplog):
    dataset = _corpus_dataset(tmp_path, bad=(3, 11))
    with caplog.at_level(logging.WARNING):
        batches = _run(dataset, 0)
    assert sum(b.num_failed for b in batches) == 2
    assert "utt_003.wav" in caplog.text and "utt_011.wav" in caplog.text
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=60_000, seed=5)
    planned = {k.position: k.indices for k in sampler}
    for batch in batches:
        indices = batch.indices.tolist()
        assert 3 not in indices and 11 not in indices
        assert len(indices) == len(planned[batch.position])  # the row was filled, not dropped
        if batch.num_failed:
            new = set(indices) - set(planned[batch.position])
            longest_planned = max(dataset.sizes[list(planned[batch.position])])
            assert new and all(dataset.sizes[i] <= longest_planned for i in new)
    assert [b.indices.tolist() for b in _run(dataset, 2)] == [b.indices.tolist() for b in batches]


def test_loader_resume_mid_epoch_continues_exactly(tmp_path):
    dataset = _corpus_dataset(tmp_path, n=40)
    expected = _run(dataset, 0)
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=60_000, seed=5)
    loader = build_dataloader(dataset, sampler, seed=9, num_workers=2)
    seen = []
    for batch in loader:  # workers prefetch ahead; the state must follow what we consumed
        seen.append(batch)
        if len(seen) == 3:
            break
    state = sampler.state_dict()
    assert state["position"] == 3
    resumed_sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=60_000, seed=5)
    resumed_sampler.load_state_dict(state)
    rest = list(build_dataloader(dataset, resumed_sampler, seed=9, num_workers=2))
    assert len(seen) + len(rest) == len(expected)
    for a, b in zip(seen + rest, expected, strict=True):
        assert torch.equal(a.wav, b.wav) and a.position == b.position


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_batches_reach_the_gpu(tmp_path):
    dataset = _corpus_dataset(tmp_path, pad=True)
    sampler = BucketBatchSampler(dataset.sizes, max_batch_samples=60_000, seed=5)
    loader = build_dataloader(dataset, sampler, seed=9, num_workers=2, pin_memory=True)
    for batch in loader:
        assert batch.wav.is_pinned() and batch.indices.is_pinned()
        on_gpu = batch.to("cuda", non_blocking=True)
        assert on_gpu.wav.is_cuda and torch.equal(on_gpu.wav.cpu(), batch.wav)


@pytest.mark.parametrize(
    ("fmt", "rate", "channels"), [("FLAC", 16000, 1), ("WAV", 16000, 2), ("FLAC", 22050, 1)]
)
def test_a_cropped_decode_gives_the_samples_of_a_full_decode(tmp_path, fmt, rate, channels):
    from w2vkit.data.audio import decode_checked

    rng = np.random.default_rng(0)
    data = (rng.uniform(-0.5, 0.5, (3 * rate, channels))).astype(np.float32)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt)
    full = load_audio(path)
    for start, length in ((0, 16000), (12345, 20000), (len(full) - 7000, 7000)):
        cropped = decode_checked(path, crop=(start, length))
        assert np.array_equal(cropped, full[start : start + length]), (start, length)
    with pytest.raises(ValueError, match="shorter than its manifest"):
        decode_checked(path, crop=(len(full) - 100, 200))
