"""The native sweep's table and plot (docs/compression.md): per cell every pair's F1 beside its own
shuffled-z F1, the message's positions and bytes, and the token-budget reference at the same receiver
positions; ``frontier.png`` puts F1 against bytes and against receiver positions, own and cross, with
the token-budget curve beside them.

    write_native_report(results, out, provenance, planned=12, references=refs, window_budget=rows)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from statistics import mean
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interlingua.artifacts.files import markdown_table, write_json
from interlingua.config import ConfigError
from interlingua.eval.native import FLOW_MARGIN_F1
from interlingua.sweep.native import window_budget_summary
from interlingua.sweep.table import BASELINE_HEADER, SMOKE_N, TABLE_FILES, baseline_rows

NATIVE_PLOT = "frontier.png"


def pair_models(pair: str) -> tuple[str, str]:
    """``"a -> b"`` -> ``(sender, receiver)``."""
    sender, _, receiver = pair.partition(" -> ")
    return sender, receiver


def ttft_speedups(folder: Path) -> dict:
    """``{pool_window: {model: {"speedup", "batched_speedup", "examples"}}}`` from the native
    ``benchmarks/receiver_ttft.py --json`` outputs in ``folder``.

    Raises:
        ConfigError: the folder is missing or holds no native measurement.
    """
    found: dict = {}
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        data = json.loads(path.read_text())
        if data.get("design") != "native":
            continue
        for model, v in data["models"].items():
            if not str(v["pool_window"]).isdigit():  # pool_window=all: no cell of a native sweep has it
                continue
            found.setdefault(int(v["pool_window"]), {})[model] = {
                "speedup": v["speedup"], "batched_speedup": v["batched_speedup"], "examples": data["examples"]}
    if not found:
        raise ConfigError(f"ttft={folder}: no native benchmarks/receiver_ttft.py --json output there; run "
                          "scripts/native_ttft.sh FOLDER (one measurement per pool_window) or set ttft: null")
    return found


def native_rows(results: Sequence[dict], budget: Optional[dict], text: Optional[dict],
                ttft: Optional[dict] = None) -> list[dict]:
    """One flat record per cell: its knobs, message size, every pair's F1 / shuffled F1 / share of the
    receiver's text F1, and the token-budget F1 of each receiver at the cell's pool_window.

    Args:
        budget: :func:`~interlingua.sweep.native.window_budget_summary` (None: no references).
        text: the text references' summary, ``{model: {mode: {f1, ...}}}`` (None: no references).
    """
    rows = []
    for result in results:
        cell, messages = result["cell"], result["messages"]
        pairs = {}
        for pair, v in result["pairs"].items():
            sender, receiver = pair_models(pair)
            text_f1 = text[receiver]["text"]["f1"] if text and receiver in text else None
            pairs[pair] = {"f1": v["latent_f1"], "shuffled_f1": v["shuffled_f1"], "margin_f1": v["margin_f1"],
                           "own": sender == receiver, "flows": v["flows"],
                           "share_of_text": v["latent_f1"] / text_f1 if text_f1 else None,
                           "z_positions": messages[sender]["mean_z_positions"],
                           "bytes": messages[sender]["mean_wire_bytes"]}
        window_budget = (budget or {}).get(cell["pool_window"], {})
        speedups = (ttft or {}).get(cell["pool_window"], {})
        rows.append({
            "cell": _cell_name(cell), **cell, "n": result["n"], "conditioning": result["conditioning"],
            "z_positions": mean(m["mean_z_positions"] for m in messages.values()),
            "bytes": mean(m["mean_wire_bytes"] for m in messages.values()),
            "text_utf8_bytes": mean(m["mean_text_utf8_bytes"] for m in messages.values()),
            "text_gzip_bytes": mean(m["mean_text_gzip_bytes"] for m in messages.values()),
            "pairs": pairs,
            "every_pair_flows": all(p["flows"] for p in pairs.values()),
            "token_budget": {model: {"f1": v["f1"], "positions": v["mean_context_positions"],
                                     "gzip_bytes": v["mean_context_gzip_bytes"]}
                             for model, v in window_budget.items()},
            "trained_in_sweep": result["checkpoint"].get("trained_in_sweep", True),
            "start_fingerprint": (result.get("start") or {}).get("fingerprint"),
            "ttft_speedup": {model: v["speedup"] for model, v in speedups.items()},
        })
    return rows


def _cell_name(cell: dict) -> str:
    group = f" g{cell['group_size']}" if cell.get("group_size") else ""
    mode = f" {cell['pool_mode']}" if cell.get("pool_mode", "window") != "window" else ""
    wire = f" wire {cell['d_wire']}" if cell.get("d_wire") is not None else ""
    return f"k={cell['pool_window']}{mode} d={cell['d_inter']}{wire} {cell['precision']}{group}"


def flat_native_table(rows: Sequence[dict]) -> tuple[list[str], list[list[object]]]:
    """Header and values of ``table.md`` / ``table.csv``: pairs own first, then cross, in the cells' order."""
    if not rows:
        return ["cell"], []
    pairs = sorted(rows[0]["pairs"], key=lambda p: (not rows[0]["pairs"][p]["own"], p))
    receivers = list(rows[0]["token_budget"])
    timed = sorted({model for row in rows for model in row.get("ttft_speedup", {})})
    header = ["cell", "n", "z positions", "bytes / message", "bytes / gzip text"]
    header += [f"{p} F1 (shuffled)" for p in pairs]
    header += [f"token budget {r} F1" for r in receivers] + ["every pair flows"]
    header += [f"TTFT speedup {m}" for m in timed]
    values = []
    for row in rows:
        line = [row["cell"], row["n"], row["z_positions"], row["bytes"], row["bytes"] / row["text_gzip_bytes"]]
        line += [f"{row['pairs'][p]['f1']:.1f} ({row['pairs'][p]['shuffled_f1']:.1f})" for p in pairs]
        line += [row["token_budget"][r]["f1"] if r in row["token_budget"] else "–" for r in receivers]
        line.append("yes" if row["every_pair_flows"] else "no")
        line += [f"{row['ttft_speedup'][m]:.2f}x" if m in row.get("ttft_speedup", {}) else "–" for m in timed]
        values.append(line)
    return header, values


def write_native_report(results: Sequence[dict], out_dir: Path, provenance: dict, planned: Optional[int] = None,
                        references: Optional[dict] = None, window_budget: Optional[Sequence[dict]] = None,
                        ttft: Optional[dict] = None) -> list[Path]:
    """``table.md``, ``table.csv``, ``table.json`` and ``frontier.png`` of a native sweep (partial while cells
    are missing); ``ttft``: :func:`ttft_speedups`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = window_budget_summary(window_budget) if window_budget else None
    text = references["baselines"] if references else None
    rows = native_rows(results, budget, text, ttft)
    header, values = flat_native_table(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.4g}" if isinstance(v, float) else v for v in line] for line in values])
    md, csv_path, json_path = (out_dir / name for name in TABLE_FILES)
    csv_path.write_text(buffer.getvalue())
    md.write_text(native_markdown(rows, header, values, planned, references, budget))
    finished = {"cells_finished": len(rows), "cells_planned": planned if planned is not None else len(rows)}
    write_json(json_path, {**provenance, **finished, "rows": rows, "references": references,
                           "token_budget": budget})
    plot = plot_native_frontier(rows, out_dir / NATIVE_PLOT, text, budget)
    return [md, csv_path, json_path, plot]


def native_markdown(rows: Sequence[dict], header: list[str], values: list[list[object]], planned: Optional[int],
                    references: Optional[dict], budget: Optional[dict]) -> str:
    ns = sorted({row["n"] for row in rows})
    labels = " — smoke run (n < 1000)" if ns and ns[0] < SMOKE_N else ""
    if planned is not None and len(rows) < planned:
        labels += f" — partial: {len(rows)} of {planned} cells finished"
    shown = [[f"{v:.3g}" if isinstance(v, float) and name == "bytes / gzip text" else v
              for v, name in zip(line, header)] for line in values]
    lines = [
        f"# Native compression sweep{labels}",
        "",
        f"SQuAD v1.1 validation, n = {', '.join(map(str, ns)) or '–'} per cell, "
        f"{rows[0]['conditioning'] if rows else 'hybrid'} conditioning (the context through z, the question as "
        "text). Every receiver reads every sender's z as the wire delivers it; each pair's F1 stands beside its "
        f"own shuffled-z F1, and a pair carries the context when it beats it by {FLOW_MARGIN_F1:g}. z positions "
        "and bytes are means per message (whole wire messages); `bytes / gzip text` compares them with the gzip "
        "bytes of the `Context: …` text they replace. The token budget is each receiver's text prompt with the "
        "context cut to as many tokens as its own z has positions in that cell. TTFT speedup: the receiver's "
        "time to first token from its own z (receiver head + prefill) against its whole text prompt, one request "
        "at a time (`benchmarks/receiver_ttft.py`, measured per pool_window).",
        "",
        markdown_table(header, shown),
        "",
        *_start_lines(rows),
    ]
    if budget:
        models = sorted({m for per_model in budget.values() for m in per_model})
        table = [[k, *(f"{budget[k][m]['f1']:.1f} at {budget[k][m]['mean_context_positions']:.1f} positions, "
                       f"{budget[k][m]['mean_context_gzip_bytes']:.0f} B gzip" if m in budget[k] else "–"
                       for m in models)] for k in budget]
        lines += ["## Token budget at each pool_window", "",
                  "Each receiver's text prompt with its context cut to ceil(T / k) tokens (T: the context's "
                  "tokens in that receiver's tokenizer), the question whole after it.", "",
                  markdown_table(["pool_window", *models], table), ""]
    if references:
        lines += ["## Text references", "",
                  f"The same examples read as text by each model (from `{references['from']}`).", "",
                  markdown_table(BASELINE_HEADER, baseline_rows(references["baselines"], references["prompt_formats"])),
                  ""]
    return "\n".join(lines)


def _start_lines(rows: Sequence[dict]) -> list[str]:
    """Which start checkpoint (weights fingerprint) each cell was trained or evaluated from, where they differ or
    some cells predate the record."""
    starts: dict = {}
    for row in rows:
        starts.setdefault(row.get("start_fingerprint"), []).append(row["cell"])
    if not starts:
        return []
    if list(starts) == [None]:
        return ["The cells' start checkpoint was not recorded (they were computed before start records were kept).",
                ""]
    if len(starts) == 1:
        return [f"Every cell starts from the checkpoint with weights fingerprint {next(iter(starts))}.", ""]
    parts = [f"{fingerprint}: {', '.join(cells)}" if fingerprint else
             f"not recorded (computed before start records were kept): {', '.join(cells)}"
             for fingerprint, cells in starts.items()]
    return ["**Start checkpoints differ.** Cells by the weights fingerprint of the checkpoint they trained or were "
            "evaluated from: " + "; ".join(parts) + ".", ""]


def plot_native_frontier(rows: Sequence[dict], path: Path, text: Optional[dict], budget: Optional[dict]) -> Path:
    """F1 against bytes per message (log) and against receiver positions; per receiver own (filled) and
    cross (open) cells with each pair's shuffled-z F1 (x), its token-budget curve and its text prompt."""
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    by_bytes, by_positions = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    receivers = sorted({pair_models(p)[1] for row in rows for p in row["pairs"]} | set(text or {}))

    def on_both(kind: str, points: list[tuple], **style) -> None:
        """``points``: (bytes, positions, F1), drawn on the bytes axis and on the positions axis alike."""
        for axis, x in ((by_bytes, 0), (by_positions, 1)):
            getattr(axis, kind)([p[x] for p in points], [p[2] for p in points], **style)

    for index, receiver in enumerate(receivers):
        colour = f"C{index}"
        pairs = [v for row in rows for p, v in row["pairs"].items() if pair_models(p)[1] == receiver]
        for own, marker, fill in ((True, "o", colour), (False, "s", "none")):
            points = [(v["bytes"], v["z_positions"], v["f1"]) for v in pairs if v["own"] == own]
            if points:
                on_both("scatter", points, marker=marker, facecolors=fill, edgecolors=colour,
                        label=f"{receiver} {'own' if own else 'cross'} z")
        if pairs:
            on_both("scatter", [(v["bytes"], v["z_positions"], v["shuffled_f1"]) for v in pairs], marker="x",
                    color=colour, label=f"{receiver} shuffled z (control)")
        curve = sorted((v[receiver]["mean_context_gzip_bytes"], v[receiver]["mean_context_positions"],
                        v[receiver]["f1"]) for v in (budget or {}).values() if receiver in v)
        if curve:  # markers: a single window is still visible
            on_both("plot", curve, linestyle="--", marker="D", color=colour, markersize=4,
                    label=f"{receiver} token budget (text cut to the same positions)")
        if text and receiver in text:
            by_positions.axhline(text[receiver]["text"]["f1"], color=colour, linestyle=":", linewidth=1,
                                 label=f"{receiver} whole text prompt")
            by_bytes.axhline(text[receiver]["text"]["f1"], color=colour, linestyle=":", linewidth=1)
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("bytes per message (whole wire message; token budget: gzip of the cut context)")
    by_positions.set_xlabel("receiver positions for the context (z positions; token budget: tokens)")
    for axis in (by_bytes, by_positions):
        axis.set_ylim(0, max(5.0, axis.get_ylim()[1]))
        axis.set_ylabel("F1")
        axis.grid(alpha=0.3)
    by_positions.legend(fontsize=7)
    fig.suptitle("Native interlingua: F1 against message size (filled: own z, open: the other sender's z, "
                 "x: shuffled z)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def native_cell_line(result: dict) -> str:
    """The one progress line of a finished cell: every pair's F1 and its shuffled F1, positions and bytes."""
    pairs = ", ".join(f"{p} {v['latent_f1']:.1f} (sh {v['shuffled_f1']:.1f})" for p, v in result["pairs"].items())
    messages = result["messages"].values()
    return (f"{pairs}; {mean(m['mean_z_positions'] for m in messages):.1f} positions, "
            f"{mean(m['mean_wire_bytes'] for m in messages):.0f} bytes per message")
