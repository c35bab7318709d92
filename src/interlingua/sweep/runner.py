"""Run a compression sweep: train each shape once, evaluate every cell through the wire, write the
table and the Pareto plot (after every computed cell too, labelled partial until the last). Resumable: a
cell whose result file matches its config is kept, a finished training run is reused, an interrupted
one continues from its latest checkpoint.

    out = run_sweep(load_sweep("configs/sweeps/compression.yaml", ["base.data.source=DIR"]))

Layout of the sweep folder::

    train/d512_m32/           one training run per shape (per cell with qat: true): step_*/, metrics.jsonl, ...
    cells/<cell>.json         the cell's result (config, scores, message bytes), written last and atomically
    cells/<cell>.predictions.jsonl
    cells/<cell>.passes/      native: each finished (sender, receiver) pass of an unfinished cell
    baselines/                the text references (``references.py``), unless taken from ``baselines: DIR``
    window_budget/            native: the text cut to each pool_window's receiver positions (``native.py``)
    table.md  table.csv  table.json  pareto.png   (native: frontier.png, F1 against bytes and positions)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

from interlingua.artifacts.files import run_info, write_json, write_jsonl
from interlingua.artifacts.layout import checkpoint_dir, latest_checkpoint, read_trainer_state
from interlingua.codec.message import message_size
from interlingua.config import Config, ConfigError, config_to_dict
from interlingua.eval.jobs import validation_examples
from interlingua.eval.latent import SentZ, evaluate_own_latent
from interlingua.models.interlingua import CheckpointError, weights_fingerprint
from interlingua.models.system import Interlingua, load_checkpoint, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device, seed_everything
from interlingua.settings import Artifact, settings_differences
from interlingua.sweep.grid import PlannedCell, SweepConfig, plan_sweep
from interlingua.sweep.native import evaluate_native_cell, window_budget_references, write_cell
from interlingua.sweep.native_report import NATIVE_PLOT, native_cell_line, ttft_speedups, write_native_report
from interlingua.sweep.pareto import plot_pareto
from interlingua.sweep.progress import Timing, format_duration
from interlingua.sweep.references import text_references
from interlingua.sweep.table import cell_rows, write_tables
from interlingua.training.recipe import total_steps, train

log = logging.getLogger(__name__)

CELLS_SUBDIR = "cells"
BASELINES_SUBDIR = "baselines"
WINDOW_BUDGET_SUBDIR = "window_budget"
PARETO_PLOT = "pareto.png"
START_FILE = "start.json"
"""Native sweeps: ``train/<shape>/start.json`` names the checkpoint (path and weights fingerprint) a shape trained
from; every cell record carries the same under ``start``."""


def run_sweep(
    sweep: SweepConfig,
    output_dir: Optional[Path] = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    report_only: bool = False,
) -> Path:
    """Compute every cell not already finished, then write ``table.{md,csv,json}`` and ``pareto.png``.

    Args:
        sweep: the sweep (:func:`~interlingua.sweep.grid.load_sweep`).
        output_dir: the sweep folder; default ``sweep.output_dir``.
        progress: progress bars of training and decoding.
        echo: where the one line per cell event goes.
        report_only: train and evaluate nothing: the tables and plot of the cells finished so far (a
            partial table of a long sweep, or of cells finished by runs with different grids). The text
            references are still read, and the token budget computed for the finished cells' windows only.
    Returns:
        The sweep folder.
    Raises:
        ConfigError: an invalid cell config (before any work).
        CheckpointError: a finished training run in the folder was trained with other settings.
    """
    out = Path(output_dir or sweep.output_dir)
    plan = plan_sweep(sweep, out)
    start = start_record(plan.base_config) if plan.native else None
    stored = {p.cell.name: _finished_result(out / CELLS_SUBDIR / f"{p.cell.name}.json", p, start)
              for p in plan.cells}
    if report_only:
        if not any(stored.values()):
            raise ConfigError(f"--report: none of the {len(plan.cells)} planned cells is finished in "
                              f"{out}/{CELLS_SUBDIR}")
        echo(f"--report: {sum(v is not None for v in stored.values())} of {len(plan.cells)} cells finished; "
             "nothing is trained or evaluated")
    evaluator = _Evaluator(progress, start)
    provenance = {"run": run_info(plan.base_config, "sweep"), "sweep": sweep_to_dict(sweep)}
    reference_bytes = None if plan.native else message_size(plan.reference_shape, "fp16", 0)  # native: per message

    references, window_budget = None, None
    if sweep.references:
        config = plan.references_config
        lms = evaluator.frozen_models(config, resolve_device(config.runtime.device))[0]
        folder = Path(sweep.baselines) if sweep.baselines else out / BASELINES_SUBDIR
        references = text_references(config, evaluator.validation(config), lms, folder, named=bool(sweep.baselines),
                                     progress=progress, echo=echo)
        if plan.native:
            windows = sorted({p.cell.pool_window for p in plan.cells if stored[p.cell.name] or not report_only})
            window_budget = window_budget_references(config, evaluator.validation(config), lms, windows,
                                                     out / WINDOW_BUDGET_SUBDIR, progress, echo)

    ttft = ttft_speedups(Path(sweep.ttft)) if plan.native and sweep.ttft else None

    def write_report(results: list[dict]) -> None:
        if plan.native:
            write_native_report(results, out, provenance, planned=len(plan.cells), references=references,
                                window_budget=window_budget, ttft=ttft)
            return
        rows = cell_rows(results, reference_bytes)
        write_tables(rows, out, provenance, planned=len(plan.cells), references=references)
        plot_pareto(rows, out / PARETO_PLOT, references=references)

    results, timing = [], Timing()
    for index, planned in enumerate(plan.cells, 1):
        prefix = f"[{index}/{len(plan.cells)}] {planned.cell.label}"
        path = out / CELLS_SUBDIR / f"{planned.cell.name}.json"
        if stored[planned.cell.name] is not None:
            echo(f"{prefix}: finished earlier, kept ({path})")
            results.append(stored[planned.cell.name])
            continue
        if report_only:
            continue
        started, steps = time.monotonic(), _steps_to_train(planned)
        checkpoint = _trained_checkpoint(
            planned, progress, lambda text: echo(f"{prefix}: {text}"), before_training=evaluator.release, start=start
        )
        if steps:
            timing.training_seconds += time.monotonic() - started
            timing.training_steps += steps
        echo(f"{prefix}: evaluating {planned.eval_config.eval.limit or 'all'} validation examples")
        result = evaluator(planned, checkpoint, path)
        timing.evaluations.append(result["evaluate_seconds"])
        if plan.native:
            summary = native_cell_line(result)
        else:
            scores = ", ".join(f"{model} F1 {s['f1']:.1f}" for model, s in result["scores"].items())
            summary = f"{scores}; {result['message']['bytes']} bytes per message"
        left = [p for p in plan.cells[index:] if not (out / CELLS_SUBDIR / f"{p.cell.name}.json").is_file()]
        steps_left = [_steps_to_train(p) for p in {p.train_dir: p for p in left}.values()]
        echo(f"{prefix}: {summary}; "
             f"evaluated in {format_duration(timing.evaluations[-1])}{timing.outlook(steps_left, len(left))}")
        results.append(result)
        if len(results) < len(plan.cells):
            write_report(results)  # the table and plot so far, labelled partial: hours of work show as they go
    write_report(results)
    echo(f"wrote {out}/table.md, table.csv, table.json and {NATIVE_PLOT if plan.native else PARETO_PLOT}")
    return out


def sweep_to_dict(sweep: SweepConfig) -> dict:
    """The sweep as plain JSON values, as a sweep file writes it (precisions as strings)."""
    return {"base": _plain(sweep.base), **sweep.grid_dict(), "qat": sweep.qat, "output_dir": sweep.output_dir,
            "references": sweep.references, "baselines": sweep.baselines, "ttft": sweep.ttft}


def _plain(node):
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(value) for value in node]
    return getattr(node, "value", node)


def start_record(base: Config) -> dict:
    """``{"path", "fingerprint"}`` of a native sweep's start checkpoint (``base.train.init_from``): a start retrained
    under the same path is another start.

    Raises:
        CheckpointError: its weights are missing or damaged.
    """
    return {"path": str(base.train.init_from), "fingerprint": weights_fingerprint(base.train.init_from)}


def _finished_result(path: Path, planned: PlannedCell, start: Optional[dict] = None) -> Optional[dict]:
    """The stored result of a cell if it was computed under the cell's current config (and, native, from the same
    start checkpoint where the record names one), else None."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; recomputing the cell", path)
        return None
    recorded = (stored.get("start") or {}).get("fingerprint")
    if start is not None and recorded is not None and recorded != start["fingerprint"]:
        log.info("%s was computed from another start checkpoint (weights %s, now %s); recomputing", path, recorded,
                 start["fingerprint"])
        return None
    changed = settings_differences(Artifact.SWEEP_CELL, stored.get("config", {}), planned.eval_config)
    if changed:
        log.info("%s was computed with other settings (%s); recomputing", path, "; ".join(map(str, changed)))
        return None
    return stored


def _final_checkpoint(planned: PlannedCell) -> Path:
    return checkpoint_dir(planned.train_dir, total_steps(planned.train_config))


def _steps_to_train(planned: PlannedCell) -> int:
    """Optimizer steps the cell's training run still needs (0 when finished or not trained in the sweep)."""
    if planned.fixed_checkpoint is not None:
        return 0
    latest = latest_checkpoint(planned.train_dir)
    done = read_trainer_state(latest)["step"] if latest else 0
    return total_steps(planned.train_config) - done


def _trained_checkpoint(
    planned: PlannedCell, progress: bool, echo: Callable[[str], None], before_training: Callable[[], None],
    start: Optional[dict] = None,
) -> Path:
    """The final checkpoint of the cell's training run: reused when finished (and trained with the same
    settings, from the same ``start`` where it recorded one), else trained, continuing from the latest checkpoint
    of an interrupted run (``before_training`` runs first, e.g. to free the evaluator's frozen models)."""
    if planned.fixed_checkpoint is not None:
        return planned.fixed_checkpoint
    config, run_dir = planned.train_config, planned.train_dir
    if start is not None:
        _check_start(run_dir, start)
    final = _final_checkpoint(planned)
    if final.is_dir():  # checkpoint folders appear complete or not at all (renamed into place)
        changed = settings_differences(Artifact.TRAINING_RUN, read_trainer_state(final)["config"], config)
        if changed:
            raise CheckpointError(
                f"{final} was trained with other settings ({'; '.join(map(str, changed))}); delete {run_dir} to "
                "retrain it, or give the sweep another output_dir"
            )
        return final
    latest = latest_checkpoint(run_dir)
    resuming = f", resuming from {latest.name}" if latest else ""
    echo(f"training {planned.cell.shape_label}, {total_steps(config)} steps{resuming}")
    before_training()
    if start is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / START_FILE, start)
    return train(config, run_dir, resume=latest is not None, progress=progress)


def _check_start(run_dir: Path, start: dict) -> None:
    """Refuse a shape's training run (finished or not) that started from other weights than ``start``."""
    path = run_dir / START_FILE
    if not path.is_file():
        return  # not begun, or trained before start records were kept
    try:
        recorded = json.loads(path.read_text()).get("fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is damaged ({err}), so the start weights of {run_dir} are unknown: delete {run_dir} to retrain "
            "it from this start, or give the sweep another output_dir") from err
    if recorded != start["fingerprint"]:
        raise CheckpointError(
            f"{run_dir} trained from other start weights (fingerprint {recorded}; {start['path']} is now "
            f"{start['fingerprint']}): delete {run_dir} to retrain it from this start, or give the sweep another "
            "output_dir")


class _Evaluator:
    """Evaluates cells; the frozen models and the validation examples are loaded once and shared."""

    def __init__(self, progress: bool, start: Optional[dict] = None):
        self.progress = progress
        self.start = start
        self._frozen: dict = {}
        self._examples: dict = {}
        self._sent = SentZ()  # the cells of one shape share a checkpoint: encode once, quantise per cell

    def __call__(self, planned: PlannedCell, checkpoint: Path, path: Path) -> dict:
        started = time.monotonic()
        model, config, device = load_checkpoint(checkpoint, config=planned.eval_config)
        seed_everything(config.runtime.seed)
        info = run_info(config, "sweep")
        system = Interlingua(model, *self.frozen_models(config, device), config)
        examples = self.validation(config)
        if system.is_native:
            rows, result = evaluate_native_cell(system, examples, planned, config, info, checkpoint,
                                                path.with_suffix(".passes"), self.progress)
            result["start"] = self.start
            result["evaluate_seconds"] = round(time.monotonic() - started, 1)
            write_cell(path, rows, result)
            return result
        rows, summary = evaluate_own_latent(system, examples, config, progress=self.progress, sent=self._sent)
        cell = planned.cell
        precision, group_size = cell.precision, cell.group_size if cell.grouped else 0
        first = next(iter(summary["messages"].values()))
        result = {
            "cell": cell.as_dict(),
            "config": config_to_dict(planned.eval_config),
            "run": info,
            "checkpoint": {"path": str(checkpoint.resolve()), "fingerprint": model.fingerprint(),
                           "trained_with_qat": config.compression.qat},
            "n": len(examples),
            "scores": {key: scores["latent"] for key, scores in summary["scores"].items()},
            "message": {"shape": list(model.z_shape), "precision": precision.value,
                        "group_size": group_size or None,
                        "bytes": message_size(model.z_shape, precision, group_size)},
            "prompt": {"mean_utf8_bytes": first["mean_prompt_utf8_bytes"],
                       "mean_gzip_bytes": first["mean_prompt_gzip_bytes"]},
            "summary": summary,
            "evaluate_seconds": round(time.monotonic() - started, 1),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path.with_suffix(".predictions.jsonl"), rows)
        write_json(path, result)  # last: its existence marks the cell finished
        return result

    def release(self) -> None:
        """Drop the frozen models (training loads its own; two copies of two 8B models do not fit)."""
        self._frozen = {}

    def frozen_models(self, config: Config, device) -> tuple:
        """``({spec: FrozenLM}, SentenceEncoder)`` of ``config``, loaded once (one set kept)."""
        dtype = frozen_dtype(device, config.runtime.dtype)
        key = (tuple((m.spec, m.prompt_format) for m in config.models), config.encoder, str(device), dtype)
        if key not in self._frozen:
            self._frozen = {key: load_frozen_models(config, device, dtype)}  # keep one set only
        return self._frozen[key]

    def validation(self, config: Config) -> list:
        """The validation examples of ``config`` (source, limit, seed), loaded once."""
        key = (config.data.source, config.eval.limit, config.data.seed)
        if key not in self._examples:
            self._examples[key] = validation_examples(config)
        return self._examples[key]
