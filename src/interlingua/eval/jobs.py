"""Evaluation jobs: load data, run, and write metrics.json + predictions.jsonl + report.md."""

from __future__ import annotations

import logging
from pathlib import Path

from interlingua.artifacts.files import prepare_run_dir, run_info, write_json, write_jsonl
from interlingua.config import Config
from interlingua.constants import (
    CROSS_DECODE_PLOT,
    EVAL_SUBDIR,
    F1_BY_ROW_PLOT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
)
from interlingua.data.squad import load_squad
from interlingua.eval.baselines import evaluate_baselines, run_baselines, summarize
from interlingua.eval.latent import evaluate_latent, information_flow
from interlingua.eval.native import evaluate_native
from interlingua.eval.plots import plot_cross_decode, plot_f1_by_row
from interlingua.eval.report import baselines_report, eval_report, native_eval_report
from interlingua.eval.reuse import load_baseline_rows
from interlingua.models.native import NativeInterlingua
from interlingua.models.system import Interlingua, load_checkpoint, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device, seed_everything

log = logging.getLogger(__name__)


def validation_examples(config: Config):
    return load_squad("validation", config.data.source, config.eval.limit, config.data.seed)


def baselines_job(config: Config, progress: bool = True) -> Path:
    """``interlingua baselines``: every model × {text, token budget, question only}."""
    seed_everything(config.runtime.seed)
    info = run_info(config, "baselines")  # before running: the git hash of the code that ran
    out_dir = prepare_run_dir(config, config.output_dir("baselines"))
    examples = validation_examples(config)
    device = resolve_device(config.runtime.device)
    dtype = frozen_dtype(device, config.runtime.dtype)
    rows, formats = run_baselines(config, examples, device, dtype, progress=progress)
    write_baselines(out_dir, rows, formats, info)
    return out_dir


def write_baselines(out_dir: Path, rows: list[dict], formats: dict[str, str], info: dict) -> dict:
    """A baselines folder (predictions.jsonl, metrics.json, report.md) that ``eval --baselines`` can reuse.

    Returns:
        :func:`~interlingua.eval.baselines.summarize` of ``rows``.
    """
    out_dir, summary = Path(out_dir), summarize(rows)
    n = len({row["id"] for row in rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / PREDICTIONS_FILE, rows)
    (out_dir / REPORT_FILE).write_text(baselines_report(summary, formats, info))
    write_json(out_dir / METRICS_FILE, {"run": info, "n": n, "prompt_formats": formats, "baselines": summary})
    return summary


def eval_job(
    checkpoint_dir: Path,
    config: Config | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
    output_dir: Path | None = None,
    baselines_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """``interlingua eval``: baselines and latent rows of one checkpoint on the same validation examples.

    Args:
        checkpoint_dir: a ``step_N/`` folder (``InterlinguaModel.save_pretrained`` layout).
        config: the run config; default: the one stored with the checkpoint (``models.system.checkpoint_config``).
        overrides: ``key=value`` strings applied on top of either config.
        limit: validation examples (sets ``eval.limit``).
        output_dir: results folder; default ``<run>/eval/<step_N>`` beside the checkpoints (the stored
            ``runtime.output_dir`` is the training run's own folder, so it is not used).
        baselines_dir: reuse the baseline rows of this earlier run (checked to match) instead of
            recomputing them.
        progress: show progress bars.
    Returns:
        the results folder: metrics.json, predictions.jsonl, report.md, config.yaml and the plots.
    Raises:
        CheckpointError: unreadable checkpoint, or one trained for other models or another encoder.
        BaselineReuseError: ``baselines_dir`` was produced under other settings or lacks examples.
    """
    checkpoint_dir = Path(checkpoint_dir)
    model, config, device = load_checkpoint(checkpoint_dir, config, list(overrides or []) + _limit_override(limit))
    seed_everything(config.runtime.seed)
    info = run_info(config, "eval")  # before running: the git hash of the code that ran
    system = Interlingua(model, *load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype)), config)
    out_dir = prepare_run_dir(config, Path(output_dir or checkpoint_dir.parent / EVAL_SUBDIR / checkpoint_dir.name))
    examples = validation_examples(config)
    formats = {key: lm.prompt_format.value for key, lm in system.lms.items()}
    if baselines_dir is not None:
        baseline_rows = load_baseline_rows(Path(baselines_dir), examples, config, formats)
    else:
        baseline_rows = [row for lm in system.lms.values()
                         for row in evaluate_baselines(lm, examples, config, progress)]
    if isinstance(model, NativeInterlingua):
        return _native_eval(system, examples, config, baseline_rows, info, checkpoint_dir, baselines_dir, out_dir,
                            progress)
    latent_rows, latent = evaluate_latent(system, examples, config, text_rows=baseline_rows, progress=progress)
    baselines = summarize(baseline_rows)
    metrics = {
        "run": info,
        "n": len(examples),
        "checkpoint": {"path": str(checkpoint_dir.resolve()), "fingerprint": model.fingerprint()},
        "prompt_formats": formats,
        "baselines_from": str(Path(baselines_dir).resolve()) if baselines_dir is not None else None,
        "baselines": baselines,
        "latent": latent,
        "information_flow": information_flow(baselines, latent),
    }
    write_jsonl(out_dir / PREDICTIONS_FILE, baseline_rows + latent_rows)
    write_json(out_dir / METRICS_FILE, metrics)
    (out_dir / REPORT_FILE).write_text(eval_report(metrics))
    plot_cross_decode(latent["cross_decode"], out_dir / CROSS_DECODE_PLOT)
    plot_f1_by_row(baselines, latent, out_dir / F1_BY_ROW_PLOT)
    return out_dir


NATIVE_PASSES_SUBDIR = "passes"  # finished (conditioning, sender, receiver) passes: a stopped eval resumes


def _native_eval(system, examples, config, baseline_rows, info, checkpoint_dir, baselines_dir, out_dir,
                 progress) -> Path:
    """eval_job for the native design: every pair under each of ``eval.conditionings`` (eval/native.py)."""
    native_rows, native = evaluate_native(system, examples, config, text_rows=baseline_rows, progress=progress,
                                          passes_dir=out_dir / NATIVE_PASSES_SUBDIR)
    baselines = summarize(baseline_rows)
    metrics = {
        "run": info, "n": len(examples),
        "checkpoint": {"path": str(checkpoint_dir.resolve()), "fingerprint": system.model.fingerprint()},
        "prompt_formats": {key: lm.prompt_format.value for key, lm in system.lms.items()},
        "baselines_from": str(Path(baselines_dir).resolve()) if baselines_dir is not None else None,
        "baselines": baselines, "native": native,
    }
    own = [row for row in native_rows if "decoder" not in row]
    write_jsonl(out_dir / PREDICTIONS_FILE, baseline_rows + own)
    for decoder in native.get("heads", {}):  # apart, so that readers of predictions.jsonl see one head
        head_rows = [r for r in native_rows if r.get("decoder") == decoder]
        write_jsonl(out_dir / f"predictions_{decoder}_head.jsonl", head_rows)
    write_json(out_dir / METRICS_FILE, metrics)
    (out_dir / REPORT_FILE).write_text(native_eval_report(metrics))
    for conditioning, receivers in native["scores"].items():
        matrix = {a: {b: receivers[b][a]["latent" if a == b else "cross"] for b in receivers} for a in receivers}
        plot_cross_decode(matrix, out_dir / f"cross_decode_{conditioning}.png")
    return out_dir


def _limit_override(limit: int | None) -> list[str]:
    return [f"eval.limit={limit}"] if limit is not None else []
