"""HuBERT parity with fairseq: the same weights, batch, mask and labels give fairseq's loss (to 1e-4
per scored frame) and gradients (to 1e-5), and a fairseq HuBERT checkpoint loads into w2vkit.

fairseq runs in its own interpreter (`tests/fixtures/fairseq/hubert_parity.py`). Opt-in:
`pytest -m parity_fairseq` (needs `.fairseq-venv`, see CONTRIBUTING.md, or `W2VKIT_FAIRSEQ_PYTHON`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vkit.interop import load_model
from w2vkit.interop.fairseq import DEFAULTS, config_from_fairseq
from w2vkit.interop.fairseq_hubert import HUBERT_KEYS
from w2vkit.pretrain.hubert.config import HubertConfig
from w2vkit.pretrain.hubert.fairseq import load_fairseq_hubert
from w2vkit.pretrain.hubert.loss import hubert_loss
from w2vkit.pretrain.hubert.model import HubertModel

pytestmark = pytest.mark.parity_fairseq

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "fixtures" / "fairseq" / "hubert_parity.py"
# A small BASE-shaped model (group-norm extractor, post-LN), no dropout so both sides agree.
MODEL = dict(
    label_rate=100,
    conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
    encoder_layers=2,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    conv_pos=16,
    conv_pos_groups=4,
    final_dim=32,
    untie_final_proj=True,
    feature_grad_mult=0.1,
    mask_prob=0.8,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
)


def fairseq_python() -> Path:
    python = Path(
        os.environ.get("W2VKIT_FAIRSEQ_PYTHON", ROOT / ".fairseq-venv" / "bin" / "python")
    )
    if not python.exists():
        pytest.fail(
            f"parity_fairseq needs fairseq-fixed installed at {python} (W2VKIT_FAIRSEQ_PYTHON)"
        )
    return python


def _w2vkit_model(num_classes: list[int], nomask_weight: float) -> tuple[HubertModel, HubertConfig]:
    fields = {k: v for k, v in MODEL.items() if k not in ("label_rate", "untie_final_proj")}
    cfg = config_from_fairseq({**DEFAULTS, **fields, "quantize_targets": False})
    hubert = HubertConfig(
        num_classes=num_classes,
        untie_final_proj=True,
        pred_nomask_weight=nomask_weight,
        feature_penalty_weight=10.0,
    )
    torch.manual_seed(0)
    return HubertModel(cfg, hubert, label_rate=100).train(), hubert


@pytest.mark.parametrize(
    "num_classes, nomask_weight",
    [([20], 0.0), ([20, 12], 0.5)],
    ids=["one_set", "two_sets_unmasked"],
)
def test_loss_and_gradients_match_fairseq(num_classes, nomask_weight, tmp_path):
    model, hubert = _w2vkit_model(num_classes, nomask_weight)
    gen = torch.Generator().manual_seed(1)
    # 32160 samples: 100 conv frames but 1 + 31760 // 160 = 199 labels at 100 Hz, so both sides
    # drop the last frame (fairseq `forward_targets`).
    wav = torch.randn(3, 32160, generator=gen)
    labels = [torch.randint(0, k, (3, 199), generator=gen) for k in num_classes]
    output = model(wav, None, labels, generator=gen)
    terms = hubert_loss(output, hubert)
    (terms.loss / terms.sample_size).backward()
    assert output.time_mask.shape == (3, 99) and output.time_mask.any()

    spec = {
        "model": MODEL,
        "num_classes": num_classes,
        "pred_masked_weight": 1.0,
        "pred_nomask_weight": nomask_weight,
        "loss_weights": [10.0],
    }
    state = HUBERT_KEYS.from_w2vkit(model.state_dict(), source="w2vkit")
    arrays = {
        "spec": np.array(json.dumps(spec)),
        "wav": wav.numpy(),
        "mask": output.time_mask.numpy(),
    }
    arrays |= {f"state/{k}": v.detach().numpy() for k, v in state.items()}
    arrays |= {f"labels/{i}": t.numpy() for i, t in enumerate(labels)}
    np.savez(tmp_path / "in.npz", **arrays)
    subprocess.run(
        [str(fairseq_python()), str(SCRIPT), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    theirs = dict(np.load(tmp_path / "out.npz"))

    sample_size = float(theirs["sample_size"])
    assert terms.sample_size == sample_size
    assert float(terms.loss.detach()) / sample_size == pytest.approx(
        float(theirs["loss"]) / sample_size, abs=1e-4
    )
    their_masked = sum(float(theirs[f"log/loss_m_{i}"]) for i in range(len(num_classes)))
    assert float(terms.masked) / sample_size == pytest.approx(their_masked / sample_size, abs=1e-4)
    if nomask_weight:
        their_unmasked = sum(float(theirs[f"log/loss_u_{i}"]) for i in range(len(num_classes)))
        assert float(terms.unmasked) / sample_size == pytest.approx(
            their_unmasked / sample_size, abs=1e-4
        )
    grads = HUBERT_KEYS.to_w2vkit(
        {
            k[len("grad/") :]: torch.from_numpy(v)
            for k, v in theirs.items()
            if k.startswith("grad/")
        },
        source="fairseq",
    )
    ours = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert sorted(ours) == sorted(grads)
    for key, grad in ours.items():
        # fairseq's gradient is of the summed loss; ours of the per-frame mean.
        torch.testing.assert_close(grad, grads[key] / sample_size, atol=1e-5, rtol=0, msg=key)


def test_a_fairseq_hubert_checkpoint_loads_into_w2vkit(tmp_path):
    model, hubert = _w2vkit_model([20], 0.0)
    fairseq_state = {
        k.replace(".2.1.", ".2."): v  # fairseq's group-norm key
        for k, v in HUBERT_KEYS.from_w2vkit(model.state_dict(), source="w2vkit").items()
    }
    # A fairseq-era checkpoint layout: cfg.model with _name hubert, task and criterion sections.
    checkpoint = {
        "model": fairseq_state,
        "cfg": {
            "model": {"_name": "hubert", **MODEL},
            "task": {"_name": "hubert_pretraining", "label_rate": 100, "normalize": False},
            "criterion": {
                "_name": "hubert",
                "pred_masked_weight": 1.0,
                "pred_nomask_weight": 0.0,
                "loss_weights": [10],
            },
        },
    }
    torch.save(checkpoint, tmp_path / "hubert.pt")
    loaded = load_fairseq_hubert(tmp_path / "hubert.pt")
    assert loaded.hubert == hubert and loaded.frames_per_label == 2.0
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # `load_model` reads the encoder alone: the same hidden states.
    encoder = load_model(tmp_path / "hubert.pt")
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.eval().extract_features(wav).hidden_states
        got = encoder.extract_features(wav).hidden_states
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
