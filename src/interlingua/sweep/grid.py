"""The sweep file and the cells it names: a typed :class:`SweepConfig` (YAML <- ``key=value`` overrides)
and its grid expanded into :class:`Cell` s, each with the run config it trains and evaluates with.

    sweep = load_sweep("configs/sweeps/compression.yaml", ["eval_limit=100"])
    plan = plan_sweep(sweep, Path("runs/sweeps/compression"))
    for planned in plan.cells: ...   # planned.cell, planned.train_config, planned.eval_config, planned.train_dir

Cells that share ``(d_inter, num_slots)`` share one training run (post-training quantisation); with
``qat: true`` every cell trains its own, quantisation-aware at its precision and group size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from interlingua.codec.quantize import FLOAT_DTYPES
from interlingua.config import (
    SHIPPED_CONFIG_DIR,
    Config,
    ConfigError,
    Pooling,
    Precision,
    load_config,
    parse_override,
)

GRID_KEYS = {
    "d_inter": "interlingua.d_inter",
    "num_slots": "interlingua.num_slots",
    "precision": "compression.precision",
    "group_size": "compression.group_size",
}
"""Grid knob -> the run-config key it sets. ``d_inter`` and ``num_slots`` change the trained shape."""
REFERENCE_CELL = {"d_inter": 512, "num_slots": 32, "precision": Precision.FP16}
"""The message every cell's size is compared with: the seed's shape sent as fp16."""
TRAIN_SUBDIR = "train"
"""Training runs live in <sweep folder>/train/<shape>."""


@dataclass
class SweepConfig:
    """One compression sweep (``interlingua sweep --config FILE``)."""

    base: str = ""
    """Run config every cell starts from: a name (``embedded``, ``tiny``) or a YAML path."""
    overrides: List[str] = field(default_factory=list)
    """``key=value`` overrides of the base config for every cell, e.g. ``train.warmup_steps=5``."""
    grid: Dict[str, Any] = field(default_factory=dict)
    """Knob -> list of values; the cells are their product. Knobs: d_inter, num_slots, precision,
    group_size; one left out keeps the base config's value."""
    eval_limit: Optional[int] = 1000
    """Validation examples per cell (sets eval.limit); null = the base config's."""
    train_steps: Optional[int] = None
    """Optimizer steps of each training run (sets train.steps); null = the base config's."""
    qat: bool = False
    """false: one checkpoint per (d_inter, num_slots), every precision quantised after training; true:
    every cell trains quantisation-aware at its own precision and group size."""
    output_dir: Optional[str] = None
    """Sweep folder (trainings, cell results, tables, plot); null = runs/sweeps/<sweep file name>."""
    references: bool = True
    """Also read the same examples as text once (``interlingua baselines``: the whole prompt, the prompt
    cut to the base config's M tokens, the question only): the table's reference rows and the plot's
    markers, so every cell's F1 and bytes stand next to the text's."""
    baselines: Optional[str] = None
    """Folder of an earlier ``interlingua baselines`` / ``eval`` run to take the references from (checked:
    same examples, models and settings); null = compute them into <sweep folder>/baselines."""

    def __post_init__(self) -> None:
        if not self.base.strip():
            raise ConfigError("base is missing: name the run config the cells start from, e.g. base: embedded")
        if not self.grid:
            raise ConfigError(f"grid is empty: give at least one of {', '.join(GRID_KEYS)} a list of values, "
                              "e.g. grid: {precision: [fp16, int8, int4]}")
        unknown = sorted(set(self.grid) - set(GRID_KEYS))
        if unknown:
            raise ConfigError(f"grid.{unknown[0]} is not a sweep knob; grid keys: {', '.join(GRID_KEYS)}")
        self.grid = {key: _grid_values(key, self.grid[key]) for key in GRID_KEYS if key in self.grid}
        for key in ("eval_limit", "train_steps"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive or null, got {getattr(self, key)}")


def _grid_values(key: str, values: Any) -> list:
    """The checked values of ``grid.<key>``: a non-empty list without repeats, each valid for the knob."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"grid.{key} must be a non-empty list, e.g. {key}: [{_example(key)}], got {values!r}")
    checked = []
    for value in values:
        if key == "precision":
            try:
                value = Precision(value)
            except ValueError:
                choices = ", ".join(p.value for p in Precision)
                raise ConfigError(f"grid.precision: unknown precision {value!r}; choose from {choices}") from None
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"grid.{key} values must be positive integers, got {value!r}")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise ConfigError(f"grid.{key} repeats a value: {values}")
    return checked


def _example(key: str) -> str:
    return "fp16, int8, int4" if key == "precision" else {"d_inter": "512, 256", "num_slots": "32, 16"}.get(key, "32")


def find_sweep_file(name_or_path: str) -> Path:
    """A sweep file by path, else ``configs/sweeps/<name>.yaml`` here, else the shipped one.

    Raises:
        ConfigError: no such file; lists the shipped sweeps.
    """
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        file_name = f"{name_or_path}.yaml"
        candidates += [Path("configs/sweeps") / file_name, SHIPPED_CONFIG_DIR / "sweeps" / file_name]
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in (SHIPPED_CONFIG_DIR / "sweeps").glob("*.yaml"))
    raise ConfigError(f"sweep config {name_or_path!r} not found (looked at {', '.join(map(str, candidates))}); "
                      f"shipped sweeps: {', '.join(shipped) or 'none'}")


def load_sweep(name_or_path: str, overrides: Optional[List[str]] = None) -> SweepConfig:
    """Dataclass defaults <- the sweep YAML <- ``key=value`` overrides (e.g. ``eval_limit=100``).

    Raises:
        ConfigError: missing file, YAML that does not parse, unknown key, bad value; names the key.
    """
    path = find_sweep_file(name_or_path)
    try:
        from_file = OmegaConf.load(path)
    except Exception as err:  # yaml errors of several kinds
        raise ConfigError(f"{path}: not valid YAML ({_first_line(err)})") from None
    if not OmegaConf.is_dict(from_file):
        raise ConfigError(f"{path}: a sweep file is a mapping (keys base, overrides, grid, ...), not a list or value")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), from_file)
        for text in overrides or []:
            key, value = parse_override(text)
            if key.split(".")[0] not in merged:
                raise ConfigError(f"override {text!r}: unknown key {key!r}; sweep keys: {', '.join(merged.keys())}")
            OmegaConf.update(merged, key, value, merge=True)
        sweep = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, ConfigError):
            raise ConfigError(f"{path}: {err.__cause__}") from None
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{path}: bad key {key!r}: {_first_line(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if sweep.output_dir is None:
        sweep.output_dir = str(Path("runs") / "sweeps" / path.stem)
    return sweep


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---- cells ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    d_inter: int
    num_slots: int
    precision: Precision
    group_size: int
    """Values per scale; only meaningful for int8 / int4 (float precisions have no scales)."""

    @property
    def quantised(self) -> bool:
        return self.precision not in FLOAT_DTYPES

    @property
    def name(self) -> str:
        """File-name form: ``d512_m32_int4_g32`` (no group for float precisions)."""
        group = f"_g{self.group_size}" if self.quantised else ""
        return f"d{self.d_inter}_m{self.num_slots}_{self.precision.value}{group}"

    @property
    def label(self) -> str:
        group = f" group {self.group_size}" if self.quantised else ""
        return f"d_inter={self.d_inter} M={self.num_slots} {self.precision.value}{group}"

    def as_dict(self) -> dict:
        return {"d_inter": self.d_inter, "num_slots": self.num_slots, "precision": self.precision.value,
                "group_size": self.group_size if self.quantised else None}


@dataclass(frozen=True)
class PlannedCell:
    """A cell and everything needed to compute it."""

    cell: Cell
    train_dir: Path
    """Training run folder, shared by all cells of one shape unless the sweep trains with QAT."""
    train_config: Config
    eval_config: Config


@dataclass(frozen=True)
class SweepPlan:
    cells: list[PlannedCell]
    base_config: Config
    """The base config with the sweep's overrides (provenance of the tables)."""
    reference_shape: tuple[int, ...]
    """Shape of the reference message's z (:data:`REFERENCE_CELL` under the base's pooling)."""
    references_config: Config
    """The base config evaluated on the cells' examples: what the text references are run with."""


def z_shape(d_inter: int, num_slots: int, pooling: Pooling) -> tuple[int, ...]:
    """Shape of one message's z, as ``InterlinguaModel.z_shape`` gives it for a trained model."""
    return (d_inter,) if Pooling(pooling) == Pooling.MEAN else (num_slots, d_inter)


def expand_grid(sweep: SweepConfig, base: Config) -> list[Cell]:
    """Every cell, shapes outermost (the cells of one training run are adjacent); a knob the grid
    leaves out takes the base config's value."""
    defaults = {
        "d_inter": [base.interlingua.d_inter], "num_slots": [base.interlingua.num_slots],
        "precision": [Precision(base.compression.precision)], "group_size": [base.compression.group_size],
    }
    values = [sweep.grid.get(key, defaults[key]) for key in GRID_KEYS]
    cells = [Cell(*combination) for combination in itertools.product(*values)]
    # Float precisions ignore group_size: one cell each, not one per group size.
    unique = {(c.d_inter, c.num_slots, c.precision, c.group_size if c.quantised else None): c for c in cells}
    return list(unique.values())


def plan_sweep(sweep: SweepConfig, output_dir: Path, extra_overrides: Optional[List[str]] = None) -> SweepPlan:
    """Every cell with its training folder and configs, all built (and so validated) before any work.

    Args:
        sweep: the sweep.
        output_dir: the sweep folder.
        extra_overrides: ``key=value`` on the base config after the sweep's own (e.g. ``data.source=DIR``).
    Raises:
        ConfigError: a cell whose config is invalid (e.g. d_inter not divisible by interlingua.n_heads);
            names the key.
    """
    common = list(sweep.overrides) + list(extra_overrides or [])
    if sweep.train_steps is not None:  # before validation: a warmup longer than the base's own steps is fine
        common.append(f"train.steps={sweep.train_steps}")
    base = load_config(sweep.base, common)
    if base.interlingua.design.value == "native":
        raise ConfigError(
            f"sweep base {sweep.base!r} uses interlingua.design=native, which the compression sweep (d_inter x M x "
            "precision of the pooled design) does not cover yet; use a pooled base such as embedded"
        )
    limit = [f"eval.limit={sweep.eval_limit}"] if sweep.eval_limit is not None else []
    planned = []
    for cell in expand_grid(sweep, base):
        shape = [f"interlingua.d_inter={cell.d_inter}", f"interlingua.num_slots={cell.num_slots}"]
        wire = [f"compression.precision={cell.precision.value}", f"compression.group_size={cell.group_size}"]
        evaluation = wire + limit
        run_name = cell.name if sweep.qat else f"d{cell.d_inter}_m{cell.num_slots}"
        train_dir = Path(output_dir) / TRAIN_SUBDIR / run_name
        # Post-training quantisation: the training run does not depend on the wire settings.
        training = common + shape + [f"compression.qat={str(sweep.qat).lower()}"] + (wire if sweep.qat else [])
        training.append(f"runtime.output_dir={train_dir}")
        planned.append(PlannedCell(
            cell, train_dir, _cell_config(sweep, training, cell), _cell_config(sweep, training + evaluation, cell),
        ))
    reference = z_shape(REFERENCE_CELL["d_inter"], REFERENCE_CELL["num_slots"], base.interlingua.pooling)
    return SweepPlan(planned, base, reference, load_config(sweep.base, common + limit))


def _cell_config(sweep: SweepConfig, overrides: list[str], cell: Cell) -> Config:
    try:
        return load_config(sweep.base, overrides)
    except ConfigError as err:
        raise ConfigError(f"sweep cell {cell.label}: {err}") from None

