"""`w2vkit shard` and streaming from shards: the layout other tools read, the index, resumable
writing, the epoch plan (every item once, the same batch count everywhere), exact resume, cropped
decoding, and the faults (corrupt member, changed or truncated shard, unreachable server)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import make_manifest
from shard_servers import serve_http

from w2vkit import cli
from w2vkit.data.audio import decode_checked
from w2vkit.data.config import DataConfig
from w2vkit.data.manifest import read_manifest
from w2vkit.data.shards.fetch import ShardMismatch, ShardUnavailable
from w2vkit.data.shards.index import read_index
from w2vkit.data.shards.loader import build_shard_loaders
from w2vkit.data.shards.plan import plan_epoch, shard_batches
from w2vkit.data.shards.stream import _decode

SMALL = {
    "min_samples": 4000,
    "max_samples": 8000,
    "max_batch_samples": 24000,
    "required_batch_size_multiple": 1,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 tones of 0.6-2.0 s (train + valid manifests, a .ltr per split) and their shards."""
    root = tmp_path_factory.mktemp("shards")
    manifest = make_manifest(root, num_files=24, valid_percent=0.25)
    for split in ("train", "valid"):
        rows = read_manifest(manifest / f"{split}.tsv").paths
        (manifest / f"{split}.ltr").write_text("".join(f"{Path(p).stem} |\n" for p in rows))
    args = ["shard", str(manifest), "--out", str(root / "out"), "--shard-size", "4s"]
    assert cli.main([*args, "--workers", "2"]) == 0
    return root


def _loader(shards: str, split: str = "train", **overrides):
    cfg = DataConfig(shards=shards, **(SMALL | {"num_workers": 0} | overrides))
    return build_shard_loaders(cfg, seed=3, rank=0, world_size=1)[split]


def test_tar_and_webdataset_read_the_shards_and_the_index_describes_them(corpus):
    wds = pytest.importorskip("webdataset")
    out, manifest = corpus / "out" / "train", read_manifest(corpus / "manifest" / "train.tsv")
    document = json.loads((out / "index.json").read_text())
    names = [s["name"] for s in document["shards"]]
    assert names == sorted(p.name for p in out.glob("shard-*.tar")) and len(names) > 4
    assert document["labels"] == ["ltr"]
    seen = {}
    for row in document["shards"]:
        path = out / row["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
        assert path.stat().st_size == row["bytes"]
        listed = subprocess.run(
            ["tar", "-tf", str(path)], capture_output=True, text=True, check=True
        )
        members = listed.stdout.split()
        assert len(members) == 2 * row["items"]
        assert members[0].endswith(".wav") and members[1] == members[0][:-3] + "json"
        samples = 0
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            meta = json.loads(sample["json"])
            source = manifest.root / meta["source"]
            assert sample["wav"] == source.read_bytes()  # WAV is stored as it is
            assert meta["num_frames"] == sf.info(source).frames and meta["sample_rate"] == 16000
            assert meta["ltr"] == f"{Path(meta['source']).stem} |"
            seen[sample["__key__"]] = meta["num_frames"]
            samples += meta["num_frames"]
        assert samples == row["samples"]
    # Every manifest row once, keys are the item numbers, longest first over the whole split.
    assert sorted(seen) == [f"{i:09d}" for i in range(len(manifest))]
    assert [seen[k] for k in sorted(seen)] == sorted(manifest.num_frames.tolist(), reverse=True)
    index = read_index(str(corpus / "out"), "train")
    assert index.num_frames.tolist() == [seen[k] for k in sorted(seen)]


def test_a_killed_shard_run_keeps_its_finished_shards_and_verify_names_a_changed_one(
    corpus, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(corpus / "out", out)
    shards = sorted((out / "train").glob("shard-*.tar"))
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards[1:]}
    original = shards[0].read_bytes()
    shards[0].unlink()  # as if killed while writing it
    (out / "train" / "index.json").unlink()
    args = ["shard", str(corpus / "manifest"), "--out", str(out), "--shard-size", "4s"]
    assert cli.main([*args, "--workers", "1", "--verify"]) == 0
    assert shards[0].read_bytes() == original  # rewritten byte for byte
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards[1:]} == kept
    assert "every shard matches its index" in capsys.readouterr().out
    data = bytearray(shards[2].read_bytes())
    data[700] ^= 0xFF
    shards[2].write_bytes(bytes(data))
    assert cli.main([*args, "--workers", "1", "--verify"]) == 1
    assert f"{shards[2]}: sha256 differs from the index" in capsys.readouterr().err
    # Another plan into the same folder is refused.
    assert cli.main(["shard", str(corpus / "manifest"), "--out", str(out)]) == 2
    assert "holds shards of another manifest or --shard-size" in capsys.readouterr().err


@pytest.mark.parametrize("world_size, workers", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_each_epoch_every_item_once_and_every_reader_the_same_number_of_batches(
    world_size, workers
):
    rng = np.random.default_rng(0)
    sizes = rng.integers(2000, 9000, size=400)
    shard_items = rng.integers(5, 40, size=17)
    shard_items[-1] += 400 - shard_items.sum()
    usable = sizes >= 2500
    batches = shard_batches(
        sizes,
        shard_items,
        usable,
        max_batch_samples=30000,
        max_batch_size=None,
        required_batch_size_multiple=2,
    )
    orders = []
    for epoch in range(2):
        streams = world_size * workers
        plans = plan_epoch(
            batches,
            num_streams=streams,
            seed=5,
            epoch=epoch,
            shuffle=True,
            shuffle_buffer=4,
            required_batch_size_multiple=2,
            wanted=range(streams),
        )
        assert len({len(p) for p in plans.values()}) == 1
        items = np.concatenate([b.items for p in plans.values() for b in p])
        assert sorted(items.tolist()) == np.flatnonzero(usable).tolist()
        first_item = np.concatenate([[0], np.cumsum(shard_items)])
        for p in plans.values():
            for b in p:  # a batch: one shard, within the budget, the row rule kept
                assert (
                    (first_item[b.shard] <= b.items) & (b.items < first_item[b.shard + 1])
                ).all()
                assert len(b.items) * sizes[b.items].max() <= 30000
                assert len(b.items) == 1 or len(b.items) % 2 == 0
        orders.append([b.items.tolist() for b in plans[0]])
    assert orders[0] != orders[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_hands_out_the_batches_of_an_uninterrupted_one(corpus, workers):
    shards = str(corpus / "out")
    straight = _loader(shards, num_workers=workers)
    expected = [
        (b.epoch, b.position, b.indices.tolist(), b.wav) for _ in range(2) for b in straight
    ]
    first = _loader(shards, num_workers=workers)
    got, stop = [], len(straight.sampler) + 3  # mid-way through epoch 2, odd: worker 1 next
    for _ in range(2):
        for b in first:
            got.append((b.epoch, b.position, b.indices.tolist(), b.wav))
            if len(got) == stop:
                break
        if len(got) == stop:
            break
    state = first.sampler.state_dict()
    assert state["num_readers"] == max(workers, 1) and len(state["readers"]) == max(workers, 1)
    resumed = _loader(shards, num_workers=workers)
    resumed.sampler.load_state_dict(state)
    while len(got) < len(expected):
        got += [(b.epoch, b.position, b.indices.tolist(), b.wav) for b in resumed]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    assert all(torch.equal(g[3], e[3]) for g, e in zip(got, expected, strict=True))
    for epoch in (0, 1):  # every item once an epoch
        seen = sorted(i for e in expected if e[0] == epoch for i in e[2])
        assert seen == list(range(len(straight.sampler.sizes)))


def test_resuming_with_another_worker_count_is_refused(corpus):
    state = _loader(str(corpus / "out"), num_workers=2).sampler.state_dict()
    with pytest.raises(Exception, match="saved with num_readers=2, this run has 1"):
        _loader(str(corpus / "out"), num_workers=0).sampler.load_state_dict(state)


@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
def test_a_cropped_decode_equals_the_full_decode_cut(fmt):
    wav = np.random.default_rng(1).uniform(-0.5, 0.5, size=(23_456, 2)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wav, 16000, format=fmt, subtype="PCM_16")
    data = buffer.getvalue()
    full = decode_checked(io.BytesIO(data), 16000)

    class Spec:  # the fields _decode reads
        sample_rate, normalize, min_decoded_samples = 16000, False, 1
        num_samples = np.array([23_456])
        index = type("I", (), {"sample_rates": np.array([16000]), "num_frames": np.array([23_456])})

    cut = _decode(Spec, 0, fmt.lower(), data, 1234, 5000)  # type: ignore[arg-type]
    assert torch.equal(cut, torch.from_numpy(full[1234:6234]))


def _damaged_copy(corpus: Path, tmp_path: Path, damage) -> str:
    out = tmp_path / "out"
    shutil.copytree(corpus / "out", out)
    damage(sorted((out / "train").glob("shard-*.tar"))[1])
    return str(out)


def _run_epoch(loader) -> list:
    return [b for b in loader]


def test_a_changed_shard_is_refused_and_a_truncated_one_named(corpus, tmp_path):
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[1000] ^= 1
        path.write_bytes(bytes(data))

    loader = _loader(_damaged_copy(corpus, tmp_path / "a", flip), shuffle_buffer=1)
    with pytest.raises(ShardMismatch, match=r"shard-000001\.tar: sha256 .* differs from the index"):
        _run_epoch(loader)

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:3000])

    loader = _loader(_damaged_copy(corpus, tmp_path / "b", truncate))
    with pytest.raises(ShardMismatch, match=r"shard-000001\.tar: truncated \(3000 of \d+ bytes\)"):
        _run_epoch(loader)


def test_a_corrupt_member_is_skipped_and_counted(corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(corpus / "out", out)
    split = out / "train"
    document = json.loads((split / "index.json").read_text())
    row = document["shards"][0]
    path = split / row["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    bad_key = members[0][0].name.split(".")[0]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            if member.name.endswith(".wav") and member.name.startswith(bad_key):
                data = b"RIFF" + bytes(len(data) - 4)  # a header libsndfile refuses
            tar.addfile(member, io.BytesIO(data))
    row["bytes"], row["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (split / "index.json").write_text(json.dumps(document))
    loader = _loader(str(out))
    batches = _run_epoch(loader)
    assert len(batches) == len(loader.sampler)
    assert int(bad_key) not in {i for b in batches for i in b.indices.tolist()}
    assert set(loader.sampler.failures.reasons) == {int(bad_key)}
    assert loader.sampler.failures.reasons[int(bad_key)].startswith("cannot decode")
    assert loader.path_of(int(bad_key)) == f"{split / row['name']}#{bad_key}"


def test_an_unreachable_server_is_retried_then_named_or_skipped(corpus, tmp_path):
    with serve_http(corpus / "out") as (url, _):
        loader = _loader(url, shard_retries=1, shard_retry_wait=0.0)
    # The server is gone: the index was read, the shards cannot be.
    with pytest.raises(ShardUnavailable, match=r"shard-\d+\.tar: unreachable after 2 tries"):
        _run_epoch(loader)
    out = tmp_path / "out"
    shutil.copytree(corpus / "out", out)
    with serve_http(out) as (url, _):
        loader = _loader(url, shard_retries=1, shard_retry_wait=0.0, shard_errors="skip")
        plan = loader.sampler.spec.plan(0, [0])[0]
        lost = plan[-1].shard  # not the first batch's: a lost batch repeats the one before
        first = int(loader.sampler.spec.index.first_item[lost])
        count = int(loader.sampler.spec.index.shard_items[lost])
        (out / "train" / f"shard-{lost:06d}.tar").unlink()
        batches = _run_epoch(loader)
    assert len(batches) == len(loader.sampler)  # the rank keeps its batch count
    reasons = loader.sampler.failures.reasons
    assert sorted(reasons) == list(range(first, first + count))
    assert all(
        r.startswith(
            f"shard unreachable: {url}/train/shard-{lost:06d}.tar: unreachable after 2 tries"
        )
        for r in reasons.values()
    )


def test_bad_shard_input_is_one_line_and_exit_2(corpus, tmp_path, capsys):
    manifest = str(corpus / "manifest")
    assert cli.main(["shard", manifest, "--out", str(tmp_path), "--shard-size", "big"]) == 2
    assert capsys.readouterr().err.strip() == (
        "w2vkit shard: --shard-size 'big': expected a positive size in bytes (256MB, 1GB) or in "
        "audio time (2h, 30min, 600s)"
    )
    args = ["pretrain", "tiny", f"train.out_dir={tmp_path / 'run'}"]
    assert cli.main([*args, f"data.shards={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"w2vkit pretrain: {tmp_path / 'none' / 'train' / 'index.json'} does not exist: write the "
        "shards with `w2vkit shard`"
    ]
    assert cli.main([*args, "data.shards=foo://bucket/shards"]) == 2
    assert "cannot read foo:// URLs" in capsys.readouterr().err


def test_a_remote_shard_is_fetched_once_into_the_cache_and_read_from_it_after(corpus, tmp_path):
    cache = tmp_path / "cache"
    with serve_http(corpus / "out") as (url, sent):
        loader = _loader(url, shard_cache=str(cache))
        first = [b.indices.tolist() for b in loader]
        after_one = {p: n for p, n in sent.items() if "shard-" in p}
        second = [b.indices.tolist() for b in loader]  # epoch 1, from the cache
        after_two = {p: n for p, n in sent.items() if "shard-" in p}
    index = json.loads((corpus / "out" / "train" / "index.json").read_text())
    assert after_one == after_two == {f"/train/{s['name']}": s["bytes"] for s in index["shards"]}
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{s['sha256']}.tar" for s in index["shards"]
    )
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b)
    assert first != second  # another epoch, another order


def test_a_glob_reads_several_shard_sets_as_one_corpus_and_file_urls_work(corpus, tmp_path):
    for disk in ("disk1", "disk2"):
        shutil.copytree(corpus / "out", tmp_path / disk)
    one = read_index(str(corpus / "out"), "train")
    both = read_index(str(tmp_path / "disk*"), "train")
    assert len(both) == 2 * len(one) and len(both.urls) == 2 * len(one.urls)
    assert both.urls[0].startswith(str(tmp_path / "disk1")) and both.urls[-1].startswith(
        str(tmp_path / "disk2")
    )
    loader = _loader(str(tmp_path / "disk*"))
    seen = sorted(i for b in loader for i in b.indices.tolist())
    assert seen == list(range(len(both)))
    via_url = _loader(f"file://{corpus / 'out'}")
    local = _loader(str(corpus / "out"))
    assert [b.indices.tolist() for b in via_url] == [b.indices.tolist() for b in local]
