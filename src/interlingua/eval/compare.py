"""Several finished runs side by side: the ablation table and the training curves of every variant.

    interlingua compare seed=results/embedded-seed-s250 hybrid=runs/abl-hybrid -o results/ablation

A run folder is what ``interlingua run`` writes (``metrics.jsonl`` and ``eval/[step_N/]metrics.json``)
or a copy of it under ``results/``. Output: ``ablation.md``, ``ablation.json`` and ``ablation_curves.png``.

Runs of the native design (DESIGN §8) give one line per (conditioning, sender → receiver) pair, each next
to its own shuffled-z row, and the paired difference of its F1 from the first variant's on the same
examples (mean ± standard error), so a loss ablation at a small n says which differences are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interlingua.constants import METRICS_FILE, METRICS_LOG_FILE, PREDICTIONS_FILE
from interlingua.errors import CompareError
from interlingua.eval.latent import changed_by_shuffle


def eval_metrics_path(run_dir: Path, eval_dir: str = "eval") -> Path:
    """The newest ``metrics.json`` of a run's evaluation (``<eval_dir>/metrics.json`` or
    ``<eval_dir>/step_N/metrics.json``)."""
    run_dir = Path(run_dir)
    candidates = (sorted(run_dir.glob(f"{eval_dir}/step_*/{METRICS_FILE}"))
                  or sorted(run_dir.glob(f"{eval_dir}/{METRICS_FILE}")))
    if not candidates:
        raise CompareError(f"{run_dir}: no {eval_dir}/{METRICS_FILE} or {eval_dir}/step_*/{METRICS_FILE}; "
                           "has the run finished? (--eval-dir names another evaluation folder inside it)")
    return candidates[-1]


def variant_row(name: str, run_dir: Path, eval_dir: str = "eval") -> dict:
    """One row of the ablation table from a run folder."""
    metrics_path = eval_metrics_path(run_dir, eval_dir)
    metrics = json.loads(metrics_path.read_text())
    if "native" in metrics:
        return native_variant_row(name, run_dir, metrics, metrics_path.parent / PREDICTIONS_FILE)
    latent, baselines = metrics["latent"], metrics["baselines"]
    config = metrics["run"]["config"]
    changed = _changed_by_shuffle(latent, metrics_path.parent / PREDICTIONS_FILE)
    models = {}
    for model, scores in latent["scores"].items():
        text_f1 = baselines[model]["text"]["f1"]
        others = [r for r in latent["cross_decode"] if r != model]
        models[model] = {
            "latent_f1": scores["latent"]["f1"], "latent_em": scores["latent"]["exact_match"],
            "retention": scores["latent"]["f1"] / text_f1 if text_f1 else float("nan"),
            "shuffled_f1": scores["shuffled"]["f1"], "question_only_f1": baselines[model]["question_only"]["f1"],
            "text_f1": text_f1,
            "cross_f1_from": {sender: latent["cross_decode"][sender][model]["f1"] for sender in others},
            "z_cosine": latent["collapse"][model]["mean_pairwise_cosine"],
            "distinct_predictions": latent["collapse"][model]["distinct_prediction_share"],
            "changed_by_shuffle": changed.get(model),
            "flows": metrics["information_flow"][model]["flows"],
        }
    return {
        "variant": name, "run": str(run_dir), "n": latent["n"], "models": models,
        "agreement": [a["share"] for a in latent["agreement"]["latent"]],
        **_budget(config), "argv": metrics["run"].get("argv"),
    }


def _budget(config: dict) -> dict:
    train = config["train"]
    pretrain = config.get("pretrain", {}).get("steps", 0)
    return {"steps": pretrain + train["steps"], "global_batch": train["batch_size"] * train["grad_accum"]}


def native_variant_row(name: str, run_dir: Path, metrics: dict, predictions_path: Path) -> dict:
    """The ablation row of a native run: per (conditioning, pair) the latent/cross and shuffled scores,
    with the per-example F1 of the latent/cross rows (``_example_f1``, for paired differences)."""
    native, config = metrics["native"], metrics["run"]["config"]
    if not predictions_path.is_file():
        raise CompareError(f"{run_dir}: no {PREDICTIONS_FILE} beside {METRICS_FILE}; the paired differences need it")
    rows = [json.loads(line) for line in predictions_path.read_text().splitlines() if line.strip()]
    per_example = per_example_f1(rows)
    pairs = {}
    for conditioning, verdicts in native["information_flow"].items():
        for pair, v in verdicts.items():
            sender, receiver = pair.split(" -> ")
            read = native["scores"][conditioning][receiver][sender]["latent" if sender == receiver else "cross"]
            pairs[f"{conditioning} {pair}"] = {
                **v, "latent_em": read["exact_match"], "_example_f1": per_example[(conditioning, pair)],
            }
    return {"variant": name, "run": str(run_dir), "design": "native", "n": native["n"], "pairs": pairs,
            "loss_weights": {k: v for k, v in config["loss"].items() if k.startswith("w_")},
            **_budget(config), "argv": metrics["run"].get("argv")}


def per_example_f1(rows) -> dict[tuple[str, str], dict[str, float]]:
    """``{(conditioning, "sender -> receiver"): {example id: F1}}`` of the native latent / cross rows among
    ``rows`` (baseline rows have no conditioning; shuffled rows are the control, not the pair's reading)."""
    per_example: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        if "conditioning" in row and row["mode"] in ("latent", "cross"):
            pair = (row["conditioning"], f"{row['sender']} -> {row['model']}")
            per_example.setdefault(pair, {})[row["id"]] = row["f1"]
    return per_example


def paired_difference(f1: dict[str, float], reference: dict[str, float]) -> tuple[float, float, int]:
    """Mean and standard error (×100) of ``f1 − reference`` over the examples both have."""
    shared = sorted(set(f1) & set(reference))
    if len(shared) < 2:
        return float("nan"), float("nan"), len(shared)
    deltas = np.array([f1[i] - reference[i] for i in shared]) * 100
    return float(deltas.mean()), float(deltas.std(ddof=1) / np.sqrt(len(deltas))), len(shared)


def native_ablation_table(rows: list[dict]) -> str:
    """Markdown: one line per native variant and pair, with the paired ΔF1 from the first variant."""
    reference = rows[0]
    lines = [
        f"| variant | loss weights | n | steps × batch | pair | latent F1 / EM | shuffled F1 | margin | "
        f"receiver text F1 | ΔF1 vs {reference['variant']} (± SE) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        weights = ", ".join(f"{k[2:]} {v:g}" for k, v in row["loss_weights"].items() if v)
        for pair, p in row["pairs"].items():
            base = reference["pairs"].get(pair)
            if row is reference or base is None:
                delta = "–"
            else:
                mean, error, _ = paired_difference(p["_example_f1"], base["_example_f1"])
                delta = f"{mean:+.1f} ± {error:.1f}"
            text = "–" if p["text_f1"] is None else f"{p['text_f1']:.1f}"
            lines.append(
                f"| {row['variant']} | {weights} | {row['n']} | {row['steps']} × {row['global_batch']} | {pair} | "
                f"{p['latent_f1']:.1f} / {p['latent_em']:.1f} | {p['shuffled_f1']:.1f} | {p['margin_f1']:+.1f} | "
                f"{text} | {delta} |"
            )
    return "\n".join(lines) + "\n"


def _changed_by_shuffle(latent: dict, predictions_path: Path) -> dict[str, float]:
    """The evaluation's own ``changed_by_shuffle_share``, or (results written before it existed) the same
    share recomputed from its predictions file; models with neither are absent."""
    stored = {m: c["changed_by_shuffle_share"] for m, c in latent["collapse"].items()
              if "changed_by_shuffle_share" in c}
    if len(stored) == len(latent["collapse"]) or not predictions_path.is_file():
        return stored
    rows = [json.loads(line) for line in predictions_path.read_text().splitlines() if line.strip()]
    ids = list(dict.fromkeys(r["id"] for r in rows if r["mode"] == "latent"))
    return changed_by_shuffle(rows, ids)


def ablation_table(rows: list[dict]) -> str:
    """Markdown: one line per variant and model (native runs: per variant and pair)."""
    native = [row.get("design") == "native" for row in rows]
    if any(native):
        if not all(native):
            raise CompareError("compare native runs with native runs only: their rows are per pair, not per model")
        return native_ablation_table(rows)
    lines = [
        "| variant | n | steps × batch | model | latent F1 / EM | retention | shuffled F1 | question-only F1 | "
        "cross F1 (from other) | z cosine | distinct | changed by shuffled z | flows |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        for model, m in row["models"].items():
            cross = ", ".join(f"{v:.1f}" for v in m["cross_f1_from"].values()) or "–"
            lines.append(
                f"| {row['variant']} | {row['n']} | {row['steps']} × {row['global_batch']} | {model} | "
                f"{m['latent_f1']:.1f} / {m['latent_em']:.1f} | {m['retention']:.0%} | {m['shuffled_f1']:.1f} | "
                f"{m['question_only_f1']:.1f} | {cross} | {m['z_cosine']:.4f} | {m['distinct_predictions']:.1%} | "
                f"{'–' if m['changed_by_shuffle'] is None else format(m['changed_by_shuffle'], '.1%')} | "
                f"{'yes' if m['flows'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def plot_ablation_curves(runs: dict[str, Path], path: Path) -> Path:
    """Per variant: total loss and, per model, the mean pairwise cosine of z across prompts, vs step."""
    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    losses, collapse = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for index, (name, run_dir) in enumerate(runs.items()):
        log = Path(run_dir) / METRICS_LOG_FILE
        if not log.is_file():
            raise CompareError(f"{run_dir}: no {METRICS_LOG_FILE}")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        colour = f"C{index}"
        answer_loss = [r["loss"].get("gen", np.nan) for r in rows]  # L_gen: comparable across variants
        losses.plot(steps, answer_loss, color=colour, label=name)
        for style, model in zip(("-", "--", ":"), rows[0]["models"]):
            cosine = [r["models"][model]["z_mean_pairwise_cosine"] if r.get("models") else np.nan for r in rows]
            collapse.plot(steps, cosine, style, color=colour, label=f"{name} · {model}")
    losses.set_xlabel("step")
    losses.set_title("answer CE (L_gen, summed over models)")
    losses.legend(fontsize=8)
    collapse.set_xlabel("step")
    collapse.set_ylim(-0.05, 1.05)
    collapse.set_title("mean pairwise cosine of z across prompts (1 = collapse)")
    collapse.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def compare_runs(runs: dict[str, Path], output_dir: Path, eval_dir: str = "eval") -> Path:
    """Write ``ablation.md``, ``ablation.json`` and ``ablation_curves.png`` for ``runs`` (name -> folder),
    reading each run's evaluation from ``eval_dir`` inside it."""
    if not runs:
        raise CompareError("give at least one NAME=RUN_DIR")
    rows = [variant_row(name, Path(directory), eval_dir) for name, directory in runs.items()]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ablation.md").write_text(ablation_table(rows))
    public = [{**row, "pairs": {pair: {k: v for k, v in p.items() if not k.startswith("_")}
                                    for pair, p in row["pairs"].items()}} if "pairs" in row else row for row in rows]
    (output_dir / "ablation.json").write_text(json.dumps(public, indent=2) + "\n")
    plot_ablation_curves(runs, output_dir / "ablation_curves.png")
    return output_dir
