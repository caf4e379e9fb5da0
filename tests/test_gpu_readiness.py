"""What the GPU step relies on, checked on the CPU where it can be (bf16 fp32 islands, device
syncs), and `pytest -m gpu` tests for the CUDA paths (flash SDPA, syncs, bf16 update, activation
checkpointing memory), skipped without a GPU. `bench/gpu_window.sh` runs the latter and the benchmarks."""

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
from w2vkit.model.config import preset, tiny
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


class SyncCounter(TorchDispatchMode):
    """Counts what would make the host wait for a CUDA device, by w2vkit function: the aten ops that
    read a value or need a data-dependent shape, and `.tolist()` / `.numpy()`, which the dispatcher
    does not show for CPU tensors (a `TorchFunctionMode` sees them).

    Ops run under `HOST_SIDE` functions are left out: the model runs them on host tensors (masks
    and negatives drawn with `host_rng.host_generator`), which on CPU look like any other tensor;
    `test_gpu_update_syncs_once` checks that claim on CUDA.
    """

    READS = frozenset({"_local_scalar_dense", "item", "nonzero", "masked_select", "equal"})
    READS |= {"is_nonzero", "_unique2", "unique_consecutive", "unique_dim", "allclose"}
    # item(), bool(), int() dispatch `_local_scalar_dense`; these two read CPU tensors without it.
    HOST_READS = frozenset({"tolist", "numpy"})
    # SpanMasker.draw: masks; sample_negatives: with the masks' host counts; LayerDrop's draw.
    HOST_SIDE = frozenset({"draw", "sample_negatives", "_layers_to_drop"})

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()
        outer = self

        class _HostReads(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in outer.HOST_READS:
                    outer._count(f"Tensor.{func.__name__}")
                return func(*args, **(kwargs or {}))

        self._host_reads = _HostReads()

    def __enter__(self):
        self._host_reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._host_reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if (
            name in self.READS
            or (name in {"index", "index_put", "_index_put_impl"} and _bool_index(args[1]))
            or (name == "repeat_interleave" and kwargs.get("output_size") is None)
            or (name in {"_to_copy", "copy_"} and _to_host(func, args, kwargs))
        ):
            self._count(name)
        return func(*args, **kwargs)

    def _count(self, what: str) -> None:
        ours = [f for f in traceback.extract_stack() if f.filename.startswith(str(SOURCE))]
        if any(f.name in self.HOST_SIDE for f in ours):
            return
        where = f"{Path(ours[-1].filename).name}:{ours[-1].name}" if ours else "-"
        self.sites[f"{where} {what}"] += 1


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _to_host(func, args, kwargs) -> bool:
    source = args[0] if func.overloadpacket.__name__ == "_to_copy" else args[1]
    target = kwargs.get("device") if func.overloadpacket.__name__ == "_to_copy" else args[0].device
    return source.device.type != "cpu" and target is not None and torch.device(target).type == "cpu"


def _base_like(**transformer) -> Wav2Vec2PretrainConfig:
    """BASE's conv stack (strides 5, 2, ..., 512 channels), masking, negatives and quantizer, with 2
    Transformer layers (BASE's 12 only take longer on CPU) and LayerDrop on."""
    cfg = Wav2Vec2PretrainConfig(model=preset("base"))
    cfg.train.precision = "fp32"
    t = replace(cfg.model.transformer, num_layers=2, layerdrop_prob=0.5, **transformer)
    return replace(cfg, model=replace(cfg.model, transformer=t))


@pytest.mark.parametrize("update_freq", [1, 3])
def test_one_update_reads_the_device_once(update_freq):
    cfg = _base_like()
    torch.manual_seed(0)
    model = Wav2Vec2Model.from_config(cfg.model)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        schedule=PolynomialDecaySchedule(optimizer, cfg.optim, cfg.total_steps),
        scaler=None,
        generator=torch.Generator(),
        sampler=None,
    )
    gen = torch.Generator().manual_seed(0)
    batches = [
        Batch(
            wav=torch.randn(2, 32000, generator=gen),
            padding_mask=None,
            indices=torch.arange(2),
            epoch=0,
            position=0,
        )
        for _ in range(update_freq)
    ]
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)
    drawn = set()
    for _ in range(3):  # LayerDrop at 0.5 over 3 updates: dropped and kept layers both occur
        with SyncCounter() as syncs:
            result = run_update(
                state, batches, objective, cfg=cfg.train, clip_norm=1.0, device=torch.device("cpu")
            )
        assert result.finite
        # The loop's one read of the update's loss, norm and stop requests; nothing per micro-batch.
        assert syncs.sites == Counter({"update.py:run_update Tensor.tolist": 1}), syncs.sites
        drawn.add(tuple(p.grad is None for p in model.encoder.layers.parameters()))
    assert len(drawn) > 1


def test_the_sync_counter_sees_what_would_sync_on_cuda():
    x = torch.tensor([1.0, 0.0, 2.0])
    with SyncCounter() as syncs:
        x[x > 0]  # boolean index: nonzero
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)  # known size: no read
        x.sum().item()
        bool(x.any())
        x.tolist()
        x.index_select(0, torch.tensor([0, 2]))  # integer gather: no read
    assert sum(syncs.sites.values()) == 5, syncs.sites


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
@pytest.mark.parametrize("update_freq", [1, 2])
def test_gpu_update_syncs_once(update_freq):
    """BASE (12 layers, LayerDrop 0.05) at 2 x 15.6 s: CUDA's own sync detector sees the loop's
    one read per update, however many micro-batches."""
    cfg = Wav2Vec2PretrainConfig(model=preset("base"))
    cfg.train.precision = "bf16"
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
    wav = torch.randn(2, 249600, device="cuda")
    batch = Batch(wav=wav, padding_mask=None, indices=torch.arange(2), epoch=0, position=0)
    objective = pretraining_objective(cfg.loss, cfg.model.quantizer)

    def update() -> None:
        run_update(
            state, [batch] * update_freq, objective, cfg=cfg.train, clip_norm=1.0, device=wav.device
        )

    update()  # warm-up: lazy CUDA initialisation syncs once
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, syncs


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm_mode", ["group_norm", "layer_norm"])
def test_gpu_bf16_conv_norms_take_bf16_input_and_match_fp32(norm_mode):
    from w2vkit.model.feature_extractor import ConvFeatureExtractor

    cfg = replace(preset("base").feature_extractor, norm_mode=norm_mode)
    torch.manual_seed(0)
    extractor = ConvFeatureExtractor(cfg).cuda()
    wav = torch.randn(2, 32000, device="cuda")
    with torch.no_grad():
        reference = extractor(wav)
        with _OpRecorder() as ops, torch.autocast("cuda", dtype=torch.bfloat16):
            low = extractor(wav)
    # no fp32 copy of the activation: CUDA's kernel accumulates the statistics in fp32 itself
    assert ops.dtypes_of(f"native_{norm_mode}") == {torch.bfloat16}
    cosine = torch.cosine_similarity(low.float().flatten(1), reference.flatten(1), dim=1)
    assert bool((cosine > 0.999).all()), cosine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_host_draws_follow_the_cuda_generator_seed():
    from w2vkit.model.host_rng import host_generator

    def draws(seed: int) -> list[list[float]]:
        generator = torch.Generator("cuda").manual_seed(seed)
        host = [torch.rand(4, generator=host_generator(generator)).tolist() for _ in range(2)]
        assert generator.device.type == "cuda"
        return host

    assert draws(1) == draws(1)  # the same seed, the same draws
    assert draws(1)[0] != draws(1)[1] and draws(1) != draws(2)  # the generator moves on
