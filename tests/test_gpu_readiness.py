"""What the GPU step relies on, checked on the CPU where it can be (bf16 fp32 islands, device
syncs), and `pytest -m gpu` tests for the CUDA paths (flash SDPA, syncs, bf16 update, activation
checkpointing memory), skipped without a GPU. `bench/gpu_check.sh` runs the latter and the benchmark."""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from w2vkit.data.collate import Batch
from w2vkit.model.config import tiny
from w2vkit.model.transformer import TransformerEncoder
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.pretrain.schedule import PolynomialDecaySchedule
from w2vkit.pretrain.wav2vec2 import Wav2Vec2PretrainConfig, pretraining_objective
from w2vkit.train.optim import build_optimizer
from w2vkit.train.state import TrainState
from w2vkit.train.update import run_update

SOURCE = Path(__file__).resolve().parents[1] / "src" / "w2vkit"


class _OpRecorder(TorchDispatchMode):
    """Every aten op run inside, with its floating input dtypes and the w2vkit function calling it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...], str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = tuple(
            a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()
        )
        ours = [f for f in traceback.extract_stack() if f.filename.startswith(str(SOURCE))]
        where = f"{Path(ours[-1].filename).name}:{ours[-1].name}" if ours else "-"
        self.calls.append((func.__name__.split(".")[0], dtypes, where))
        return func(*args, **(kwargs or {}))

    def dtypes_of(self, op: str) -> set[torch.dtype]:
        return {d for name, dtypes, _ in self.calls if name == op for d in dtypes}


def _config(**changes) -> Wav2Vec2PretrainConfig:
    cfg = Wav2Vec2PretrainConfig(model=tiny())
    cfg.train.precision = "fp32"
    return replace(cfg, model=replace(cfg.model, **changes)) if changes else cfg


def _step(cfg: Wav2Vec2PretrainConfig, device: str = "cpu", precision: str | None = None):
    """One forward, loss and backward of the tiny model on an unpadded 2 x 1 s batch."""
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_config(cfg.model).to(device).train()
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)).to(device)
    batch = Batch(wav=wav, padding_mask=None, indices=torch.arange(2), epoch=0, position=0)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    generator = torch.Generator(device).manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        out = objective.step(model, batch, 0, generator)
    out.loss.backward()
    return out


def test_bf16_autocast_keeps_group_norm_gumbel_softmax_cosine_and_losses_in_fp32():
    with _OpRecorder() as ops:
        out = _step(_config(), precision="bf16")
    assert torch.bfloat16 in ops.dtypes_of("addmm")  # the linears do run in bf16
    assert ops.dtypes_of("native_group_norm") == {torch.float32}
    assert ops.dtypes_of("_softmax") == {torch.float32}  # Gumbel softmax, quantizer perplexity
    assert ops.dtypes_of("linalg_vector_norm") == {torch.float32}  # cosine logits' normalisation
    assert ops.dtypes_of("_log_softmax") == {torch.float32}  # InfoNCE cross-entropy
    assert out.loss.dtype == torch.float32


# Where the step reads a device value on the host (a sync on GPU), by module:function. Each is an
# input check or a shape the next op needs; anything new here must be justified or removed.
# Boolean-mask indexing of the masked frames (wav2vec2.py: 2 per step) syncs too; the op
# dispatcher does not show it.
DOCUMENTED_SYNCS = Counter(
    {
        # "the entire sequence is masked" check
        "masking.py:compute_span_mask": 1,
        # require_same_masks: equal counts pick the O(T) kthvalue path, k on the host
        "masking.py:_keep_random": 2,
        # "utterance ... has 1 masked frame" check of within-utterance negatives
        "negatives.py:sample_negatives": 1,
    }
)


def test_the_step_reads_device_values_on_the_host_only_where_documented():
    with _OpRecorder() as ops:
        _step(_config())
    syncs = Counter(where for name, _, where in ops.calls if name == "_local_scalar_dense")
    assert syncs == DOCUMENTED_SYNCS


# ---------------------------------------------------------------- CUDA (pytest -m gpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_unpadded_bf16_training_step_runs_on_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if any call cannot use flash
        out = _step(_config(), device="cuda", precision="bf16")
    assert torch.isfinite(out.loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_update_syncs_at_most_the_documented_sites():
    cfg = _config()
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_config(cfg.model).cuda()
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps),
        scaler=None,
        generator=torch.Generator("cuda"),
        sampler=None,
    )
    wav = torch.randn(2, 16000, device="cuda")
    batch = Batch(wav=wav, padding_mask=None, indices=torch.arange(2), epoch=0, position=0)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)

    def update() -> None:
        run_update(state, [batch], objective, cfg=cfg.train, clip_norm=1.0, device=wav.device)

    update()  # warm-up: lazy CUDA initialisation syncs once
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    # documented ones + 2 boolean-mask gathers + LayerDrop's draw + the loop's one `.tolist()`
    assert len(syncs) <= sum(DOCUMENTED_SYNCS.values()) + 4, syncs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_loss_is_close_to_fp32():
    fp32 = _step(_config(), device="cuda")
    bf16 = _step(_config(), device="cuda", precision="bf16")
    assert bf16.loss.dtype == torch.float32
    assert float(bf16.loss) == pytest.approx(float(fp32.loss), rel=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_activation_checkpointing_lowers_peak_memory():
    def peak(checkpointing: bool) -> int:
        cfg = replace(tiny().transformer, num_layers=8, activation_checkpointing=checkpointing)
        torch.manual_seed(0)
        encoder = TransformerEncoder(cfg).cuda().train()
        x = torch.randn(4, 800, cfg.model_dim, device="cuda", requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        encoder(x)[-1].sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    assert peak(True) < 0.6 * peak(False)
