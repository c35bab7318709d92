"""Several finished runs side by side: the ablation table and the training curves of every variant.

    interlingua compare seed=results/embedded-seed-s250 hybrid=runs/abl-hybrid -o results/ablation

A run folder is what ``interlingua run`` writes (``metrics.jsonl`` and ``eval/[step_N/]metrics.json``)
or a copy of it under ``results/``. Output: ``ablation.md``, ``ablation.json`` and ``ablation_curves.png``.
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


def eval_metrics_path(run_dir: Path) -> Path:
    """The newest ``metrics.json`` of a run's evaluation (``eval/metrics.json`` or ``eval/step_N/metrics.json``)."""
    run_dir = Path(run_dir)
    candidates = sorted(run_dir.glob(f"eval/step_*/{METRICS_FILE}")) or sorted(run_dir.glob(f"eval/{METRICS_FILE}"))
    if not candidates:
        raise CompareError(f"{run_dir}: no eval/{METRICS_FILE} or eval/step_*/{METRICS_FILE}; has the run finished?")
    return candidates[-1]


def variant_row(name: str, run_dir: Path) -> dict:
    """One row of the ablation table from a run folder."""
    metrics_path = eval_metrics_path(run_dir)
    metrics = json.loads(metrics_path.read_text())
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
    train = config["train"]
    pretrain = config.get("pretrain", {}).get("steps", 0)
    return {
        "variant": name, "run": str(run_dir), "n": latent["n"], "models": models,
        "agreement": [a["share"] for a in latent["agreement"]["latent"]],
        "steps": pretrain + train["steps"], "global_batch": train["batch_size"] * train["grad_accum"],
        "argv": metrics["run"].get("argv"),
    }


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
    """Markdown: one line per variant and model."""
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


def compare_runs(runs: dict[str, Path], output_dir: Path) -> Path:
    """Write ``ablation.md``, ``ablation.json`` and ``ablation_curves.png`` for ``runs`` (name -> folder)."""
    if not runs:
        raise CompareError("give at least one NAME=RUN_DIR")
    rows = [variant_row(name, Path(directory)) for name, directory in runs.items()]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "ablation.md").write_text(ablation_table(rows))
    (output_dir / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_ablation_curves(runs, output_dir / "ablation_curves.png")
    return output_dir
