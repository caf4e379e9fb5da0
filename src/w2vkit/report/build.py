"""Assemble a run's report: health findings first, then rescues, curves, codebook usage, probes and a PCA.

Inputs are found in the run directory written by `w2vkit pretrain` (train_log.jsonl, config.yaml,
checkpoint_best.pt or checkpoint_last.pt, the validation manifest named by the config) and in the
probe.json files given (or RUN_DIR/probe*/probe.json). Whatever is missing is left out with a note;
only train_log.jsonl is required. Figures go to OUT/plots/*.png; OUT/report.html and OUT/report.md
show the same content.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from w2vkit.pretrain import registry
from w2vkit.pretrain.wav2vec2_health import negatives_from_config
from w2vkit.report import plots
from w2vkit.train.checkpoint import LAST, CheckpointUnreadable
from w2vkit.train.checkpoint import load as load_checkpoint
from w2vkit.train.diagnostics import Finding, read_log

CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_last.pt")


@dataclass
class Section:
    title: str
    images: list[str] = field(default_factory=list)
    """Paths relative to the report directory."""
    text: list[str] = field(default_factory=list)
    """Paragraphs (plain text)."""
    table: list[list[str]] | None = None
    """Header row, then rows."""


@dataclass
class Report:
    title: str
    findings: list[Finding]
    sections: list[Section]


def surviving(records: list[dict]) -> list[dict]:
    """The records of the path the run kept: a rescue (`train.on_stuck=rescue`) rolled back and
    logged the same updates again, and only the last pass over them leads to the end."""
    kept: list[dict] = []
    for record in reversed(records):
        if not kept or record["num_updates"] < kept[-1]["num_updates"]:
            kept.append(record)
    return kept[::-1]


def rescue_section(run_dir: Path) -> Section | None:
    """The rescues checkpoint_last.pt records (`w2vkit.train.rescue`), or None without any."""
    path = run_dir / LAST
    try:
        rescues = load_checkpoint(path)["progress"].get("rescues", []) if path.is_file() else []
    except CheckpointUnreadable:  # the codebook section says what is wrong with it
        return None
    if not rescues:
        return None
    rows = [
        [str(r["update"]), str(r["finding"]), str(r["rolled_back_to"]), str(r["change"])]
        for r in rescues
    ]
    note = (
        f"{len(rescues)} rescue(s) (train.on_stuck=rescue): each rolled the run back and applied "
        "the change; the curves show the updates the run kept."
    )
    return Section(
        "Rescues", text=[note], table=[["update", "finding", "rolled back to", "change"], *rows]
    )


def curve_sections(records: list[dict], model: dict, plot_dir: Path) -> list[Section]:
    """Training curves (train split) and the validation curves, of the path the run kept."""
    train = surviving([r for r in records if r.get("split", "train") == "train"])
    valid = surviving([r for r in records if r.get("split") == "valid"])
    negatives, groups = negatives_from_config(model) if model else (0, 0)
    entries = int(model.get("quantizer", {}).get("num_entries", 0)) * groups if model else 0
    guides: dict[str, dict[str, float]] = {}
    if negatives:
        guides["loss_parts"] = {f"chance log2(1+{negatives})": math.log2(1 + negatives)}
        guides["accuracy"] = {f"chance 1/{1 + negatives}": 1 / (1 + negatives)}
        guides["valid_loss"], guides["valid_accuracy"] = guides["loss_parts"], guides["accuracy"]
    if groups:
        guides["perplexity"] = {
            f"collapsed: G = {groups}": groups,
            f"all used: G*V = {entries}": entries,
        }
    images = _draw(plots.TRAIN_CURVES, train, plot_dir, guides)
    sections = [Section("Training curves", images, [] if images else ["no training records"])]
    valid_images = _draw(plots.VALID_CURVES, valid, plot_dir, guides)
    if valid_images:
        last = valid[-1]
        summary = (
            f"last validation (update {last['num_updates']}): loss "
            f"{last.get('loss', math.nan):.3f} bits, accuracy {last.get('accuracy', math.nan):.3f}"
        )
        sections.append(Section("Validation", valid_images, [summary]))
    return sections


def _draw(curves, records: list[dict], plot_dir: Path, guides: dict) -> list[str]:
    """Draw each curve that has data; their image paths relative to the report."""
    return [
        f"plots/{curve.name}.png"
        for curve in curves
        if plots.plot_curve(curve, records, plot_dir / f"{curve.name}.png", guides.get(curve.name))
    ]


def codebook_section(
    run_dir: Path,
    config: dict,
    plot_dir: Path,
    max_items: int,
    checkpoint: Path | None,
    manifest: Path | None,
) -> Section:
    """Codebook usage over validation audio, or a note saying what is missing."""
    section = Section("Codebook usage")
    checkpoint = checkpoint or next(
        (run_dir / c for c in CHECKPOINTS if (run_dir / c).is_file()), None
    )
    data = config.get("data", {})
    if manifest is None and data.get("manifest_dir") and data.get("valid_split"):
        manifest = Path(data["manifest_dir"]) / f"{data['valid_split']}.tsv"
    if checkpoint is None or manifest is None or not manifest.is_file():
        section.text.append(
            f"not drawn: needs a checkpoint ({checkpoint or 'none in the run directory'}) and a "
            f"validation manifest ({manifest or 'none in config.yaml'}); pass --checkpoint / "
            "--valid-manifest"
        )
        return section
    from w2vkit.data.dataset import AudioDataset
    from w2vkit.data.manifest import read_manifest
    from w2vkit.interop import build, read_model
    from w2vkit.report.codebook import codebook_usage, usage_perplexity

    record = read_model(checkpoint)
    if not any(key.startswith("quantizer.") for key in record.state_dict):
        section.text.append(f"not drawn: {checkpoint} has no quantizer weights")
        return section
    model = build(record, "pretraining", source=str(checkpoint))
    # The input normalisation the checkpoint records (HF's rule where it records none).
    dataset = AudioDataset(read_manifest(manifest), normalize=model.normalize_input)
    counts = codebook_usage(model, dataset, max_items)
    perplexity = usage_perplexity(counts)
    plots.plot_codebook(counts, plot_dir / "codebook.png", perplexity)
    section.images.append("plots/codebook.png")
    used = (counts > 0).sum(axis=1).tolist()
    section.text.append(
        f"{int(counts[0].sum())} frames of {min(len(dataset), max_items)} validation file(s) "
        f"({manifest}) through the quantizer of {checkpoint.name} in eval mode (argmax codes): "
        f"entries used per codebook {used} of {counts.shape[1]}, perplexity {perplexity:.1f}"
    )
    return section


def probe_sections(probe_paths: Sequence[Path], plot_dir: Path) -> list[Section]:
    """Per probe.json: the table of the best layer per source, bars, and the per-layer plot."""
    sections = []
    for index, path in enumerate(probe_paths):
        probe = json.loads(path.read_text(encoding="utf-8"))
        target = probe.get("target") or Path(probe.get("labels", "labels")).stem
        title = f"{probe['task']} probe: {target}"
        rows = best_rows(probe)
        stem = f"probe_{index}"
        plots.plot_probe_bars(
            [(n, a, f) for n, _, a, f in rows],
            probe["chance_accuracy"],
            title,
            plot_dir / f"{stem}_bars.png",
        )
        images = [f"plots/{stem}_bars.png"]
        layer_plot = path.parent / "probe.png"
        if layer_plot.is_file():
            (plot_dir / f"{stem}_layers.png").write_bytes(layer_plot.read_bytes())
            images.append(f"plots/{stem}_layers.png")
        split = probe["split"]
        held = "; ".join(f"held-out {k}: {', '.join(v)}" for k, v in split["held_out"].items())
        text = [
            f"{path}: {len(probe['classes'])} classes, {split['num_train']} train / "
            f"{split['num_test']} test {probe['task']}s"
            + (f" ({held})" if held else " (stratified random split)")
            + f"; chance (majority class) {probe['chance_accuracy']:.3f}"
        ]
        text += [f"warning: {w}" for w in probe.get("warnings", [])]
        table = [["features", "best layer", "accuracy", "macro-F1"]]
        table += [[n, layer, f"{a:.3f}", f"{f:.3f}"] for n, layer, a, f in rows]
        table.append(
            ["chance", "", f"{probe['chance_accuracy']:.3f}", f"{probe['chance_macro_f1']:.3f}"]
        )
        sections.append(Section(title.capitalize(), images, text, table))
    return sections


def best_rows(probe: dict) -> list[tuple[str, str, float, float]]:
    """(source with context, best layer, accuracy, macro-F1) per source, best layer by accuracy."""
    best: dict[str, dict] = {}
    for score in probe["scores"]:
        name = score["features"] + (f" ±{score['context']}" if score["context"] else "")
        if name not in best or score["accuracy"] > best[name]["accuracy"]:
            best[name] = score
    return [
        (name, "-" if s["layer"] is None else str(s["layer"]), s["accuracy"], s["macro_f1"])
        for name, s in best.items()
    ]


def pca_section(probe_paths: Sequence[Path], plot_dir: Path) -> Section | None:
    """2-D PCA of utterance embeddings (best pretrained layer, frame means), coloured by voice:
    from the first probe whose labels give a voice per utterance."""
    from w2vkit.probe.data import features_source, read_table

    for path in probe_paths:
        probe = json.loads(path.read_text(encoding="utf-8"))
        table_path = probe.get("utterances") or (
            probe["labels"] if probe["task"] == "utterance" else None
        )
        if not table_path or not Path(table_path).is_file():
            continue
        table = read_table(table_path)
        columns = next(iter(table.values()))
        column = next(
            (c for c in ("voice", "speaker", probe.get("target")) if c and c in columns), None
        )
        if column is None and probe["task"] == "utterance":
            column = next(iter(columns))
        if column is None:
            continue
        layer = probe["best"]["layer"]
        vectors, labels = [], []
        for relative, layers, array in features_source(probe["features"], table):
            row = array[layers.index(layer)] if layer in layers else array[-1]
            vectors.append(row.mean(axis=0) if row.ndim == 2 else row)
            labels.append(table[relative][column])
        if len(vectors) < 3:
            continue
        title = f"utterance embeddings (layer {layer}, frame means) by {column}"
        plots.plot_pca(np.stack(vectors), labels, title, plot_dir / "pca.png")
        text = f"{len(vectors)} utterances of {probe['features']}; colours: {column} ({len(set(labels))} values)"
        return Section("Utterance embeddings (PCA)", ["plots/pca.png"], [text])
    return None


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    probe_paths: Sequence[Path] = (),
    checkpoint: Path | None = None,
    valid_manifest: Path | None = None,
    max_valid_items: int = 200,
    curves_only: bool = False,
) -> Report:
    """Draw every figure into OUT/plots and return the report's content (see `write_report`)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    log_path = run_dir / "train_log.jsonl"
    if not log_path.is_file():
        raise FileNotFoundError(f"{log_path} not found: not a `w2vkit pretrain` run directory")
    config_path = run_dir / "config.yaml"
    config = (
        yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    )
    model = config.get("model", {}) if config else {}
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    records = read_log(log_path)
    findings = registry.findings(records, config or {})
    sections = curve_sections(records, model, plot_dir)
    rescued = rescue_section(run_dir)
    sections = sections if rescued is None else [rescued, *sections]
    if not curves_only:
        sections.append(
            codebook_section(run_dir, config, plot_dir, max_valid_items, checkpoint, valid_manifest)
        )
        probes = list(probe_paths) or sorted(run_dir.glob("probe*/probe.json")) + sorted(
            run_dir.glob("probe.json")
        )
        sections += probe_sections(probes, plot_dir)
        try:
            pca = pca_section(probes, plot_dir)
        except (OSError, ValueError) as err:  # features moved or deleted since probing
            pca = Section("Utterance embeddings (PCA)", text=[f"not drawn: {err}"])
        if pca is not None:
            sections.append(pca)
    return Report(f"w2vkit run report: {run_dir}", findings, sections)


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """OUT/report.html and OUT/report.md from `report`."""
    out_dir = Path(out_dir)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(render_html(report), encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return html_path, md_path


def _finding_lines(report: Report) -> list[tuple[str, str, str]]:
    if not report.findings:
        return []
    return [
        (
            f"{f.code} (update {f.step})",
            f.message,
            f"likely cause: {f.likely_cause}. Try: {f.what_to_try}.",
        )
        for f in report.findings
    ]


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", "## Health"]
    findings = _finding_lines(report)
    if not findings:
        lines.append("No health findings (thresholds: docs/diagnostics.md).")
    lines += [f"- **{code}**: {message}. {advice}" for code, message, advice in findings]
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        lines += [paragraph + "\n" for paragraph in section.text]
        if section.table:
            header, *rows = section.table
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        lines += [f"![{Path(image).stem}]({image})" for image in section.images]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1.5em auto; color: #222; }
.finding { background: #fff3e0; border-left: 5px solid #e65100; padding: .5em 1em; margin: .5em 0; }
.healthy { background: #e8f5e9; border-left: 5px solid #2e7d32; padding: .5em 1em; }
img { max-width: 560px; margin: 4px; vertical-align: top; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #bbb; padding: 3px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
"""


def render_html(report: Report) -> str:
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(report.title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{e(report.title)}</h1><h2>Health</h2>",
    ]
    findings = _finding_lines(report)
    if not findings:
        parts.append("<p class='healthy'>No health findings (thresholds: docs/diagnostics.md).</p>")
    parts += [
        f"<div class='finding'><b>{e(c)}</b>: {e(m)}.<br>{e(a)}</div>" for c, m, a in findings
    ]
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(paragraph)}</p>" for paragraph in section.text]
        if section.table:
            header, *rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        parts += [f"<img src='{e(image)}' alt='{e(Path(image).stem)}'>" for image in section.images]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
