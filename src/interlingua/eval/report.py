"""Markdown reports next to metrics.json."""

from __future__ import annotations

from interlingua.eval.artifacts import markdown_table

MIN_REPORTED_EXAMPLES = 1000  # DESIGN §5: fewer examples is a smoke run

MODE_TITLES = {
    "text": "text baseline",
    "token_budget": "token-budget baseline (M tokens)",
    "question_only": "question-only control",
}


def header(title: str, info: dict, n: int) -> list[str]:
    lines = [f"# {title}", ""]
    if n < MIN_REPORTED_EXAMPLES:
        lines += [f"**Smoke run:** n = {n} < {MIN_REPORTED_EXAMPLES} validation examples; not a reportable result.", ""]
    lines += [
        f"- command: `{' '.join(info['argv'])}`",
        f"- date: {info['date']}, git: {info['git']}",
        f"- SQuAD v1.1 validation, n = {n}, seeded order (data.seed = {info['config']['data']['seed']}), "
        f"greedy, at most {info['config']['eval']['max_new_tokens']} new tokens, cut at the first newline",
        "",
    ]
    return lines


def baseline_rows(summary: dict, formats: dict[str, str]) -> list[list[object]]:
    rows = []
    for model, modes in summary.items():
        for mode, entry in modes.items():
            rows.append([
                model, MODE_TITLES.get(mode, mode), formats.get(model, ""), entry["n"], entry["exact_match"], entry["f1"],
                entry.get("mean_prompt_tokens", ""), entry.get("mean_prompt_utf8_bytes", ""),
                entry.get("mean_prompt_gzip_bytes", ""),
            ])
    return rows


BASELINE_HEADER = ["model", "row", "prompt format", "n", "EM", "F1", "prompt tokens", "prompt UTF-8 bytes", "prompt gzip bytes"]


def baselines_report(summary: dict, formats: dict[str, str], info: dict) -> str:
    n = max((e["n"] for modes in summary.values() for e in modes.values()), default=0)
    lines = header("interlingua baselines", info, n)
    lines.append(markdown_table(BASELINE_HEADER, baseline_rows(summary, formats)))
    lines += [
        "",
        "Prompt tokens count what the model read (BOS and chat template included); bytes are those of the "
        "raw prompt text (`Context: …\\nQuestion: …\\nAnswer:`), UTF-8 and gzip -9.",
    ]
    return "\n".join(lines) + "\n"
