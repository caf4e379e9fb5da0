"""The training loop: one normalisation per update, accumulation, skipped non-finite updates, bf16 on
CPU, exact resume, SIGTERM. The toy model and `toy_train` live in helpers.py (test_train_distributed.py
uses them too)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY_YAML,
    TOY,
    TemperatureRecorder,
    ToyModel,
    make_manifest,
    mean_loss,
    random_rows,
    toy_config,
    toy_state,
    toy_step,
    toy_train,
    update,
)

from w2vkit import cli
from w2vkit.data.collate import Batch
from w2vkit.model.config import tiny
from w2vkit.model.feature_extractor import output_lengths
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.registry import build_config
from w2vkit.pretrain.wav2vec2 import pretraining_loss, pretraining_objective
from w2vkit.train import checkpoint
from w2vkit.train.config import load_layers
from w2vkit.train.state import Objective, StepOutput


def test_one_update_is_the_gradient_of_the_global_mean():
    # Micro-batches of 1 and 3 rows (uneven sample sizes) and of a different length: the update must
    # use d/dp [sum of all losses / sum of all sample sizes], not an average of per-micro-batch means.
    cfg = toy_config("train.update_freq=3")
    micro = [random_rows(1, 3200, 1), random_rows(3, 3200, 2), random_rows(2, 6400, 3)]
    state = toy_state(cfg)
    reference = toy_state(cfg).model
    total = sum(toy_step(reference, b, 0, None).loss for b in micro)
    size = sum(toy_step(reference, b, 0, None).sample_size for b in micro)
    expected = torch.autograd.grad(total / size, list(reference.parameters()))
    result = update(state, micro, TOY, cfg)
    assert result.finite and result.sample_size == size and state.step == 1
    for param, grad in zip(state.model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-8)


def test_two_half_batches_equal_one_full_batch_toy():
    cfg = toy_config()
    full = random_rows(4, 3200, 7)
    halves = [
        Batch(wav=full.wav[:1], padding_mask=None, indices=full.indices[:1]),
        Batch(wav=full.wav[1:], padding_mask=None, indices=full.indices[1:]),
    ]
    one, two = toy_state(cfg), toy_state(cfg)
    for _ in range(3):
        update(one, [full], TOY, cfg)
        update(two, halves, TOY, cfg)
    for a, b in zip(one.model.parameters(), two.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


class _ArgmaxQuantizerModel(Wav2Vec2Model):
    """Gumbel noise is drawn per call, so it differs between one batch and two halves of it; argmax
    codes (the quantizer's eval path) keep everything else of the real objective split-invariant."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.quantizer.eval()
        return self


def _fixed_mask_step(model, batch, step, generator) -> StepOutput:
    # Masks and negatives fixed per utterance (seeded by its dataset index), 8 masked frames per row;
    # the diversity term is per micro-batch in fairseq (not split-invariant), so it is off here.
    num_samples = batch.wav.shape[1]
    frames = int(output_lengths(torch.tensor(num_samples), tiny().feature_extractor.conv_layers))
    masks, negatives = [], []
    for row, index in enumerate(batch.indices.tolist()):
        g = torch.Generator().manual_seed(index)
        mask = torch.zeros(frames, dtype=torch.bool)
        mask[torch.randperm(frames, generator=g)[:8]] = True
        others = torch.randint(0, 7, (8, 5), generator=g)
        others += others >= torch.arange(8)[:, None]  # skip the frame itself
        masks.append(mask)
        negatives.append(others + 8 * row)
    output = model(
        batch.wav,
        None,
        temperature=2.0,
        time_mask=torch.stack(masks),
        negative_indices=torch.cat(negatives),
    )
    terms = pretraining_loss(output, diversity_weight=0.0, feature_penalty_weight=10.0)
    return StepOutput(loss=terms.loss, sample_size=terms.sample_size, sums={})


def test_two_half_batches_equal_one_full_batch_wav2vec2():
    cfg = toy_config()
    full = random_rows(4, 8000, 5)
    halves = [
        Batch(wav=full.wav[:2], padding_mask=None, indices=full.indices[:2]),
        Batch(wav=full.wav[2:], padding_mask=None, indices=full.indices[2:]),
    ]
    states, results = [], []
    for micro in ([full], halves):
        torch.manual_seed(0)
        state = toy_state(cfg, model=_ArgmaxQuantizerModel(tiny()))
        results.append(update(state, micro, Objective(_fixed_mask_step, mean_loss), cfg))
        states.append(state)
    assert results[0].sample_size == results[1].sample_size == 32
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-6)
    # Gradients, not parameters: Adam's first step is ~lr * sign(grad), which turns rounding-level
    # differences of near-zero gradients into lr-sized ones.
    named = dict(states[1].model.named_parameters())
    assert sum(p.grad is not None for p in named.values()) > 20
    for name, a in states[0].model.named_parameters():
        if a.grad is not None:
            torch.testing.assert_close(a.grad, named[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_non_finite_updates_are_skipped_counted_and_stop_the_run(manifest_dir, tmp_path):
    def nan_step(model, batch, step, generator):
        out = toy_step(model, batch, step, generator)
        return StepOutput(out.loss * math.nan, out.sample_size, out.sums)

    state, reason = toy_train(
        manifest_dir,
        tmp_path,
        "train.max_consecutive_nonfinite=3",
        objective=Objective(nan_step, mean_loss),
    )
    assert reason == "nonfinite" and state.step == 0 and state.num_nonfinite == 3
    assert not (tmp_path / checkpoint.LAST).exists()  # the failed state has a file of its own
    saved = checkpoint.load(tmp_path / checkpoint.FAILED)
    assert saved["progress"]["step"] == 0 and saved["progress"]["consecutive_nonfinite"] == 3
    torch.manual_seed(0)
    for name, value in ToyModel().state_dict().items():  # the skipped updates changed nothing
        assert torch.equal(saved["model"][name], value)


def test_one_bad_update_is_skipped_and_training_goes_on():
    cfg = toy_config()
    state = toy_state(cfg)
    before = [p.detach().clone() for p in state.model.parameters()]
    bad = random_rows(2, 3200, 1)
    bad.wav[0, 5] = math.inf
    result = update(state, [bad], TOY, cfg)
    assert not result.finite and state.step == 0 and state.num_nonfinite == 1
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))
    assert update(state, [random_rows(2, 3200, 2)], TOY, cfg).finite
    assert state.step == 1 and state.consecutive_nonfinite == 0


def test_the_fused_adamw_skips_a_non_finite_update_in_its_kernel():
    cfg = toy_config()
    state = toy_state(cfg)
    assert state.optimizer.defaults["fused"]
    assert update(state, [random_rows(2, 3200, 2)], TOY, cfg).finite  # moments to keep
    told: list[float] = []
    real_step = state.optimizer.step

    def step(*args, **kwargs):
        told.append(float(state.optimizer.found_inf))  # type: ignore[attr-defined]
        return real_step(*args, **kwargs)

    state.optimizer.step = step  # type: ignore[method-assign]
    params = [p.detach().clone() for p in state.model.parameters()]
    moments = {
        k: {name: v.clone() for name, v in s.items()} for k, s in state.optimizer.state.items()
    }
    bad = random_rows(2, 3200, 1)
    bad.wav[0, 5] = math.nan
    assert not update(state, [bad], TOY, cfg).finite
    assert told == [1.0]  # the kernel was told, not the host asked first
    assert all(torch.equal(a, b) for a, b in zip(params, state.model.parameters(), strict=True))
    for key, saved in moments.items():  # exp_avg, exp_avg_sq and the step count as they were
        for name, value in saved.items():
            assert torch.equal(state.optimizer.state[key][name], value), name
    assert update(state, [random_rows(2, 3200, 3)], TOY, cfg).finite and told == [1.0, 0.0]
    assert all(int(s["step"]) == 2 for s in state.optimizer.state.values())


def test_bf16_autocast_runs_the_real_model_on_cpu():
    cfg = build_config(load_layers(TINY_YAML, ["train.precision=bf16", "optim.warmup_steps=0"]))
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg.model)
    seen = []
    model.encoder.layers[0].fc1.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype)
    )
    state = toy_state(cfg, model=model)
    before = model.context_proj.weight.detach().clone()
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    result = update(state, [random_rows(2, 16000, 3)], objective, cfg)
    assert seen == [torch.bfloat16]
    assert result.finite and math.isfinite(result.loss) and result.gnorm > 0
    assert not torch.equal(before, model.context_proj.weight)


def test_fp16_dynamic_loss_scaling_skips_overflows_and_unscales():
    # fp16 autocast runs on the CPU too, which lets the GradScaler path be tested without a GPU.
    cfg = toy_config("train.precision=fp16")
    state = toy_state(cfg)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow
    before = [p.detach().clone() for p in state.model.parameters()]
    batch = random_rows(2, 3200, 4)
    result = update(state, [batch], TOY, cfg)
    assert not result.finite and state.step == 0 and state.num_nonfinite == 1
    assert state.scaler.get_scale() == 2.0**39  # halved after the overflow
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))

    state.scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    result = update(state, [batch], TOY, cfg)
    reference = toy_state(toy_config()).model
    out = toy_step(reference, batch, 0, None)
    expected = torch.autograd.grad(out.loss / out.sample_size, list(reference.parameters()))
    assert result.finite and state.step == 1
    for param, grad in zip(
        state.model.parameters(), expected, strict=True
    ):  # unscaled, then normalised once
        assert (param.grad - grad).norm() <= 1e-2 * grad.norm()  # fp16 activations: ~1e-3 relative


def test_max_epochs_stops_after_whole_passes(manifest_dir, tmp_path):
    state, reason = toy_train(
        manifest_dir,
        tmp_path,
        "train.max_steps=0",
        "train.max_epochs=2",
        "optim.total_steps=100",
        "train.update_freq=2",
    )
    batches_per_epoch = len(state.sampler)
    assert reason == "max_epochs" and state.epoch == 2
    assert state.step == 2 * math.ceil(batches_per_epoch / 2)  # an epoch's last group may be short
    assert state.sampler.state_dict()["epoch"] == 2 and state.sampler.state_dict()["position"] == 0
    # The end of the last epoch is the end of the run: its state is saved there.
    assert checkpoint.load(tmp_path / checkpoint.LAST)["progress"]["step"] == state.step


def test_a_file_corrupted_after_the_manifest_is_replaced_counted_and_logged(tmp_path, caplog):
    import json

    dest = make_manifest(tmp_path, num_files=8, valid_percent=0.0)
    root, first = (dest / "train.tsv").read_text().splitlines()[:2]
    bad = Path(root) / first.split("\t")[0]
    # the manifest still lists it with its old length
    bad.write_bytes(b"RIFF....not audio any more")
    out_dir = tmp_path / "run"
    with caplog.at_level("WARNING"):
        code = cli.main(
            [
                "pretrain",
                TINY_YAML,
                f"data.manifest_dir={dest}",
                f"train.out_dir={out_dir}",
                "train.max_steps=8",
                "train.log_interval=1",
                "data.valid_split=",
            ]
        )
    assert code == 0
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") == "train"]
    assert train_records[-1]["num_updates"] == 8
    # Every epoch meets the bad file once: the count grows and never resets.
    failed = [r["num_failed_files"] for r in train_records]
    assert failed == sorted(failed) and failed[-1] >= 1
    assert str(bad.name) in caplog.text


def test_clipping_applies_to_the_normalised_gradient_and_gnorm_is_before_clipping():
    # The reference gradient of the global mean has norm ~0.1-1; a clip at a tenth of it must scale
    # that gradient (not the summed one, which is sample_size times larger) to exactly the clip norm.
    micro = [random_rows(1, 3200, 1), random_rows(3, 3200, 2)]
    reference = toy_state(toy_config()).model
    total = sum(toy_step(reference, b, 0, None).loss for b in micro)
    size = sum(toy_step(reference, b, 0, None).sample_size for b in micro)
    expected = torch.autograd.grad(total / size, list(reference.parameters()))
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in expected])).item()
    cfg = toy_config("train.update_freq=2", f"optim.clip_norm={norm / 10}")
    state = toy_state(cfg)
    result = update(state, micro, TOY, cfg)
    assert result.gnorm == pytest.approx(norm, rel=1e-5)  # logged before clipping
    for param, grad in zip(state.model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad / 10, rtol=1e-4, atol=1e-9)
    unclipped = toy_state(cfg)
    update(unclipped, micro, TOY, toy_config("train.update_freq=2"))
    assert unclipped.model.head.weight.grad.norm() > 5 * state.model.head.weight.grad.norm()


@pytest.mark.parametrize("clip", [False, True])
def test_fused_adamw_applies_the_normalisation_as_the_foreach_path_does(clip):
    # The fused optimizer takes the normalise-and-clip factor inside its kernel (`grad_scale`); an
    # unfused one gets its gradients multiplied first. Both must make the same update.
    micro = [random_rows(1, 3200, 1), random_rows(3, 3200, 2)]
    cfg = toy_config("train.update_freq=2", f"optim.clip_norm={0.01 if clip else 0}")
    fused, unfused = toy_state(cfg), toy_state(cfg)
    assert fused.optimizer.defaults["fused"]
    unfused.optimizer.defaults["fused"] = False
    for group in unfused.optimizer.param_groups:
        group["fused"] = False
    for _ in range(3):
        a, b = update(fused, micro, TOY, cfg), update(unfused, micro, TOY, cfg)
        assert a.gnorm == pytest.approx(b.gnorm, rel=1e-6)
    assert not hasattr(fused.optimizer, "grad_scale")
    for p, q in zip(fused.model.parameters(), unfused.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)


def test_update_k_uses_the_gumbel_temperature_of_k_completed_updates():
    cfg = toy_config(
        "model.quantizer.temperature_start=2.0",
        "model.quantizer.temperature_decay=0.5",
        "model.quantizer.temperature_end=0.3",
        "train.update_freq=2",
    )
    torch.manual_seed(0)
    model = TemperatureRecorder(cfg.model)
    state = toy_state(cfg, model=model)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    for k in range(4):
        update(
            state, [random_rows(2, 8000, 2 * k), random_rows(2, 8000, 2 * k + 1)], objective, cfg
        )
    # max(2.0 * 0.5**k, 0.3) by hand, twice per update (two micro-batches): not k+1, not per forward.
    assert model.temperatures == [2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3]
    record = state.window.reduce(torch.device("cpu"))[1]
    assert record["temp"] == pytest.approx((2.0 + 1.0 + 0.5 + 0.3) / 4)


def test_logged_sums_stay_tensors_on_the_device_until_a_log_line():
    cfg = toy_config()
    state = toy_state(cfg, model=Wav2Vec2Model(cfg.model))
    update(
        state, [random_rows(2, 8000, 1)], pretraining_objective(cfg.loss, cfg.model.quantizer), cfg
    )
    window = state.window
    keys = {"loss", "loss_0", "loss_1", "sample_size", "correct", "count", "negatives_equal"}
    assert set(window.sums) == keys | {"negatives"}
    for key in ("loss", "loss_0", "loss_1", "correct"):  # not float(): no host sync per micro-batch
        assert isinstance(window.sums[key], torch.Tensor), key
    assert all(
        isinstance(window.means[k], torch.Tensor) for k in ("prob_perplexity", "code_perplexity")
    )
