"""The sweep table: one row per cell, written as Markdown, CSV and JSON (docs/compression.md explains
every column).

    rows = cell_rows(results, reference_bytes=message_size((512,), "fp16", 0))
    write_tables(rows, Path("runs/sweeps/compression"), {"run": run_info(...), "sweep": {...}})
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

from interlingua.artifacts.files import markdown_table, write_json
from interlingua.eval.report import BASELINE_HEADER, baseline_rows

TABLE_FILES = ("table.md", "table.csv", "table.json")
SMOKE_N = 1000
"""Below this many evaluation examples per cell a table is labelled a smoke run (DESIGN §5)."""


def cell_rows(results: Sequence[dict], reference_bytes: int) -> list[dict]:
    """One flat-ish row per cell result (``runner`` writes them to ``cells/<cell>.json``).

    Args:
        results: cell results, in table order.
        reference_bytes: size of the fp16 d_inter=512 × M=32 message (``wire.message_size``).
    Returns:
        Rows with the cell's knobs, ``n``, ``scores`` ({model: {"f1", "exact_match"}} ×100), ``bytes``
        per message and the ratios ``bytes / reference`` (``vs_fp16_512x32``, ``vs_prompt_utf8``,
        ``vs_prompt_gzip``; below 1 = smaller than the reference).
    """
    rows = []
    for result in results:
        size, prompt = result["message"]["bytes"], result["prompt"]
        rows.append({
            **result["cell"],
            "trained_with_qat": result["checkpoint"]["trained_with_qat"],
            "n": result["n"],
            "scores": {model: {"f1": s["f1"], "exact_match": s["exact_match"]}
                       for model, s in result["scores"].items()},
            "bytes": size,
            "vs_fp16_512x32": size / reference_bytes,
            "prompt_utf8_bytes": prompt["mean_utf8_bytes"],
            "prompt_gzip_bytes": prompt["mean_gzip_bytes"],
            "vs_prompt_utf8": size / prompt["mean_utf8_bytes"],
            "vs_prompt_gzip": size / prompt["mean_gzip_bytes"],
        })
    return rows


def models_of(rows: Sequence[dict]) -> list[str]:
    """The models scored in the table, in first-seen order."""
    return list(dict.fromkeys(model for row in rows for model in row["scores"]))


def flat_table(rows: Sequence[dict]) -> tuple[list[str], list[list[object]]]:
    """Header and values of the CSV / Markdown table."""
    models = models_of(rows)
    header = ["d_inter", "M", "precision", "group_size", "n"]
    header += [f"{model} {metric}" for model in models for metric in ("F1", "EM")]
    header += ["bytes", "bytes / fp16 512x32", "bytes / prompt UTF-8", "bytes / prompt gzip"]
    values = []
    for row in rows:
        scores = [row["scores"][m][k] if m in row["scores"] else "" for m in models for k in ("f1", "exact_match")]
        values.append([
            row["d_inter"], row["num_slots"], row["precision"], row["group_size"] or "", row["n"], *scores,
            row["bytes"], row["vs_fp16_512x32"], row["vs_prompt_utf8"], row["vs_prompt_gzip"],
        ])
    return header, values


def write_tables(
    rows: Sequence[dict], out_dir: Path, provenance: dict, planned: Optional[int] = None,
    references: Optional[dict] = None,
) -> list[Path]:
    """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out_dir``.

    Args:
        rows: :func:`cell_rows`.
        provenance: stamped on ``table.json`` (e.g. ``run_info`` and the sweep settings).
        planned: the sweep's number of cells; with fewer rows the table is labelled partial.
        references: the text references (:func:`~interlingua.sweep.references.text_references`): a second
            table in ``table.md``, ``references`` in ``table.json``; the CSV holds the cells only.
    Returns:
        The three paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, values = flat_table(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(values)
    md, csv_path, json_path = (out_dir / name for name in TABLE_FILES)
    csv_path.write_text(buffer.getvalue())
    md.write_text(markdown_report(rows, header, values, planned, references))
    finished = {"cells_finished": len(rows), "cells_planned": planned if planned is not None else len(rows)}
    write_json(json_path, {**provenance, **finished, "models": models_of(rows), "rows": list(rows),
                           "references": references})
    return [md, csv_path, json_path]


def markdown_report(
    rows: Sequence[dict], header: list[str], values: list[list[object]], planned: Optional[int] = None,
    references: Optional[dict] = None,
) -> str:
    """``table.md``: what was measured, the table (scores to 1 decimal, ratios to 3 significant digits),
    then the text references when given."""
    ns = sorted({row["n"] for row in rows})
    labels = " — smoke run (n < 1000)" if ns and ns[0] < SMOKE_N else ""
    if planned is not None and len(rows) < planned:
        labels += f" — partial: {len(rows)} of {planned} cells finished"
    utf8 = rows[0]["prompt_utf8_bytes"] if rows else float("nan")
    gzip = rows[0]["prompt_gzip_bytes"] if rows else float("nan")
    lines = [
        f"# Compression sweep{labels}",
        "",
        f"SQuAD v1.1 validation, n = {', '.join(map(str, ns))} per cell; each model decodes its own z as the wire "
        "delivers it. Bytes are whole wire messages (header, scales, payload, checksum). The text prompt it "
        f"replaces: {utf8:.1f} bytes UTF-8, {gzip:.1f} bytes gzip (means). Ratios are bytes / reference "
        "(below 1 = smaller).",
        "",
        markdown_table(header, [[_cell(v, name) for v, name in zip(row, header)] for row in values]),
        "",
    ]
    if references:
        lines += [
            "## Text references",
            "",
            "The same examples read as text by each model (`interlingua baselines`, from "
            f"`{references['from']}`): the text a message replaces, the token-budget baseline (the prompt cut "
            f"to M = {references['token_budget']} tokens) and the question-only control (the level a message that "
            "carries no context falls to). Bytes are those of the prompt text.",
            "",
            markdown_table(BASELINE_HEADER, baseline_rows(references["baselines"], references["prompt_formats"])),
            "",
        ]
    return "\n".join(lines)


def _cell(value: object, column: str) -> object:
    if isinstance(value, float) and column.startswith("bytes /"):
        return f"{value:.3g}"
    return value
