"""Markdown reports next to metrics.json."""

from __future__ import annotations

from interlingua.artifacts.files import markdown_table

MIN_REPORTED_EXAMPLES = 1000  # DESIGN §5: fewer examples is a smoke run

MODE_TITLES = {
    "text": "text baseline",
    "token_budget": "token-budget baseline (M tokens)",
    "question_only": "question-only control",
    "latent": "latent (sender = receiver)",
    "shuffled": "shuffled-z control",
}
EVAL_ROWS = ("text", "token_budget", "question_only", "latent", "shuffled")  # per-model rows of the eval report
CONDITIONING_NOTES = {  # interlingua.conditioning of the checkpoint: what the latent rows' receivers read
    "full": "the whole prompt (context and question) travels through z; after the soft prompt the receiver "
            "reads only the answer cue.",
    "hybrid": "only the context travels through z; the receiver reads the example's own question as text after "
              "the soft prompt (latent, cross and shuffled-z rows alike), so the shuffled-z row is *this question "
              "+ an unrelated context* and the question-only row is the level it should fall to.",
}
POSITION_NOTES = {
    "full": "positions = BOS + M soft tokens + answer cue.",
    "hybrid": "positions = BOS + M soft tokens + `\\nQuestion: …\\nAnswer:` (mean); prompt bytes are those of "
              "the context prompt z replaces (`Context: …`).",
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
                model, MODE_TITLES.get(mode, mode), formats.get(model, ""), entry["n"], entry["exact_match"],
                entry["f1"],
                entry.get("mean_prompt_tokens", ""), entry.get("mean_prompt_utf8_bytes", ""),
                entry.get("mean_prompt_gzip_bytes", ""),
            ])
    return rows


BASELINE_HEADER = [
    "model", "row", "prompt format", "n", "EM", "F1", "prompt tokens", "prompt UTF-8 bytes", "prompt gzip bytes",
]


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


# ---- interlingua evaluation (`eval_job`) -------------------------------------------------------
def row_scores(baselines: dict, latent: dict, model: str) -> list[tuple[str, dict]]:
    """``[(mode, {n, exact_match, f1, ...})]`` for one model in :data:`EVAL_ROWS` order (the table
    rows and the bar-plot groups)."""
    entries = {**baselines.get(model, {}), **latent["scores"].get(model, {})}
    return [(mode, entries[mode]) for mode in EVAL_ROWS if mode in entries]


def eval_report(metrics: dict) -> str:
    """report.md of an interlingua evaluation, from the ``metrics.json`` payload of ``eval_job``."""
    latent, baselines = metrics["latent"], metrics["baselines"]
    lines = header("interlingua evaluation", metrics["run"], latent["n"])
    checkpoint = metrics["checkpoint"]
    lines += [f"- checkpoint: `{checkpoint['path']}` (fingerprint `{checkpoint['fingerprint']}`)"]
    conditioning = latent.get("conditioning", "full")  # absent from results written before hybrid existed
    lines += [f"- conditioning: `{conditioning}` — {CONDITIONING_NOTES[conditioning]}", ""]
    lines += _information_flow_lines(metrics["information_flow"], latent["n"])
    for model in latent["scores"]:
        lines += [f"## {model} (text prompt format: {metrics['prompt_formats'].get(model, '?')})", ""]
        lines += [_model_table(baselines, latent, model), ""]
    sections = (
        ("Cross-decode (rows: sender, columns: receiver; EM / F1)", _cross_decode_table(latent["cross_decode"])),
        ("Agreement (share of examples with the same normalised prediction, %)", _agreement_table(latent["agreement"])),
        ("Interlingua distance (z of the same example from two senders)", _distance_table(latent["distance"])),
        ("Collapse diagnostics (z over the whole evaluated set)", _collapse_table(latent["collapse"])),
        ("Message size: positions and bytes", _message_table(latent["messages"])),
    )
    for title, table in sections:
        lines += [f"## {title}", "", table, ""]
    lines.append(
        f"Shuffled-z: each example decoded from another example's z (seeded derangement, seed "
        f"{latent['shuffle_seed']}). Wire bytes are the whole message (docs/wire-format.md) at the checkpoint's "
        f"compression.precision; {POSITION_NOTES[conditioning]}"
    )
    return "\n".join(lines) + "\n"


def _information_flow_lines(verdicts: dict, n: int) -> list[str]:
    lines = []
    for model, v in verdicts.items():
        answer = "**yes**" if v["flows"] else "**no**"
        lines.append(
            f"- Information flows through z for {model}: {answer} — latent F1 {v['latent_f1']:.1f} vs shuffled-z "
            f"{v['shuffled_f1']:.1f} and question-only {v['question_only_f1']:.1f}; required margin "
            f"{v['margin_f1']:.1f} F1 points over both."
        )
    if n < MIN_REPORTED_EXAMPLES:
        lines.append(f"- (smoke run, n = {n}: differences of a few F1 points are noise at this size)")
    return lines + [""]


def _model_table(baselines: dict, latent: dict, model: str) -> str:
    messages = latent["messages"][model]
    rows = []
    for mode, entry in row_scores(baselines, latent, model):
        if mode in ("latent", "shuffled"):
            size = [messages["soft_prompt_positions"], messages["wire_bytes"]]
        else:
            size = [entry.get("mean_prompt_tokens", ""), entry.get("mean_prompt_utf8_bytes", "")]
        rows.append([MODE_TITLES[mode], entry["n"], entry["exact_match"], entry["f1"], *size])
    header_ = ["row", "n", "EM", "F1", "receiver positions", "message bytes (text: UTF-8, latent: z)"]
    return markdown_table(header_, rows)


def _cross_decode_table(matrix: dict) -> str:
    receivers = list(next(iter(matrix.values())))
    rows = [
        [sender] + [f"{by[r]['exact_match']:.1f} / {by[r]['f1']:.1f}" for r in receivers]
        for sender, by in matrix.items()
    ]
    return markdown_table(["sender ↓ · receiver →", *receivers], rows)


def _agreement_table(agreements: dict) -> str:
    text = {(p["a"], p["b"]): p["share"] for p in agreements.get("text", [])}
    rows = [
        [f"{p['a']} vs {p['b']}", 100.0 * p["share"], 100.0 * text[(p["a"], p["b"])] if text else "n/a"]
        for p in agreements["latent"]
    ]
    return markdown_table(["pair", "latent", "text baseline"], rows)


def _distance_table(distances: list[dict]) -> str:
    rows = [[f"{d['a']} vs {d['b']}", f"{d['mean_l2']:.4g}", f"{d['mean_cosine']:.4f}"] for d in distances]
    return markdown_table(["pair", "mean L2", "mean cosine"], rows)


def _collapse_table(collapse: dict) -> str:
    rows = [
        [model, f"{c['mean_pairwise_cosine']:.4f}", f"{c['mean_dim_variance']:.4g}", f"{c['min_dim_variance']:.4g}",
         f"{100.0 * c['distinct_prediction_share']:.1f}",
         f"{100.0 * c['changed_by_shuffle_share']:.1f}" if "changed_by_shuffle_share" in c else "–"]
        for model, c in collapse.items()
    ]
    header_ = ["model (sender)", "mean pairwise cosine", "mean dim variance", "min dim variance",
               "distinct predictions %", "answers changed by shuffled z %"]
    return markdown_table(header_, rows)


def _message_table(messages: dict) -> str:
    rows = [
        [model, m["soft_prompt_positions"], m["mean_text_prompt_tokens"], f"{m['wire_bytes']} ({m['wire_precision']})",
         m["mean_prompt_utf8_bytes"], m["mean_prompt_gzip_bytes"]]
        for model, m in messages.items()
    ]
    header_ = ["model", "soft-prompt positions", "text prompt tokens", "wire bytes of z", "prompt UTF-8 bytes",
               "prompt gzip bytes"]
    return markdown_table(header_, rows)


def native_eval_report(metrics: dict) -> str:
    """report.md of a native-design checkpoint: the baselines, then every pair under each conditioning."""
    from interlingua.eval.native import native_report_lines

    lines = header("Native interlingua evaluation", metrics["run"], metrics["n"])
    lines += [f"- checkpoint: `{metrics['checkpoint']['path']}` "
              f"(fingerprint {metrics['checkpoint']['fingerprint']})", ""]
    lines += ["## Text baselines", "", markdown_table(
        ["model", "row", "EM", "F1"],
        [[model, MODE_TITLES.get(mode, mode), s["exact_match"], s["f1"]]
         for model, modes in metrics["baselines"].items() for mode, s in modes.items()]), ""]
    return "\n".join(lines + native_report_lines(metrics["native"]))
