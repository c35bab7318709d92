"""Compression sweep (DESIGN §6): d_inter × M × wire precision -> per-model F1 against real message bytes.

    interlingua sweep --config compression base.data.source=DIR

    sweep = load_sweep("tiny", ["base.train.steps=3", "grid.precision=[int8]"])   # KEY=VALUE, as for a run
    out = run_sweep(sweep)          # table.md / table.csv / table.json / pareto.png in out

``grid.py`` reads the sweep file and plans the cells, ``runner.py`` trains and evaluates them (resumably,
``progress.py`` estimating the time left), ``references.py`` reads the same examples as text, ``table.py``
and ``pareto.py`` write the results. See ``docs/compression.md``.
"""

from interlingua.sweep.grid import Cell, SweepConfig, SweepGrid, load_sweep, plan_sweep
from interlingua.sweep.pareto import pareto_front, plot_pareto
from interlingua.sweep.runner import run_sweep

__all__ = ["Cell", "SweepConfig", "SweepGrid", "load_sweep", "pareto_front", "plan_sweep", "plot_pareto", "run_sweep"]
