"""Evaluation jobs: load data, run, and write metrics.json + predictions.jsonl + report.md."""

from __future__ import annotations

from pathlib import Path

from interlingua.config import Config
from interlingua.constants import METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE
from interlingua.data.squad import load_squad
from interlingua.eval.artifacts import prepare_run_dir, run_info, write_json, write_jsonl
from interlingua.eval.baselines import run_baselines, summarize
from interlingua.eval.report import baselines_report
from interlingua.runtime import frozen_dtype, resolve_device, seed_everything


def validation_examples(config: Config):
    return load_squad("validation", config.data.source, config.eval.limit, config.data.seed)


def baselines_job(config: Config, progress: bool = True) -> Path:
    """``interlingua baselines``: every model × {text, token budget, question only}."""
    seed_everything(config.runtime.seed)
    info = run_info(config, "baselines")  # before running: the git hash of the code that ran
    out_dir = prepare_run_dir(config, config.output_dir("baselines"))
    examples = validation_examples(config)
    device = resolve_device(config.runtime.device)
    rows, formats = run_baselines(config, examples, device, frozen_dtype(device), progress=progress)
    summary = summarize(rows)
    write_jsonl(out_dir / PREDICTIONS_FILE, rows)
    write_json(out_dir / METRICS_FILE, {"run": info, "n": len(examples), "prompt_formats": formats, "baselines": summary})
    (out_dir / REPORT_FILE).write_text(baselines_report(summary, formats, info))
    return out_dir
