"""Property-based tests (hypothesis) of the three parsers/planners every run goes through:
the manifest reader, span masking and `batch_by_size`.

Small `max_examples` and no deadline: they run in the default suite on 2 shared cores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from w2vkit.data.manifest import MAX_FRAMES, Manifest, read_manifest, write_manifest
from w2vkit.data.sampler import BucketBatchSampler, batch_by_size
from w2vkit.model.config import tiny
from w2vkit.model.limits import min_frames
from w2vkit.model.masking import SpanMasker, compute_span_mask

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# A manifest path: any characters a TSV line can hold (no tab, newline, carriage return, lone
# surrogates, NUL, which no path holds), not empty, relative and inside the root.
PATH_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\0"),
    min_size=1,
    max_size=30,
).filter(lambda p: not p.startswith("/") and ".." not in p.split("/"))  # the reader refuses these


@st.composite
def manifests(draw, root: Path) -> Manifest:
    paths = draw(st.lists(PATH_TEXT, min_size=0, max_size=12, unique=True))
    frames = draw(
        st.lists(st.integers(0, MAX_FRAMES - 1), min_size=len(paths), max_size=len(paths))
    )
    rates = None
    if draw(st.booleans()):
        rates = draw(st.lists(st.integers(1, 384_000), min_size=len(paths), max_size=len(paths)))
    channels = None if rates is None else [1] * len(paths)
    return Manifest(root, paths, np.array(frames, dtype=np.int64), rates, channels)


@FAST
@given(data=st.data())
def test_manifest_round_trip(tmp_path, data):
    manifest = data.draw(manifests(tmp_path))
    write_manifest(tmp_path / "m.tsv", manifest)
    back = read_manifest(tmp_path / "m.tsv")
    assert back.root == tmp_path.resolve() and back.paths == manifest.paths
    assert back.num_frames.tolist() == manifest.num_frames.tolist()
    if manifest.sample_rates is None:
        assert back.sample_rates is None
    else:
        assert back.sample_rates.tolist() == manifest.sample_rates.tolist()
    (tmp_path / "m.meta.tsv").unlink(missing_ok=True)


# Garbage: lines of tokens that look like manifest parts, numbers past int64 included.
TOKENS = st.one_of(
    PATH_TEXT,
    st.integers(-(10**6), 10**30).map(str),
    st.sampled_from(["\t", " ", "", "-", "0x10", "1e5", "\x00", "/", "..", "\u00e9", "\ufeff"]),
)
LINES = st.lists(st.lists(TOKENS, max_size=5).map("".join), max_size=8)


@FAST
@given(lines=LINES, meta_lines=st.none() | LINES)
def test_manifest_garbage_raises_only_value_error(tmp_path, lines, meta_lines):
    path = tmp_path / "g.tsv"
    path.write_text("\n".join(lines), encoding="utf-8")
    sidecar = tmp_path / "g.meta.tsv"
    if meta_lines is None:
        sidecar.unlink(missing_ok=True)
    else:
        sidecar.write_text("\n".join(["path\tsample_rate\tnum_channels", *meta_lines]))
    try:
        manifest = read_manifest(path)
    except ValueError as err:
        assert str(err).startswith(str(tmp_path))  # names the file (and line)
        return
    assert len(manifest.paths) == len(manifest.num_frames)
    assert (manifest.num_frames >= 0).all()


@st.composite
def mask_cases(draw):
    batch_size = draw(st.integers(1, 6))
    num_frames = draw(st.integers(1, 120))
    valid = draw(st.lists(st.integers(1, num_frames), min_size=batch_size, max_size=batch_size))
    valid[draw(st.integers(0, batch_size - 1))] = num_frames  # padding is a suffix; one row full
    selection = draw(st.sampled_from(["static", "uniform", "normal", "poisson"]))
    span_length = draw(st.integers(1, 12))
    return {
        "valid": valid,
        "shape": (batch_size, num_frames),
        "mask_prob": draw(st.floats(0.0, 1.0)),
        "span_length": span_length,
        "selection": selection,
        "span_other": float(draw(st.integers(0, 2 * span_length))),
        "min_spans": draw(st.integers(0, 3)),
        "no_overlap": draw(st.booleans()),
        "min_space": draw(st.integers(0, 2)),
        "require_same_masks": draw(st.booleans()),
        "mask_dropout_prob": draw(st.sampled_from([0.0, 0.1, 0.5])),
        "seed": draw(st.integers(0, 2**31)),
    }


@FAST
@given(case=mask_cases())
def test_span_mask_stays_inside_the_valid_frames(case):
    valid = torch.tensor(case.pop("valid"))
    padding = torch.arange(case["shape"][1])[None, :] >= valid[:, None]  # (B, T)
    generator = torch.Generator().manual_seed(case.pop("seed"))
    try:
        mask = compute_span_mask(padding_mask=padding, generator=generator, **case)
    except ValueError as err:  # the one documented refusal: too few frames for the spans
        assert str(err).startswith("the entire sequence is masked")
        return
    assert mask.shape == case["shape"] and mask.dtype == torch.bool
    assert not (mask & padding).any()  # never in padding
    assert (mask.sum(1) < valid).all()  # never the whole valid length
    if case["require_same_masks"] and case["mask_dropout_prob"] == 0:
        assert len(set(mask.sum(1).tolist())) == 1


@FAST
@given(
    frames=st.integers(1, 200),
    prob=st.floats(0.0, 0.95),
    span=st.integers(1, 15),
    min_spans=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_rows_of_min_frames_are_never_fully_masked(frames, prob, span, min_spans, seed):
    """`min_frames` (what the data pipeline requires of a decode) is enough for static spans."""
    cfg = tiny()
    cfg = replace(
        cfg,
        masking=replace(
            cfg.masking, time_prob=prob, time_span_frames=span, time_min_spans=min_spans
        ),
    )
    need = min_frames(cfg)
    length = max(frames, need)
    # The model's own masker: with time_prob 0 it masks nothing (no min_spans either).
    masker = SpanMasker(cfg.masking, model_dim=8)
    mask = masker.time_mask(3, length, None, torch.Generator().manual_seed(seed), "cpu")
    assert mask is None or (mask.sum(1) < length).all()


@st.composite
def batching_cases(draw):
    sizes = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=80))
    budget = draw(st.integers(max(sizes), 20_000))
    return {
        "sizes": np.array(sizes),
        "max_batch_samples": budget,
        "max_batch_size": draw(st.none() | st.integers(1, 20)),
        "required_batch_size_multiple": draw(st.integers(1, 8)),
        "seed": draw(st.integers(0, 2**31)),
    }


@FAST
@given(case=batching_cases())
def test_batch_by_size_respects_the_budget_and_takes_every_item_once(case):
    sizes, seed = case.pop("sizes"), case.pop("seed")
    batches = batch_by_size(sizes, generator=torch.Generator().manual_seed(seed), **case)
    everything = np.concatenate(batches)
    assert sorted(everything.tolist()) == list(range(len(sizes)))  # each item exactly once
    multiple = case["required_batch_size_multiple"]
    for batch in batches:
        assert len(batch) * sizes[batch].max() <= case["max_batch_samples"]
        assert case["max_batch_size"] is None or len(batch) <= case["max_batch_size"]
        assert len(batch) < multiple or len(batch) % multiple == 0


@FAST
@given(case=batching_cases(), epoch=st.integers(0, 5))
def test_sampler_epoch_holds_every_item_exactly_once(case, epoch):
    seed = case.pop("seed")
    sampler = BucketBatchSampler(case.pop("sizes"), seed=seed, **case)
    sampler.set_epoch(epoch)
    seen = [i for key in sampler for i in key.indices]
    assert sorted(seen) == list(range(len(sampler.sizes)))


@pytest.mark.parametrize("world_size", [2, 3])
@FAST
@given(case=batching_cases())
def test_sampler_ranks_cover_every_item(case, world_size):
    seed, sizes = case.pop("seed"), case.pop("sizes")
    ranks = [
        BucketBatchSampler(sizes, seed=seed, rank=r, world_size=world_size, **case)
        for r in range(world_size)
    ]
    assert len({len(s) for s in ranks}) == 1  # equal batch counts: no rank waits for another
    seen = [i for s in ranks for key in s for i in key.indices]
    assert set(seen) == set(range(len(sizes)))
    if len(seen) > len(sizes):  # repeats only when no batch had two rows left to split
        assert all(len(key.indices) == 1 for s in ranks for key in s)
