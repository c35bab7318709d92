"""The sweep file and the cells it names: a typed :class:`SweepConfig`, a nested config like the run
configs (YAML <- ``KEY=VALUE`` overrides), and its grid expanded into :class:`Cell` s, each with the run
config it trains and evaluates with.

    sweep = load_sweep("compression", ["base.eval.limit=100", "grid.precision=[fp16,int4]"])
    plan = plan_sweep(sweep, Path("runs/sweeps/compression"))
    for planned in plan.cells: ...   # planned.cell, planned.train_config, planned.eval_config, planned.train_dir

``grids:`` (a list of such grids) instead of ``grid:`` makes the cells the union of several products: a design that
varies one knob at a time around a frontier costs a fraction of the whole product. ``only.KEY=[...]`` keeps the cells
whose knob is among those values (``only.precision=[vocab]``: the vocab cells of every part), on any sweep;
``grid.KEY=[...]`` on the command line replaces a file's ``grids`` by the one grid it gives.

A sweep file's ``base:`` is the run every cell starts from, written as a config file is (``extends: NAME``
plus nested keys of the run); ``base.KEY=VALUE`` overrides reach it, every other key is the sweep's own.
Cells that share ``(d_inter, num_slots)`` share one training run (post-training quantisation); with
``qat: true`` every cell trains its own, quantisation-aware at its precision and group size.

A base of the native design (DESIGN §8) sweeps ``pool_window x pool_mode x d_inter x d_wire x precision`` instead
(:class:`NativeCell`): every shape trains from ``base.train.init_from`` (the uncompressed checkpoint),
and a shape equal to that checkpoint's is evaluated as it is, untrained further.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from interlingua.codec.quantize import INT_LEVELS
from interlingua.config import (
    EXTENDS_KEY,
    SHIPPED_CONFIG_DIR,
    Config,
    ConfigError,
    Pooling,
    PoolMode,
    Precision,
    config_from_mapping,
    parse_override,
    resolve_extends,
)

GRID_KEYS = {
    "d_inter": "interlingua.d_inter",
    "num_slots": "interlingua.num_slots",
    "pool_window": "interlingua.pool_window",
    "pool_mode": "interlingua.pool_mode",
    "d_wire": "interlingua.d_wire",
    "precision": "compression.precision",
    "group_size": "compression.group_size",
}
"""Grid knob -> the run-config key it sets. ``d_inter``, ``num_slots``, ``pool_window``, ``pool_mode`` and ``d_wire``
change the trained shape; ``num_slots`` belongs to the pooled designs, the last three to the native one."""
REFERENCE_CELL = {"d_inter": 512, "num_slots": 32, "precision": Precision.FP16}
"""The message every cell's size is compared with: the seed's shape sent as fp16."""
TRAIN_SUBDIR = "train"
"""Training runs live in <sweep folder>/train/<shape>."""
BASE_PREFIX = "base."
"""``base.KEY=VALUE`` overrides the base run config of every cell (``base.data.source=DIR``)."""
MOVED_SWEEP_KEYS = {
    "overrides": "write them as nested keys of the run under base: (base: {train: {warmup_steps: 5}}), or as "
                 "base.KEY=VALUE on the command line",
    "eval_limit": "it is base.eval.limit now (base: {eval: {limit: 1000}})",
    "train_steps": "it is base.train.steps now (base: {train: {steps: 150}})",
}
"""Keys of the earlier sweep-file format -> where their setting lives now."""


@dataclass
class SweepGrid:
    """Knob -> list of values; the cells are their product. A knob left null keeps the base run's value."""

    d_inter: Optional[List[Any]] = None
    """Widths of the shared space (``interlingua.d_inter``); each value trains its own checkpoint."""
    num_slots: Optional[List[Any]] = None
    """M, soft tokens per adapter (``interlingua.num_slots``); each value trains its own checkpoint."""
    pool_window: Optional[List[Any]] = None
    """Native design: consecutive z vectors pooled into one (``interlingua.pool_window``), so a message has
    ceil(T / k) positions; each value trains its own checkpoint."""
    pool_mode: Optional[List[Any]] = None
    """Native design: how those ceil(T / k) positions are made (``interlingua.pool_mode``: ``window``, the mean of
    k neighbours to start with, or ``prefix``, the first ones of the refined z); k = 1 has one cell whatever the
    mode."""
    d_wire: Optional[List[Any]] = None
    """Native design: widths of the message on the wire (``interlingua.d_wire``; ``null`` = the full d_inter): the
    trained d_inter-wide model sends its z's top principal coordinates, fitted in closed form, then trained."""
    precision: Optional[List[Any]] = None
    """Wire precisions (``compression.precision``): fp32, fp16, bf16, int8, int4; vocab for a native base."""
    group_size: Optional[List[Any]] = None
    """Values per scale of int8 / int4 (``compression.group_size``); float precisions ignore it."""

    def __post_init__(self) -> None:
        for key in GRID_KEYS:
            if getattr(self, key) is not None:
                setattr(self, key, _grid_values(key, getattr(self, key)))

    def knobs(self) -> Dict[str, list]:
        """The knobs the grid sets, in :data:`GRID_KEYS` order (precisions as :class:`Precision`)."""
        return {key: getattr(self, key) for key in GRID_KEYS if getattr(self, key) is not None}


@dataclass
class SweepConfig:
    """One compression sweep (``interlingua sweep --config FILE [KEY=VALUE …]``)."""

    base: Dict[str, Any] = field(default_factory=dict)
    """The run config every cell starts from, written as a config file is: ``extends: NAME`` (a config
    name such as ``embedded`` or a YAML path) plus nested keys of the run, e.g. ``train: {steps: 150}``
    and ``eval: {limit: 1000}`` (the validation examples of every cell and of the text references)."""
    grid: SweepGrid = field(default_factory=SweepGrid)
    """The knobs and their values (:class:`SweepGrid`): the cells are their product."""
    grids: List[SweepGrid] = field(default_factory=list)
    """Instead of ``grid``: several grids, the cells the union of their products (a cell that two parts name is one
    cell), e.g. the frontier over pool_window x precision plus each other knob varied at one point of it."""
    only: SweepGrid = field(default_factory=SweepGrid)
    """Keep only the cells whose knobs are among these values (``only.pool_window=[4] only.precision=[vocab]``): a
    part of the sweep's cells, computed or reported alone; a k = 1 cell matches any ``pool_mode``."""
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
    ttft: Optional[str] = None
    """Native sweeps: a folder of ``benchmarks/receiver_ttft.py --json`` outputs (one per pool_window, e.g.
    from scripts/native_ttft.sh): each cell's receiver time-to-first-token speedup over the text prompt."""

    def __post_init__(self) -> None:
        if not str(self.base.get(EXTENDS_KEY) or "").strip() and "models" not in self.base:
            raise ConfigError("base.extends is missing: name the run config the cells start from, "
                              "e.g. base: {extends: embedded}")
        if self.grids and self.grid.knobs():
            raise ConfigError("give grid (one product of knobs) or grids (a list of them, the cells their union), "
                              "not both")
        if not self.grids and not self.grid.knobs():
            raise ConfigError(f"grid is empty: give at least one of {', '.join(GRID_KEYS)} a list of values, "
                              "e.g. grid: {precision: [fp16, int8, int4]}")
        for index, part in enumerate(self.grids):
            if not part.knobs():
                raise ConfigError(f"grids[{index}] is empty: give each part at least one knob with a list of values, "
                                  f"e.g. - {{pool_window: [4], precision: [int8]}}")

    def parts(self) -> List[SweepGrid]:
        """The grids whose products make the cells: ``grids``, or ``[grid]``."""
        return list(self.grids) or [self.grid]

    def knob_set(self, knob: str) -> bool:
        """Whether any part of the grid sets ``knob``."""
        return any(getattr(part, knob) is not None for part in self.parts())

    def grid_dict(self) -> dict:
        """The grid as a sweep file writes it: ``{"grid": {knob: values}}`` or ``{"grids": [...]}``, and ``only``
        where it is set."""
        plain = [_plain_knobs(part) for part in self.parts()]
        out = {"grids": plain} if self.grids else {"grid": plain[0]}
        return out | ({"only": _plain_knobs(self.only)} if self.only.knobs() else {})

    def selected(self, cell: Any) -> bool:
        """Whether ``cell`` is among the ``only`` values (a k = 1 cell matches any pool_mode)."""
        for key, values in self.only.knobs().items():
            if key == "pool_mode" and getattr(cell, "pool_window", None) == 1:
                continue
            if getattr(cell, key, None) not in values:
                return False
        return True

    @property
    def base_name(self) -> str:
        """What the base extends (for messages and tables)."""
        return str(self.base.get(EXTENDS_KEY) or "the base")

    def run_config(self, overrides: Optional[List[str]] = None) -> Config:
        """The base run config with ``KEY=VALUE`` overrides of its own keys (``interlingua.d_inter=256``).

        Raises:
            ConfigError: the base or an override is invalid; names the key.
        """
        return config_from_mapping(self.base, overrides, origin="sweep base")


def _plain_knobs(grid: SweepGrid) -> dict:
    return {key: [getattr(v, "value", v) for v in values] for key, values in grid.knobs().items()}


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
        elif key == "pool_mode":
            try:
                value = PoolMode(value).value
            except ValueError:
                choices = ", ".join(m.value for m in PoolMode)
                raise ConfigError(f"grid.pool_mode: unknown mode {value!r}; choose from {choices}") from None
        elif key == "d_wire" and value is None:
            pass  # the full width: no narrow wire
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"grid.{key} values must be positive integers{' or null' if key == 'd_wire' else ''}, "
                              f"got {value!r}")
        checked.append(value)
    if len(set(checked)) != len(checked):
        raise ConfigError(f"grid.{key} repeats a value: {list(values)}")
    return checked


def _example(key: str) -> str:
    examples = {"d_inter": "512, 256", "num_slots": "32, 16", "pool_window": "1, 4, 16", "pool_mode": "window, prefix",
                "d_wire": "null, 64"}
    return "fp16, int8, int4" if key == "precision" else examples.get(key, "32")


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
    """Dataclass defaults <- the sweep YAML <- ``KEY=VALUE`` overrides, as :func:`~interlingua.config.load_config`
    does for a run: ``base.train.steps=40`` changes the base run of every cell, ``grid.precision=[fp16,int4]``,
    ``qat=true`` the sweep.

    Raises:
        ConfigError: missing file, YAML that does not parse, unknown key, bad value, an invalid base run
            config; names the key.
    """
    path = find_sweep_file(name_or_path)
    try:
        from_file = OmegaConf.load(path)
    except Exception as err:  # yaml errors of several kinds
        raise ConfigError(f"{path}: not valid YAML ({_first_line(err)})") from None
    if not OmegaConf.is_dict(from_file):
        raise ConfigError(f"{path}: a sweep file is a mapping (keys base, grid, qat, ...), not a list or value")
    moved = [key for key in MOVED_SWEEP_KEYS if key in from_file]
    if moved:
        raise ConfigError(f"{path}: {moved[0]} is no longer a sweep key: {MOVED_SWEEP_KEYS[moved[0]]}")
    if "base" in from_file and not OmegaConf.is_dict(from_file.base):
        raise ConfigError(f"{path}: base must be a mapping: the run config written as a config file is, "
                          f"e.g. base: {{extends: {from_file.base}}}")
    parsed = [(text, *parse_override(text)) for text in overrides or []]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepConfig), from_file)
        for text, key, value in parsed:
            if key.startswith(BASE_PREFIX) or key == "base":
                continue
            if key.startswith("grid.") and key.removeprefix("grid.") not in GRID_KEYS:
                raise ConfigError(f"override {text!r}: {key} is not a sweep knob; grid keys: {', '.join(GRID_KEYS)}")
            if key.startswith("only.") and key.removeprefix("only.") not in GRID_KEYS:
                raise ConfigError(f"override {text!r}: {key} is not a sweep knob; only.KEY takes a grid key: "
                                  f"{', '.join(GRID_KEYS)}")
            if key.startswith("grid.") and len(merged.grids):
                merged.grids = []  # the command line's grid replaces the file's parts (only.KEY chooses among them)
            if OmegaConf.select(merged, key, default=_MISSING) is _MISSING:
                hint = MOVED_SWEEP_KEYS.get(key) or f"sweep keys: {', '.join(merged.keys())}"
                raise ConfigError(f"override {text!r}: unknown key {key!r}; {hint}")
            OmegaConf.update(merged, key, value, merge=True)
        for text, key, value in parsed:  # base=… first, then base.extends, then the base's own keys
            if key == "base":
                OmegaConf.update(merged, key, value, merge=False)
        for text, key, value in sorted((p for p in parsed if p[1].startswith(BASE_PREFIX)),
                                       key=lambda p: p[1] != BASE_PREFIX + EXTENDS_KEY):
            _override_base(merged, text, key.removeprefix(BASE_PREFIX), value)
        sweep = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, ConfigError):
            raise ConfigError(f"{path}: {err.__cause__}") from None
        key = getattr(err, "full_key", None) or "?"
        if isinstance(err, ConfigKeyError) and key.startswith(("grid.", "only.")):
            raise ConfigError(f"{path}: {key} is not a sweep knob; grid keys: {', '.join(GRID_KEYS)}") from None
        raise ConfigError(f"{path}: bad key {key!r}: {_first_line(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if sweep.output_dir is None:
        sweep.output_dir = str(Path("runs") / "sweeps" / path.stem)
    try:
        sweep.run_config()  # the base alone must be a valid run config, before any work
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return sweep


def _override_base(merged, text: str, key: str, value: Any) -> None:
    """``base.KEY=VALUE``: check ``KEY`` against the base run config (``extends`` resolved), then set it in
    the sweep's ``base`` mapping (a list the base only inherits, e.g. ``models``, is copied in first so
    that ``base.models.1.prompt_format=chat`` changes one entry)."""
    if key != EXTENDS_KEY:
        inherited = resolve_extends(merged.base, "sweep base")
        structured = OmegaConf.merge(OmegaConf.structured(Config), inherited)
        if OmegaConf.select(structured, key, default=_MISSING) is _MISSING:
            parent = key.rpartition(".")[0]
            node = OmegaConf.select(structured, parent) if parent else structured
            known = ", ".join(f"base.{parent + '.' if parent else ''}{k}" for k in node.keys()) \
                if OmegaConf.is_dict(node) else "see `interlingua config --config NAME`"
            raise ConfigError(f"override {text!r}: unknown key {BASE_PREFIX + key!r}; known: {known}")
        top = key.split(".")[0]
        if top not in merged.base and OmegaConf.is_list(inherited.get(top)):
            merged.base[top] = inherited[top]
    OmegaConf.update(merged.base, key, value, merge=True)


_MISSING = object()


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ---- cells ------------------------------------------------------------------------------------
class _WireCell:
    """What every cell has besides its shape: the wire precision and group size, and its names."""

    precision: Precision
    group_size: int
    """Values per scale; only meaningful for int8 / int4 (float precisions and vocab have no groups)."""

    @property
    def grouped(self) -> bool:
        return self.precision in INT_LEVELS

    @property
    def name(self) -> str:
        """File-name form: the shape, then the precision and (int8 / int4) the group: ``d512_m32_int4_g32``."""
        group = f"_g{self.group_size}" if self.grouped else ""
        return f"{self.shape_name}_{self.precision.value}{group}"

    @property
    def label(self) -> str:
        group = f" group {self.group_size}" if self.grouped else ""
        return f"{self.shape_label} {self.precision.value}{group}"

    def as_dict(self) -> dict:
        return {**self.shape, "precision": self.precision.value,
                "group_size": self.group_size if self.grouped else None}


@dataclass(frozen=True)
class Cell(_WireCell):
    """One point of the grid of a pooled design: z is ``(num_slots, d_inter)`` (or ``(d_inter,)``)."""

    d_inter: int
    num_slots: int
    precision: Precision
    group_size: int

    @property
    def shape(self) -> dict:
        return {"d_inter": self.d_inter, "num_slots": self.num_slots}

    @property
    def shape_name(self) -> str:
        return f"d{self.d_inter}_m{self.num_slots}"

    @property
    def shape_label(self) -> str:
        return f"d_inter={self.d_inter} M={self.num_slots}"


@dataclass(frozen=True)
class NativeCell(_WireCell):
    """One point of a native sweep: the message is ``(ceil(T / pool_window), d_inter)`` at ``precision``."""

    d_inter: int
    pool_window: int
    precision: Precision
    group_size: int
    pool_mode: str = PoolMode.WINDOW.value
    """How the ceil(T / k) positions are made; at k = 1 there is nothing to pool and it is always ``window``."""
    d_wire: Optional[int] = None
    """Width of the message (None: d_inter)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_mode", PoolMode(self.pool_mode).value if self.pool_window > 1
                           else PoolMode.WINDOW.value)

    @property
    def shape(self) -> dict:
        shape = {"d_inter": self.d_inter, "pool_window": self.pool_window, "pool_mode": self.pool_mode}
        return shape | ({"d_wire": self.d_wire} if self.d_wire is not None else {})

    @property
    def _mode_tag(self) -> str:
        return "" if self.pool_mode == PoolMode.WINDOW.value else self.pool_mode

    @property
    def shape_name(self) -> str:
        wire = f"_w{self.d_wire}" if self.d_wire is not None else ""
        return f"k{self.pool_window}{self._mode_tag}_d{self.d_inter}{wire}"

    @property
    def shape_label(self) -> str:
        mode = f" pool_mode={self.pool_mode}" if self._mode_tag else ""
        wire = f" d_wire={self.d_wire}" if self.d_wire is not None else ""
        return f"pool_window={self.pool_window}{mode} d_inter={self.d_inter}{wire}"


@dataclass(frozen=True)
class PlannedCell:
    """A cell and everything needed to compute it."""

    cell: Cell | NativeCell
    train_dir: Path
    """Training run folder, shared by all cells of one shape unless the sweep trains with QAT."""
    train_config: Config
    eval_config: Config
    fixed_checkpoint: Optional[Path] = None
    """Evaluate this checkpoint instead of training (native: the shape of ``train.init_from`` itself)."""


@dataclass(frozen=True)
class SweepPlan:
    cells: list[PlannedCell]
    base_config: Config
    """The base run config (provenance of the tables)."""
    reference_shape: tuple[int, ...]
    """Shape of the reference message's z (:data:`REFERENCE_CELL` under the base's pooling); native: ``(-1,
    d_inter)``, T' varies per message, so native cells are compared with the text each message replaces."""
    references_config: Config
    """What the text references are run with: the base run config (its ``eval.limit`` is the cells')."""

    @property
    def native(self) -> bool:
        return self.base_config.interlingua.design.value == "native"


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
    return _product(sweep, Cell, defaults)


def _product(sweep: SweepConfig, cell_type: type, defaults: dict[str, list]) -> list:
    """The cells of ``cell_type`` over the product of the grid's knobs, in ``defaults``' order (outermost
    first), a knob the grid leaves out taking its ``defaults`` value; with ``grids``, each part's product in turn,
    a cell already named by an earlier part not repeated and the cells of one shape kept adjacent (one training run
    after another). Float and vocab precisions ignore group_size: one cell each, not one per group size (cells are
    told apart by :attr:`_WireCell.name`)."""
    cells = []
    for part in sweep.parts():
        knobs = part.knobs()
        values = [knobs.get(key, default) for key, default in defaults.items()]
        cells += [cell_type(**dict(zip(defaults, combination))) for combination in itertools.product(*values)]
    unique = [cell for cell in {cell.name: cell for cell in cells}.values() if sweep.selected(cell)]
    if not unique:
        raise ConfigError(f"only {_plain_knobs(sweep.only)} keeps none of the sweep's cells "
                          f"({len({c.name for c in cells})} before it)")
    first_of_shape = {name: index for index, name in reversed(list(enumerate(c.shape_name for c in unique)))}
    return sorted(unique, key=lambda cell: first_of_shape[cell.shape_name])


def plan_sweep(sweep: SweepConfig, output_dir: Path) -> SweepPlan:
    """Every cell with its training folder and configs, all built (and so validated) before any work.

    Args:
        sweep: the sweep (its ``base`` already carries any ``base.KEY=VALUE`` overrides).
        output_dir: the sweep folder.
    Raises:
        ConfigError: a cell whose config is invalid (e.g. d_inter not divisible by interlingua.n_heads);
            names the key.
    """
    base = sweep.run_config()
    if base.interlingua.design.value == "native":
        return plan_native_sweep(sweep, base, output_dir)
    for knob in ("pool_window", "pool_mode", "d_wire"):
        if sweep.knob_set(knob):
            raise ConfigError(f"grid.{knob} is a knob of the native design; sweep base {sweep.base_name!r} is "
                              f"{base.interlingua.design.value} (its knob is grid.num_slots)")
    planned = [_planned_cell(sweep, cell, Path(output_dir)) for cell in expand_grid(sweep, base)]
    reference = z_shape(REFERENCE_CELL["d_inter"], REFERENCE_CELL["num_slots"], base.interlingua.pooling)
    return SweepPlan(planned, base, reference, base)


def _planned_cell(sweep: SweepConfig, cell: Cell | NativeCell, output_dir: Path,
                  fixed_checkpoint: Optional[Path] = None) -> PlannedCell:
    """A cell's training folder and its training and evaluation configs: the base with the cell's shape
    (``interlingua.<knob>=<value>`` for each key of ``cell.shape``) and wire settings."""
    shape = [f"interlingua.{key}={value}" for key, value in cell.shape.items()]
    wire = [f"compression.precision={cell.precision.value}", f"compression.group_size={cell.group_size}"]
    train_dir = output_dir / TRAIN_SUBDIR / (cell.name if sweep.qat else cell.shape_name)
    # Post-training quantisation: the training run does not depend on the wire settings.
    training = shape + [f"compression.qat={str(sweep.qat).lower()}"] + (wire if sweep.qat else [])
    training.append(f"runtime.output_dir={train_dir}")
    return PlannedCell(cell, train_dir, _cell_config(sweep, training, cell), _cell_config(sweep, training + wire, cell),
                       fixed_checkpoint=fixed_checkpoint)


def _cell_config(sweep: SweepConfig, overrides: list[str], cell: Cell | NativeCell) -> Config:
    try:
        return sweep.run_config(overrides)
    except ConfigError as err:
        raise ConfigError(f"sweep cell {cell.label}: {err}") from None



def expand_native_grid(sweep: SweepConfig, base: Config) -> list[NativeCell]:
    """Every native cell, shapes ``(pool_window, pool_mode, d_inter, d_wire)`` outermost; a knob left out takes the
    base's value. A ``d_wire`` at or above a cell's ``d_inter`` is no narrower than that cell's message, so the
    product leaves that combination out (``d_inter: [512, 64]`` with ``d_wire: [null, 64]`` is 3 widths, not 4),
    and so does a ``d_wire`` with ``precision: vocab``, which sends each d_inter-wide position as vocabulary ids.

    Raises:
        ConfigError: every combination is left out that way.
    """
    if base.interlingua.pool_size is None:
        raise ConfigError("a native sweep needs a numeric base interlingua.pool_window (1 = uncompressed), not 'all'")
    defaults = {
        "pool_window": [base.interlingua.pool_size], "pool_mode": [PoolMode(base.interlingua.pool_mode).value],
        "d_inter": [base.interlingua.d_inter], "d_wire": [base.interlingua.d_wire],
        "precision": [Precision(base.compression.precision)], "group_size": [base.compression.group_size],
    }
    cells = [c for c in _product(sweep, NativeCell, defaults)
             if c.d_wire is None or (c.d_wire < c.d_inter and c.precision != Precision.VOCAB)]
    if not cells:
        raise ConfigError(f"no native cell has a d_wire below its d_inter ({sweep.grid_dict()}, base d_inter "
                          f"{base.interlingua.d_inter}): narrow the wire below d_inter or leave grid.d_wire out "
                          "(precision vocab is never narrowed)")
    return cells


def plan_native_sweep(sweep: SweepConfig, base: Config, output_dir: Path) -> SweepPlan:
    """The cells of a native base (:func:`plan_sweep`): each shape trains from ``base.train.init_from``, the
    uncompressed checkpoint, except the shape that checkpoint already has, which is evaluated as it is.

    Raises:
        ConfigError: ``grid.num_slots`` (the pooled designs' knob), no ``base.train.init_from``, evaluation
            conditionings other than hybrid alone, ``eval.decoders``, or a cell whose config is invalid.
    """
    from interlingua.models.interlingua import read_spec

    if sweep.knob_set("num_slots"):
        raise ConfigError("grid.num_slots is a knob of the pooled designs; a native sweep shortens a message with "
                          "grid.pool_window (and narrows it with grid.d_inter)")
    if not base.train.init_from:
        raise ConfigError("a native sweep trains every compressed shape from the uncompressed checkpoint: set "
                          "base.train.init_from=RUN/step_N (e.g. the checkpoint of `interlingua run --config native`)")
    if [str(getattr(c, "value", c)) for c in base.eval.conditionings] != ["hybrid"]:
        raise ConfigError(f"a native sweep measures hybrid conditioning only (the context through z, the question as "
                          f"text, and the token budget cut the same way); base.eval.conditionings is "
                          f"{list(base.eval.conditionings)}: set base.eval.conditionings=[hybrid]")
    if base.eval.decoders:
        raise ConfigError("base.eval.decoders compares receiver heads within one evaluation (interlingua eval); a "
                          "sweep cell is evaluated with its own head: drop base.eval.decoders")
    start = Path(base.train.init_from)
    try:
        start_spec = read_spec(start).interlingua
    except Exception as err:  # CheckpointError and friends: say which key pointed there
        raise ConfigError(f"base.train.init_from={start}: {err}") from None
    start_shape = None
    if start_spec.pool_size is not None:
        start_shape = NativeCell(start_spec.d_inter, start_spec.pool_size, Precision.FP32, 0,
                                 PoolMode(start_spec.pool_mode).value, start_spec.d_wire).shape_name
    planned = [
        _planned_cell(sweep, cell, Path(output_dir), start if cell.shape_name == start_shape and not sweep.qat
                      else None)
        for cell in expand_native_grid(sweep, base)
    ]
    return SweepPlan(planned, base, (-1, base.interlingua.d_inter), base)
