"""Training parity with fairseq: 20 updates of w2vkit's trainer and of fairseq's own components.

The w2vkit side runs its real update (`run_update` with the pretraining step function, AdamW,
polynomial schedule, Gumbel temperature per update) and records what it drew: the time masks,
negatives and Gumbel noise. `fixtures/fairseq/train_parity.py` replays exactly those draws through
fairseq's `Wav2Vec2Model`, `Wav2vecCriterion`, `FairseqAdam` and `PolynomialDecayLRSchedule`, from
the same initial weights and batches. Losses per update must agree to 1e-4 (per masked frame) and
the final parameters to 1e-5. Opt-in: `pytest -m parity_fairseq` (needs `.fairseq-venv`, see
CONTRIBUTING.md, or `W2VKIT_FAIRSEQ_PYTHON`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vkit.data.collate import Batch
from w2vkit.interop.fairseq import DEFAULTS, KEYS, config_from_fairseq
from w2vkit.model import quantizer as quantizer_module
from w2vkit.model.config import tiny
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.schedule import PolynomialDecaySchedule
from w2vkit.pretrain.wav2vec2 import Wav2Vec2PretrainConfig, pretraining_objective
from w2vkit.train.optim import build_optimizer
from w2vkit.train.state import TrainState
from w2vkit.train.update import run_update

pytestmark = pytest.mark.parity_fairseq

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "fixtures" / "fairseq" / "train_parity.py"
NUM_UPDATES = 20
NO_DROPOUT = dict(
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
)
SHAPES = {
    # w2vkit's `tiny` preset, in fairseq's words (the test checks the translation equals it).
    "tiny": dict(
        conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        conv_pos=16,
        conv_pos_groups=4,
        latent_vars=16,
        latent_groups=2,
        final_dim=32,
        num_negatives=10,
        feature_grad_mult=0.1,
        quantize_targets=True,
        **NO_DROPOUT,
    ),
    # conv 128 channels, 4 x 256 Transformer, 2 x 320 codes, 100 negatives.
    "small": dict(
        conv_feature_layers="[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2",
        encoder_layers=4,
        encoder_embed_dim=256,
        encoder_ffn_embed_dim=1024,
        encoder_attention_heads=4,
        conv_pos=32,
        conv_pos_groups=16,
        latent_vars=320,
        latent_groups=2,
        final_dim=128,
        num_negatives=100,
        feature_grad_mult=0.1,
        quantize_targets=True,
        **NO_DROPOUT,
    ),
}
OPTIM = dict(
    lr=5e-4,
    betas=[0.9, 0.98],
    eps=1e-6,
    weight_decay=0.01,
    clip_norm=10.0,
    warmup_steps=5,
    end_lr=0.0,
    power=1.0,
    total_steps=NUM_UPDATES,
)
LOSS_WEIGHTS = [0.1, 10.0]


def fairseq_python() -> Path:
    python = Path(
        os.environ.get("W2VKIT_FAIRSEQ_PYTHON", ROOT / ".fairseq-venv" / "bin" / "python")
    )
    if not python.exists():
        pytest.fail(
            f"parity_fairseq needs fairseq-fixed installed at {python} (W2VKIT_FAIRSEQ_PYTHON)"
        )
    return python


def batches(batch_size: int, num_samples: int) -> list[torch.Tensor]:
    """Tones plus noise, a different mixture per update, so the loss has something to learn."""
    rng = np.random.default_rng(0)
    t = np.arange(num_samples) / 16000
    out = []
    for _ in range(NUM_UPDATES):
        freqs = rng.uniform(100, 3000, size=(batch_size, 3, 1))
        wav = np.sin(2 * np.pi * freqs * t).sum(1) + 0.1 * rng.standard_normal(
            (batch_size, num_samples)
        )
        out.append(torch.from_numpy(wav.astype(np.float32)))
    return out


def run_w2vkit(cfg: Wav2Vec2PretrainConfig, wavs: list[torch.Tensor], monkeypatch) -> dict:
    """The real update, recording masks, negatives and Gumbel noise as they are drawn."""
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_config(cfg.model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    outputs, noise = [], []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        outputs.append(forward(*args, **kwargs))
        return outputs[-1]

    def recording_noise(like, generator):
        noise.append(real_noise(like, generator))
        return noise[-1]

    real_noise = quantizer_module.gumbel_noise
    monkeypatch.setattr(model, "forward", recording_forward)
    monkeypatch.setattr(quantizer_module, "gumbel_noise", recording_noise)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps),
        scaler=None,
        generator=torch.Generator(),
        sampler=None,
    )
    state.schedule.set_step(0)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    losses, sizes = [], []
    for k, wav in enumerate(wavs):
        batch = Batch(
            wav=wav, padding_mask=None, indices=torch.arange(len(wav)), epoch=0, position=k
        )
        result = run_update(
            state,
            [batch],
            objective,
            cfg=cfg.train,
            clip_norm=cfg.optim.clip_norm,
            device=torch.device("cpu"),
        )
        assert result.finite
        losses.append(result.loss)
        sizes.append(result.sample_size)
    return {
        "initial": initial,
        "final": model.state_dict(),
        "losses": np.array(losses),
        "sample_sizes": np.array(sizes),
        "masks": [o.time_mask for o in outputs],
        "negatives": [o.negative_indices for o in outputs],
        "noise": noise,
    }


def run_fairseq(fields: dict, ours: dict, wavs: list[torch.Tensor], tmp_path: Path) -> dict:
    spec = {
        "model": fields,
        "optim": OPTIM,
        "loss_weights": LOSS_WEIGHTS,
        "num_updates": NUM_UPDATES,
    }
    arrays = {"spec": np.array(json.dumps(spec))}
    initial = KEYS.from_w2vkit(ours["initial"], source="w2vkit")
    arrays |= {f"state/{k}": v.numpy() for k, v in initial.items()}
    for k, wav in enumerate(wavs):
        arrays[f"wav/{k}"] = wav.numpy()
        arrays[f"mask/{k}"] = ours["masks"][k].numpy()
        arrays[f"neg/{k}"] = ours["negatives"][k].numpy()
        arrays[f"noise/{k}"] = ours["noise"][k].detach().numpy()
    np.savez(tmp_path / "in.npz", **arrays)
    subprocess.run(
        [str(fairseq_python()), str(SCRIPT), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    return dict(np.load(tmp_path / "out.npz"))


@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_twenty_updates_match_fairseq(shape, tmp_path, monkeypatch):
    fields = SHAPES[shape]
    model_cfg = config_from_fairseq({**DEFAULTS, **fields})
    if shape == "tiny":
        assert model_cfg == tiny()
    cfg = Wav2Vec2PretrainConfig(model=model_cfg)
    cfg.optim = type(cfg.optim)(**{**OPTIM, "betas": tuple(OPTIM["betas"])})
    cfg.loss.diversity_weight, cfg.loss.feature_penalty_weight = LOSS_WEIGHTS
    cfg.train.max_steps, cfg.train.precision = NUM_UPDATES, "fp32"
    wavs = batches(batch_size=2, num_samples=32_000)
    ours = run_w2vkit(cfg, wavs, monkeypatch)
    theirs = run_fairseq(fields, ours, wavs, tmp_path)

    their_sizes = np.array([theirs[f"sample_size/{k}"] for k in range(NUM_UPDATES)])
    np.testing.assert_array_equal(ours["sample_sizes"], their_sizes)
    their_losses = np.array([theirs[f"loss/{k}"] for k in range(NUM_UPDATES)])
    np.testing.assert_allclose(ours["losses"] / their_sizes, their_losses / their_sizes, atol=1e-4)
    final = KEYS.to_w2vkit(
        {
            k[len("state/") :]: torch.from_numpy(v)
            for k, v in theirs.items()
            if k.startswith("state/")
        },
        source="fairseq",
    )
    for key, value in ours["final"].items():
        torch.testing.assert_close(value, final[key], atol=1e-5, rtol=0, msg=key)
