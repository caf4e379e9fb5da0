"""Bucketed batching, rank sharding and resumable sampler state (w2vkit.data.sampler)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from w2vkit.data.sampler import BucketBatchSampler, batch_by_size, seeded_generator


def _fairseq_batch_by_size(order, sizes, max_tokens, max_sentences, multiple):
    """fairseq's pure-Python `batch_by_size_fn` loop, item by item (the reference)."""
    batches, batch, sample_lens = [], [], []
    sample_len = 0
    for idx in order:
        sample_lens.append(sizes[idx])
        sample_len = max(sample_len, sizes[idx])
        num_tokens = (len(batch) + 1) * sample_len
        full = num_tokens > max_tokens or (max_sentences and len(batch) + 1 > max_sentences)
        if batch and full:
            mod_len = max(multiple * (len(batch) // multiple), len(batch) % multiple)
            batches.append(batch[:mod_len])
            batch = batch[mod_len:]
            sample_lens = sample_lens[mod_len:]
            sample_len = max(sample_lens)
        batch.append(idx)
    if batch:
        batches.append(batch)
    return batches


def _sizes(n, seed=0, low=1_000, high=40_000, distinct=200):
    rng = np.random.default_rng(seed)
    return rng.choice(np.linspace(low, high, distinct).astype(np.int64), size=n)  # many ties


@pytest.mark.parametrize("max_sentences", [None, 5, 16])
@pytest.mark.parametrize("multiple", [1, 8])
def test_batch_by_size_matches_fairseq_loop(max_sentences, multiple):
    sizes = _sizes(500, seed=multiple)
    ours = batch_by_size(
        sizes,
        max_batch_samples=200_000,
        max_batch_size=max_sentences,
        required_batch_size_multiple=multiple,
        generator=torch.Generator().manual_seed(3),
    )
    # Same tie-break permutation as ours, then fairseq's ordered_indices + loop.
    perm = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(3)).numpy()
    order = np.lexsort((perm, sizes))[::-1]
    reference = [
        list(map(int, b))
        for b in _fairseq_batch_by_size(order, sizes, 200_000, max_sentences, multiple)
    ]
    tail = reference[-1]
    if len(tail) > multiple and len(tail) % multiple:  # fairseq keeps the tail whole; we split it
        cut = len(tail) - len(tail) % multiple
        reference[-1:] = [tail[:cut], tail[cut:]]
    assert [b.tolist() for b in ours] == reference


def test_batch_by_size_rejects_oversize_item():
    with pytest.raises(ValueError, match="item 1 has 500 samples > max_batch_samples=400"):
        batch_by_size(np.array([10, 500]), max_batch_samples=400)


def _all_batches(sampler):
    return [key.indices for key in sampler]


@pytest.mark.parametrize("n, budget", [(300, 150_000), (37, 90_000), (1000, 400_000)])
def test_budget_rows_and_length_order(n, budget):
    sizes = _sizes(n, seed=n)
    sampler = BucketBatchSampler(
        sizes, max_batch_samples=budget, required_batch_size_multiple=8, max_batch_size=24
    )
    for indices in _all_batches(sampler):
        rows = len(indices)
        assert rows * sizes[list(indices)].max() <= budget  # padded/cropped size counts
        assert rows < 8 or rows % 8 == 0
        assert rows <= 24
        assert list(sizes[list(indices)]) == sorted(sizes[list(indices)], reverse=True)


@pytest.mark.parametrize("n, seed", [(300, 0), (301, 1), (37, 2), (9, 3)])
def test_two_ranks_see_every_item_exactly_once_with_equal_counts(n, seed):
    sizes = _sizes(n, seed=seed)
    for epoch in (0, 1, 5):
        ranks = [
            BucketBatchSampler(sizes, max_batch_samples=100_000, seed=seed, rank=r, world_size=2)
            for r in range(2)
        ]
        seen = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            keys = list(sampler)
            assert len(keys) == len(sampler)
            assert [k.position for k in keys] == list(range(len(sampler)))
            seen += [i for k in keys for i in k.indices]
        assert len(ranks[0]) == len(ranks[1])
        assert sorted(seen) == list(range(n))


def test_split_for_ranks_keeps_budget_and_row_rule():
    # 17 batches of 8 rows each: 17 % 4 != 0, so 3 batches are split in two.
    sizes = np.full(136, 1000)
    everything = []
    for r in range(4):
        sampler = BucketBatchSampler(sizes, max_batch_samples=8000, world_size=4, rank=r)
        batches = _all_batches(sampler)
        assert len(batches) == 5
        assert all(len(b) < 8 or len(b) % 8 == 0 for b in batches)
        everything += [i for b in batches for i in b]
    assert sorted(everything) == list(range(136))


@pytest.mark.parametrize(
    "sizes, world_size, expected_rows",
    [
        # batches of 4, 8, 3 rows (long, middle, short items): the middle one has the most rows
        ([2000] * 4 + [1000] * 8 + [500] * 3, 2, [4, 4, 4, 3]),
        # batches of 8 and 6 rows: the first one has the most rows
        ([1000] * 8 + [500] * 6, 3, [6, 4, 4]),
        # 4, 8, 3 rows for 5 ranks: 8 -> 4 + 4, then the first of the 4-row batches -> 2 + 2
        ([2000] * 4 + [1000] * 8 + [500] * 3, 5, [4, 4, 3, 2, 2]),
    ],
)
def test_rank_split_takes_the_largest_batch_not_the_last(sizes, world_size, expected_rows):
    """Splitting the last batch (often, but not here, the one with the most rows) would give
    uneven halves of a small batch and leave the big one whole."""
    ranks = [
        BucketBatchSampler(
            np.array(sizes),
            max_batch_samples=8000,
            required_batch_size_multiple=1,
            world_size=world_size,
            rank=r,
            shuffle=False,
        )
        for r in range(world_size)
    ]
    batches = [b for s in ranks for b in _all_batches(s)]
    assert sorted(map(len, batches), reverse=True) == expected_rows
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))


def test_single_row_batches_that_cannot_split_are_repeated(caplog):
    sizes = np.full(5, 1000)  # budget fits one row: 5 batches for 2 ranks
    with caplog.at_level(logging.WARNING):
        ranks = [
            BucketBatchSampler(sizes, max_batch_samples=1500, world_size=2, rank=r)
            for r in range(2)
        ]
    message = "5 batches cannot be split over 2 ranks: repeating 1 of them this epoch"
    assert caplog.messages == [message] * 2  # once per rank
    seen = [i for s in ranks for b in _all_batches(s) for i in b]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert set(seen) == set(range(5)) and len(seen) == 6


def test_same_seed_and_epoch_same_order_other_epoch_differs():
    sizes = _sizes(400)
    a = BucketBatchSampler(sizes, max_batch_samples=120_000, seed=7)
    b = BucketBatchSampler(sizes, max_batch_samples=120_000, seed=7)
    assert _all_batches(a) == _all_batches(b)  # epoch 0 twice
    assert a.epoch == 1  # finishing an epoch moves to the next
    epoch1 = _all_batches(a)
    b.set_epoch(1)
    assert _all_batches(b) == epoch1
    assert epoch1 != _all_batches(BucketBatchSampler(sizes, max_batch_samples=120_000, seed=7))
    other_seed = BucketBatchSampler(sizes, max_batch_samples=120_000, seed=8)
    assert _all_batches(other_seed) != _all_batches(
        BucketBatchSampler(sizes, max_batch_samples=120_000, seed=7)
    )


def test_ties_are_reshuffled_per_epoch_but_not_without_shuffle():
    sizes = np.full(64, 1000)  # all tied: batch contents are decided by the tie-break alone
    sampler = BucketBatchSampler(sizes, max_batch_samples=8000, seed=1)
    contents = [sorted(map(sorted, _all_batches(sampler))) for _ in range(2)]
    assert contents[0] != contents[1]
    fixed = BucketBatchSampler(sizes, max_batch_samples=8000, seed=1, shuffle=False)
    assert _all_batches(fixed) == _all_batches(fixed)


def test_unshuffled_batches_come_longest_first():
    sizes = _sizes(200)
    sampler = BucketBatchSampler(sizes, max_batch_samples=100_000, shuffle=False)
    firsts = [sizes[b[0]] for b in _all_batches(sampler)]
    assert firsts == sorted(firsts, reverse=True)


@pytest.mark.parametrize("world_size", [1, 2])
def test_state_round_trip_mid_epoch(world_size):
    sizes = _sizes(500)
    for rank in range(world_size):
        straight = BucketBatchSampler(
            sizes, max_batch_samples=100_000, seed=3, rank=rank, world_size=world_size
        )
        straight.set_epoch(2)
        expected = list(straight)

        first = BucketBatchSampler(
            sizes, max_batch_samples=100_000, seed=3, rank=rank, world_size=world_size
        )
        first.set_epoch(2)
        taken = []
        for key in first:
            taken.append(key)
            if len(taken) == 7:
                break
        state = first.state_dict()
        assert (state["epoch"], state["position"]) == (2, 7)

        resumed = BucketBatchSampler(
            sizes, max_batch_samples=100_000, seed=3, rank=rank, world_size=world_size
        )
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # what a training loop does at the top of the epoch: keeps position
        assert taken + list(resumed) == expected
        assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["position"] == 0


def test_state_saved_at_end_of_epoch_resumes_at_next_epoch():
    sizes = _sizes(100)
    sampler = BucketBatchSampler(sizes, max_batch_samples=100_000)
    list(sampler)
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)
    resumed = BucketBatchSampler(sizes, max_batch_samples=100_000)
    resumed.load_state_dict({"epoch": 0, "position": len(resumed)})
    assert resumed.epoch == 1 and resumed.position == 0


def test_load_state_rejects_other_world_size_or_dataset():
    sizes = _sizes(100)
    state = BucketBatchSampler(sizes, max_batch_samples=100_000, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size=2, this sampler has 1"):
        BucketBatchSampler(sizes, max_batch_samples=100_000).load_state_dict(state)
    state = BucketBatchSampler(sizes, max_batch_samples=100_000).state_dict()
    with pytest.raises(ValueError, match="the data changed since the checkpoint"):
        BucketBatchSampler(sizes[:50], max_batch_samples=100_000).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset or batching options changed"):
        BucketBatchSampler(sizes, max_batch_samples=50_000).load_state_dict(state)


def test_oversize_items_are_cropped_or_skipped_with_a_message(caplog):
    sizes = np.array([1000, 50_000, 2000, 3000])
    with caplog.at_level(logging.WARNING):
        cropped = BucketBatchSampler(sizes, max_batch_samples=10_000)
    assert "1 items are longer than max_batch_samples=10000 and will be cropped" in caplog.text
    assert sorted(i for b in _all_batches(cropped) for i in b) == [0, 1, 2, 3]
    assert (1,) in _all_batches(cropped)  # alone: its cropped size 10000 fills the budget
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        skipping = BucketBatchSampler(sizes, max_batch_samples=10_000, skip_oversize=True)
    assert "will be skipped" in caplog.text
    assert sorted(i for b in _all_batches(skipping) for i in b) == [0, 2, 3]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        BucketBatchSampler(np.array([1]), max_batch_samples=10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="dataset is empty"):
        BucketBatchSampler(np.array([], dtype=np.int64), max_batch_samples=10)


def test_seeded_generator_depends_on_every_part():
    def draw(*parts):
        return torch.randint(0, 2**30, (4,), generator=seeded_generator(*parts)).tolist()

    assert draw(1, 2) == draw(1, 2)
    parts = [(1, 2), (2, 1), (12,), (1, 2, 0), (2,), (4,)]  # 2 and 4: no parity collision
    assert len({tuple(draw(*p)) for p in parts}) == len(parts)


def test_defaults_are_fairseq_recipe_values():
    """Multiple 8 and seed 1 for the sampler (fairseq's recipe), multiple 1 for bare batch_by_size."""
    sizes = _sizes(300)
    default = BucketBatchSampler(sizes, max_batch_samples=100_000)
    explicit = BucketBatchSampler(
        sizes, max_batch_samples=100_000, required_batch_size_multiple=8, seed=1
    )
    assert _all_batches(default) == _all_batches(explicit)
    odd = batch_by_size(np.full(7, 1000), max_batch_samples=7000)
    assert [len(b) for b in odd] == [7]


def test_budget_boundaries(caplog):
    """An item exactly at the budget is neither cropped nor skipped; 1 is a valid budget and size."""
    sizes = np.array([4000, 8000, 2000])
    with pytest.raises(ValueError, match="^max_batch_samples must be >= 1, got 0$"):
        BucketBatchSampler(sizes, max_batch_samples=0)
    with pytest.raises(ValueError, match="^max_batch_size must be >= 1 or None, got 0$"):
        BucketBatchSampler(sizes, max_batch_samples=8000, max_batch_size=0)
    with caplog.at_level(logging.WARNING):
        exact = BucketBatchSampler(
            sizes, max_batch_samples=8000, max_batch_size=1, skip_oversize=True
        )
    assert caplog.messages == []
    assert sorted(b for key in exact for b in key.indices) == [0, 1, 2]
    assert len(BucketBatchSampler(np.array([1, 1]), max_batch_samples=1)) == 2
    # one-sample items: the budget is rows x 1
    assert [len(b) for b in batch_by_size(np.ones(10), max_batch_samples=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="^required_batch_size_multiple must be >= 1, got 0$"):
        batch_by_size(sizes, max_batch_samples=8000, required_batch_size_multiple=0)
    with pytest.raises(
        ValueError, match=r"^no batches: the dataset is empty \(or every item was skipped\)$"
    ):
        BucketBatchSampler(sizes, max_batch_samples=1000, skip_oversize=True)


def test_oversize_warning_names_the_first_item_and_the_way_out(caplog):
    sizes = np.array([1000, 50_000, 2000, 60_000])
    with caplog.at_level(logging.WARNING):
        BucketBatchSampler(sizes, max_batch_samples=10_000)
    assert caplog.messages == [
        "2 items are longer than max_batch_samples=10000 and will be cropped to 10000 samples "
        "(first: 1, 50000 samples); pass skip_oversize=True to drop them instead"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        BucketBatchSampler(sizes, max_batch_samples=10_000, skip_oversize=True)
    assert caplog.messages == [
        "2 items are longer than max_batch_samples=10000 and will be skipped "
        "(first: 1, 50000 samples)"
    ]


def test_keys_carry_their_epoch_and_a_state_at_position_0_loads():
    sizes = _sizes(100)
    sampler = BucketBatchSampler(sizes, max_batch_samples=100_000)
    sampler.set_epoch(3)
    assert {key.epoch for key in sampler} == {3}
    fresh = BucketBatchSampler(sizes, max_batch_samples=100_000)
    fresh.load_state_dict({**sampler.state_dict(), "epoch": 2, "position": 0})
    assert (fresh.epoch, fresh.position) == (2, 0)
    beyond = {**sampler.state_dict(), "position": len(fresh) + 1}
    with pytest.raises(
        ValueError, match=rf"^position {len(fresh) + 1} is outside \[0, {len(fresh)}\]$"
    ):
        fresh.load_state_dict(beyond)


def test_load_state_rejects_another_seed():
    state = BucketBatchSampler(_sizes(100), max_batch_samples=100_000, seed=3).state_dict()
    message = (
        "^sampler state was saved with seed=3, this sampler has 1: the batches would differ, so "
        "resuming mid-epoch would repeat or skip data$"
    )
    with pytest.raises(ValueError, match=message):
        BucketBatchSampler(_sizes(100), max_batch_samples=100_000).load_state_dict(state)


@pytest.mark.parametrize(
    "num_items, expected_rows",
    # 2 rows: 1 + 1; 8 = one multiple: halves below it; 24: split at a multiple
    [(2, [1, 1]), (8, [4, 4]), (24, [16, 8])],
)
def test_rank_split_of_a_multiple_keeps_the_row_rule(num_items, expected_rows):
    ranks = [
        BucketBatchSampler(
            np.full(num_items, 1000),
            max_batch_samples=24_000,
            required_batch_size_multiple=8,
            world_size=2,
            rank=r,
        )
        for r in range(2)
    ]
    batches = [b for s in ranks for b in _all_batches(s)]
    assert sorted(map(len, batches), reverse=True) == expected_rows
    assert sorted(i for b in batches for i in b) == list(range(num_items))
