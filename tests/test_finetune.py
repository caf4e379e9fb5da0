"""CTC fine-tuning: loss against torch and a brute-force path sum, greedy decoding, tri-stage LR,
the freeze schedule, loss normalisation, exact resume, presets."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import make_letter_corpus

from w2vkit import cli
from w2vkit.config import ConfigError
from w2vkit.data.vocab import Vocabulary
from w2vkit.finetune.config import FinetuneConfig, build_finetune_config
from w2vkit.finetune.decode import greedy_decode, word_times
from w2vkit.finetune.labels import LabelledBatch
from w2vkit.finetune.objective import ctc_loss, make_objective
from w2vkit.finetune.schedule import TriStageSchedule, tri_stage_lr
from w2vkit.interop import ModelRecord, save_w2vkit
from w2vkit.model.config import tiny
from w2vkit.model.ctc import Wav2Vec2ForCTC
from w2vkit.model.wav2vec2 import Wav2Vec2Model
from w2vkit.train import checkpoint
from w2vkit.train.optim import build_optimizer
from w2vkit.train.state import TrainState, reseed
from w2vkit.train.update import run_update


def test_ctc_loss_equals_torch_on_hand_built_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 5)  # (B, T, V)
    lengths = torch.tensor([7, 5, 3])
    targets = torch.tensor([[1, 2, 2, 3], [4, 4, 1, 1], [3, 1, 1, 1]])  # padding past the length
    target_lengths = torch.tensor([4, 2, 1])
    expected = sum(
        F.ctc_loss(
            logits[b, : lengths[b]].log_softmax(-1)[:, None],  # (T_b, 1, V)
            targets[b : b + 1, : target_lengths[b]],
            lengths[b : b + 1],
            target_lengths[b : b + 1],
            reduction="sum",
        )
        for b in range(3)
    )
    got = ctc_loss(logits, lengths, targets, target_lengths)
    torch.testing.assert_close(got, expected)


def test_ctc_loss_equals_brute_force_path_sum():
    # -log sum over every frame labelling that collapses (repeats merged, blanks 0 removed) to y.
    torch.manual_seed(1)
    num_frames, vocab_size, target = 4, 3, [1, 2]
    logits = torch.randn(1, num_frames, vocab_size, dtype=torch.float64)
    probs = logits[0].softmax(-1)
    total = 0.0
    for path in itertools.product(range(vocab_size), repeat=num_frames):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == target:
            total += math.prod(float(probs[t, k]) for t, k in enumerate(path))
    got = ctc_loss(logits, torch.tensor([num_frames]), torch.tensor([target]), torch.tensor([2]))
    assert float(got) == pytest.approx(-math.log(total), rel=1e-6)


def test_ctc_loss_zero_infinity_drops_impossible_rows():
    logits = torch.zeros(2, 2, 4)  # two frames cannot emit three letters
    targets = torch.tensor([[1, 2, 3], [1, 0, 0]])
    lengths = torch.tensor([3, 1])
    assert math.isinf(
        float(ctc_loss(logits, torch.tensor([2, 2]), targets, lengths, zero_infinity=False))
    )
    finite = ctc_loss(logits, torch.tensor([2, 2]), targets, lengths)
    # Only row 1 counts: paths of 2 frames giving "1": (1,1), (0,1), (1,0) of 4**2 equally likely.
    assert float(finite) == pytest.approx(-math.log(3 / 16))


def _one_hot(sequence: list[int], vocab_size: int = 6) -> torch.Tensor:
    return F.one_hot(torch.tensor(sequence), vocab_size).float()[None]  # (1, T, V)


def test_greedy_decoding_collapses_repeats_and_removes_blanks():
    # frames: a a _ a b b _ _ c  (0 = blank) -> a a b c, first frames 0, 3, 4, 8
    (hyp,) = greedy_decode(_one_hot([4, 4, 0, 4, 5, 5, 0, 0, 3]))
    assert hyp.tokens == [4, 4, 5, 3] and hyp.frames == [0, 3, 4, 8]
    (short,) = greedy_decode(_one_hot([4, 4, 0, 5, 5, 3]), torch.tensor([4]))  # padding ignored
    assert short.tokens == [4, 5]


def test_word_times_from_frames():
    vocab = Vocabulary(["|", "A", "B"])  # | 4, A 5, B 6
    (hyp,) = greedy_decode(_one_hot([5, 5, 0, 6, 4, 4, 0, 6, 6, 5, 4], 7))
    assert vocab.text(hyp.tokens) == "AB BA"
    assert word_times(hyp, vocab, 0.02) == [
        {"word": "AB", "start": 0.0, "end": 0.08},
        {"word": "BA", "start": 0.14, "end": 0.2},
    ]
    # An undertrained model emits </s> (2) and <pad> (1) between letters: the words are the text's.
    (noisy,) = greedy_decode(_one_hot([5, 2, 6, 4, 1, 6, 3, 5, 4], 7))
    assert [w["word"] for w in word_times(noisy, vocab, 0.02)] == vocab.text(noisy.tokens).split()
    assert vocab.text(noisy.tokens) == "AB B<unk>A"


def test_tri_stage_lr_at_phase_boundaries():
    # 1000 updates, phases 100 / 400 / 500, peak 1e-3, initial 1e-5, final 5e-5.
    kw = dict(
        lr=1e-3,
        total_steps=1000,
        phase_ratios=(0.1, 0.4, 0.5),
        init_lr_scale=0.01,
        final_lr_scale=0.05,
    )
    expected = {
        0: 1e-5,
        50: 1e-5 + (1e-3 - 1e-5) * 0.5,
        99: 1e-5 + (1e-3 - 1e-5) * 0.99,
        100: 1e-3,
        499: 1e-3,
        500: 1e-3,  # first decay step: exp(0)
        750: 1e-3 * 0.05**0.5,
        1000: 1e-3 * 0.05,
        1001: 5e-5,
        5000: 5e-5,
    }
    for step, lr in expected.items():
        assert tri_stage_lr(step, **kw) == pytest.approx(lr, rel=1e-12), step
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = TriStageSchedule(optimizer, **kw)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    schedule.set_step(750)
    again = TriStageSchedule(optimizer, **kw)
    again.load_state_dict(schedule.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.05**0.5)


def test_presets_mirror_fairseq_recipes():
    def build(name: str) -> FinetuneConfig:
        return build_finetune_config([{"preset": name}], init_model=tiny())

    ten_hours, hundred = build("base_10h"), build("base_100h")
    assert (ten_hours.optim.lr, ten_hours.train.max_steps, ten_hours.ctc.freeze_encoder_steps) == (
        5e-5,
        20000,
        10000,
    )
    assert (hundred.optim.lr, hundred.train.max_steps, hundred.ctc.freeze_encoder_steps) == (
        3e-5,
        80000,
        0,
    )
    masking = build("base_10m").model.masking
    assert (masking.time_prob, masking.channel_prob, masking.channel_span_channels) == (
        0.65,
        0.25,
        64,
    )
    assert ten_hours.model.feature_extractor.grad_scale == 0.0
    assert (
        ten_hours.model.transformer.num_layers == tiny().transformer.num_layers
    )  # from the source
    # A command-line key wins over the preset's fine-tuning layer.
    cfg = build_finetune_config(
        [{"preset": "cpu"}, {"model": {"masking": {"time_prob": 0.1}}}], init_model=tiny()
    )
    assert cfg.model.masking.time_prob == 0.1
    with pytest.raises(ConfigError, match="preset: 'nope' is not one of"):
        build("nope")


def _batch(vocab_size: int, seed: int, rows: int = 2) -> LabelledBatch:
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(rows, 8000, generator=g)
    padding_mask = torch.zeros(rows, 8000, dtype=torch.bool)
    padding_mask[1:, 6000:] = True
    targets = torch.randint(4, vocab_size, (rows, 5), generator=g)
    return LabelledBatch(
        wav=wav.masked_fill(padding_mask, 0.0),
        padding_mask=padding_mask,
        indices=torch.arange(rows),
        targets=targets,
        target_lengths=torch.tensor([5, 3][:rows] + [4] * (rows - 2)),
    )


def _state(cfg: FinetuneConfig, vocab: Vocabulary) -> TrainState:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(cfg.model, len(vocab))
    optimizer = build_optimizer(model, cfg.optim)
    o = cfg.optim
    schedule = TriStageSchedule(
        optimizer, lr=o.lr, total_steps=cfg.total_steps, phase_ratios=o.phase_ratios,
        init_lr_scale=o.init_lr_scale, final_lr_scale=o.final_lr_scale,
    )  # fmt: skip
    return TrainState(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=None,
        generator=torch.Generator(),
        sampler=None,
    )


def test_freeze_schedule_is_honoured():
    vocab = Vocabulary(["|", "A", "B", "C"])
    cfg = build_finetune_config(
        [
            {
                "preset": "cpu",
                "ctc": {"freeze_encoder_steps": 2},
                "optim": {"init_lr_scale": 1.0},
                "train": {"max_steps": 4},
            }
        ],
        init_model=tiny(),
    )
    state = _state(cfg, vocab)
    objective = make_objective(cfg, vocab)
    model = state.model

    def snapshot(prefix: str) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}

    start_extractor, start_encoder = (
        snapshot("wav2vec2.feature_extractor."),
        snapshot("wav2vec2.encoder."),
    )
    head = snapshot("lm_head.")
    for step in range(4):
        run_update(
            state,
            [_batch(len(vocab), step)],
            objective,
            cfg=cfg.train,
            clip_norm=0.0,
            device=torch.device("cpu"),
        )
        encoder = snapshot("wav2vec2.encoder.")
        same = all(torch.equal(encoder[k], start_encoder[k]) for k in encoder)
        assert same == (step < 2), step  # frozen during updates 1 and 2, trained from update 3
        assert all(
            torch.equal(v, start_extractor[k])
            for k, v in snapshot("wav2vec2.feature_extractor.").items()
        )
        assert not torch.equal(snapshot("lm_head.")["lm_head.weight"], head["lm_head.weight"])


@pytest.mark.parametrize("sentence_avg", [True, False])
def test_update_is_gradient_of_loss_per_sentence_or_letter(sentence_avg):
    vocab = Vocabulary(["|", "A", "B", "C"])
    cfg = build_finetune_config(
        [{"preset": "cpu", "ctc": {"freeze_encoder_steps": 0, "sentence_avg": sentence_avg}}],
        init_model=tiny(),
    )
    cfg.model.transformer.layerdrop_prob = 0.0
    state = _state(cfg, vocab)
    objective = make_objective(cfg, vocab)
    micro = [_batch(len(vocab), 1), _batch(len(vocab), 2, rows=3)]
    reference = _state(cfg, vocab)
    reseed(reference.generator, cfg.train.seed, 0, 0)
    outs = [objective.step(reference.model.train(), b, 0, reference.generator) for b in micro]
    total = sum(o.loss for o in outs) / sum(float(o.sample_size) for o in outs)
    params = [p for p in reference.model.parameters() if p.requires_grad]
    expected = torch.autograd.grad(total, params, allow_unused=True)
    run_update(state, micro, objective, cfg=cfg.train, clip_norm=0.0, device=torch.device("cpu"))
    assert sum(float(o.sample_size) for o in outs) == (5 if sentence_avg else (5 + 3) + (5 + 3 + 4))
    got = [p.grad for p in state.model.parameters() if p.requires_grad]
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert g is None
        else:
            # fp32 summation order (two micro-batches against one loss): relative to the
            # tensor's scale, with a floor for the key biases, whose true gradient is 0.
            atol = max(1e-7, 1e-6 * e.abs().max().item())
            torch.testing.assert_close(g, e, rtol=1e-4, atol=atol)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("letters")
    make_letter_corpus(root / "data", {"train": 8, "valid": 3})
    torch.manual_seed(0)
    save_w2vkit(ModelRecord(tiny(), Wav2Vec2Model(tiny()).state_dict()), root / "init.pt")
    return root


def _finetune(corpus: Path, out_dir: Path, *extra: str) -> int:
    return cli.main(
        [
            "finetune", "--init-from", str(corpus / "init.pt"), "preset=cpu",
            f"data.manifest_dir={corpus / 'data'}", f"train.out_dir={out_dir}",
            "data.max_batch_samples=40000", "ctc.freeze_encoder_steps=2", "optim.total_steps=6",
            "train.validate_interval_steps=3", "train.save_interval_steps=0", "train.log_interval=1",
            *extra,
        ]
    )  # fmt: skip


def test_resume_mid_finetune_is_exact(corpus, tmp_path):
    assert _finetune(corpus, tmp_path / "whole", "train.max_steps=6") == 0
    assert _finetune(corpus, tmp_path / "split", "train.max_steps=4") == 0
    assert _finetune(corpus, tmp_path / "split", "train.max_steps=6") == 0  # resumes at 4
    whole = checkpoint.load(tmp_path / "whole" / checkpoint.LAST)
    split = checkpoint.load(tmp_path / "split" / checkpoint.LAST)
    assert whole["progress"]["step"] == split["progress"]["step"] == 6
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert whole["config"]["vocab"][:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert "wer" in whole["metrics"]["valid"] and (tmp_path / "whole" / checkpoint.BEST).is_file()


def test_further_finetuning_from_an_hf_ctc_export_keeps_the_output_layer(corpus, tmp_path, capsys):
    assert _finetune(corpus, tmp_path / "first", "train.max_steps=2") == 0
    assert (
        cli.main(
            [
                "convert",
                str(tmp_path / "first" / checkpoint.LAST),
                str(tmp_path / "hf"),
                "--to",
                "hf",
                "--hf-class",
                "ctc",
            ]
        )
        == 0
    )
    capsys.readouterr()
    args = [
        "finetune",
        "--init-from",
        str(tmp_path / "hf"),
        "preset=cpu",
        f"data.manifest_dir={corpus / 'data'}",
    ]
    args += [
        f"train.out_dir={tmp_path / 'second'}",
        "train.max_steps=1",
        "data.max_batch_samples=40000",
    ]
    assert cli.main(args) == 0
    assert "initialised from the fine-tuned model" in capsys.readouterr().out
    first = checkpoint.load(tmp_path / "first" / checkpoint.LAST)["model"]
    second = checkpoint.load(tmp_path / "second" / checkpoint.LAST)["model"]
    # One Adam update (at the peak LR 2e-3 in a 1-update schedule) moves each weight by <= the LR:
    # the head was carried over, not re-initialised.
    assert float((first["lm_head.weight"] - second["lm_head.weight"]).abs().max()) <= 2e-3 + 1e-6
    assert torch.equal(
        first["wav2vec2.feature_extractor.layers.0.conv.weight"],
        second["wav2vec2.feature_extractor.layers.0.conv.weight"],
    )


def test_print_config_shows_the_source_model_under_the_preset(corpus, capsys):
    args = ["finetune", "--init-from", str(corpus / "init.pt"), "preset=base_1h", "--print-config"]
    assert cli.main([*args, "model.masking.channel_span_channels=8"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["transformer"]["model_dim"] == tiny().transformer.model_dim
    assert printed["model"]["masking"]["channel_prob"] == 0.25  # base_1h
    assert printed["model"]["masking"]["channel_span_channels"] == 8  # the command line
    assert printed["train"]["max_steps"] == 13000 and printed["optim"]["phase_ratios"] == [
        0.1,
        0.4,
        0.5,
    ]


def test_print_config_needs_no_init_from_as_the_help_footer_says(capsys):
    assert "`w2vkit finetune cpu --print-config`" in cli.HELP_NOTES["finetune"]
    assert cli.main(["finetune", "cpu", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "# without --init-from, `model` is the config's model.preset (random init) or"
    )
    printed = yaml.safe_load(out)
    assert printed["train"]["max_steps"] == 600 and printed["ctc"]["freeze_encoder_steps"] == 50
    assert printed["model"]["masking"]["time_prob"] == 0.3  # the cpu preset over the encoder
    assert printed["train"]["init_from"] == ""


def test_finetune_errors_are_usage_errors(corpus, tmp_path, capsys):
    assert cli.main(["finetune", "preset=cpu", f"train.out_dir={tmp_path}"]) == 2
    assert "--init-from is required" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    assert _finetune(corpus, tmp_path / "run", "data.train_split=nope") == 2
    data = corpus / "data"
    assert f"data.manifest_dir={data} has no nope.tsv (data.train_split=nope)" in (
        capsys.readouterr().err
    )
    shutil.copy(data / "train.tsv", data / "unlabelled.tsv")  # audio, but no unlabelled.ltr
    try:
        assert _finetune(corpus, tmp_path / "run", "data.train_split=unlabelled") == 2
    finally:
        (data / "unlabelled.tsv").unlink()
    assert "unlabelled.ltr: no label file" in capsys.readouterr().err
    (data / "dict.ltr.txt").rename(tmp_path / "dict.ltr.txt")  # a manifest without letter labels
    try:
        assert _finetune(corpus, tmp_path / "run2") == 2
    finally:
        (tmp_path / "dict.ltr.txt").rename(data / "dict.ltr.txt")
    assert f"has no dict.ltr.txt: write the labels with `w2vkit labels {data / 'train.tsv'}" in (
        capsys.readouterr().err
    )
