"""Evaluation jobs: load data, run, and write metrics.json + predictions.jsonl + report.md."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from interlingua.config import Config, config_from_dict, config_to_dict, replace
from interlingua.constants import (
    CROSS_DECODE_PLOT,
    EVAL_SUBDIR,
    F1_BY_ROW_PLOT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RESOLVED_CONFIG_FILE,
    TRAINER_STATE_FILE,
)
from interlingua.data.squad import load_squad
from interlingua.eval.artifacts import prepare_run_dir, run_info, write_json, write_jsonl
from interlingua.eval.baselines import evaluate_baselines, run_baselines, summarize
from interlingua.eval.latent import evaluate_latent, information_flow
from interlingua.eval.native import evaluate_native
from interlingua.eval.plots import plot_cross_decode, plot_f1_by_row
from interlingua.eval.report import baselines_report, eval_report, native_eval_report
from interlingua.eval.reuse import load_baseline_rows
from interlingua.models.interlingua import CheckpointError, InterlinguaModel
from interlingua.models.native import NativeInterlingua
from interlingua.pipeline import InterlinguaSystem, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device, seed_everything
from interlingua.training.checkpoint import read_trainer_state

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
    rows, formats = run_baselines(config, examples, device, frozen_dtype(device), progress=progress)
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
        config: the run config; default: the one stored with the checkpoint (:func:`checkpoint_config`).
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
    system = InterlinguaSystem(model, *load_frozen_models(config, device, frozen_dtype(device)))
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
    write_jsonl(out_dir / PREDICTIONS_FILE, baseline_rows + native_rows)
    write_json(out_dir / METRICS_FILE, metrics)
    (out_dir / REPORT_FILE).write_text(native_eval_report(metrics))
    for conditioning, receivers in native["scores"].items():
        matrix = {a: {b: receivers[b][a]["latent" if a == b else "cross"] for b in receivers} for a in receivers}
        plot_cross_decode(matrix, out_dir / f"cross_decode_{conditioning}.png")
    return out_dir


def load_checkpoint(
    checkpoint_dir: Path, config: Config | None = None, overrides: list[str] | None = None
) -> tuple[InterlinguaModel, Config, torch.device]:
    """The learned modules of a checkpoint and the config to use them with (no frozen model is loaded).

    Args:
        checkpoint_dir: a ``step_N/`` folder.
        config, overrides: as for :func:`checkpoint_config`.
    Returns:
        ``(model, config, device)``: the model on ``runtime.device``; the config checked by
        :func:`check_checkpoint_config`.
    Raises:
        CheckpointError: no such folder, an unreadable checkpoint, or a config for other models.
        ConfigError: a bad override.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(
            f"{checkpoint_dir}: not an interlingua checkpoint (no such folder); pass a step_N/ folder written by "
            "`interlingua train`"
        )
    config = checkpoint_config(checkpoint_dir, config, overrides)
    device = resolve_device(config.runtime.device)
    model = InterlinguaModel.from_pretrained(checkpoint_dir, map_location=device)
    return model, check_checkpoint_config(model, config, checkpoint_dir), device


def _limit_override(limit: int | None) -> list[str]:
    return [f"eval.limit={limit}"] if limit is not None else []


def checkpoint_config(checkpoint_dir: Path, config: Config | None = None, overrides: list[str] | None = None) -> Config:
    """The config to evaluate a checkpoint with: ``config`` if given, else the one stored with it, then
    ``overrides`` on top.

    The stored config is looked up in the checkpoint's ``trainer_state.json`` (key ``config``: exactly the
    config that produced these weights, even after a resume with changes) and then in the run folder's
    ``config.yaml``.

    Raises:
        CheckpointError: no config given and none stored.
        ConfigError: a bad override.
    """
    if config is not None:
        return config_from_dict(config_to_dict(config), overrides, origin=f"config {config.name!r}")
    data, origin = _stored_config(Path(checkpoint_dir))
    return config_from_dict(data, overrides, origin=str(origin))


def _stored_config(checkpoint_dir: Path) -> tuple[dict, Path]:
    state_path = checkpoint_dir / TRAINER_STATE_FILE
    if state_path.is_file():
        config = read_trainer_state(checkpoint_dir).get("config")
        if isinstance(config, dict):
            return config, state_path
    run_config = checkpoint_dir.parent / RESOLVED_CONFIG_FILE
    if run_config.is_file():
        return OmegaConf.to_container(OmegaConf.load(run_config)), run_config
    raise CheckpointError(
        f"{checkpoint_dir}: no stored config (looked for 'config' in {state_path} and for {run_config}); "
        "pass the run's config explicitly (--config NAME)"
    )


def check_checkpoint_config(model: InterlinguaModel, config: Config, checkpoint_dir: Path) -> Config:
    """Check that ``config`` names the frozen models and encoder ``model`` was trained with (before
    loading any of them), and take the interlingua shape from the checkpoint.

    Returns:
        ``config`` with ``interlingua`` = the checkpoint's (it sets M for the token-budget baseline).
    Raises:
        CheckpointError: other models or another encoder; the message lists both sides.
    """
    trained, named = model.model_keys, [m.spec for m in config.models]
    if sorted(trained) != sorted(named) or model.spec.encoder != config.encoder:
        raise CheckpointError(
            f"{checkpoint_dir} was trained with models {trained} and encoder {model.spec.encoder!r}, but the config "
            f"names models {named} and encoder {config.encoder!r}; evaluate with the checkpoint's own config "
            "(omit --config) or set models.N.spec / encoder to match"
        )
    if config.interlingua != model.spec.interlingua:
        log.warning("config interlingua section differs from the checkpoint's; using the checkpoint's: %s",
                    model.spec.interlingua)
    return replace(config, interlingua=model.spec.interlingua)
