"""How long a sweep still takes: what this invocation measured (seconds per training step, per cell
evaluation) times what remains, as the one-line outlook after every computed cell."""

from __future__ import annotations

from statistics import mean
from typing import Optional, Sequence


class Timing:
    """Durations measured by one sweep invocation."""

    def __init__(self):
        self.training_seconds = 0.0
        self.training_steps = 0
        self.evaluations: list[float] = []  # seconds per cell evaluation

    def seconds_left(self, training_steps: int, cells: int) -> Optional[float]:
        """Measured seconds per training step × ``training_steps`` + mean seconds per evaluation ×
        ``cells``; None while a kind of work that is still to come has not been measured yet."""
        if (training_steps and not self.training_steps) or (cells and not self.evaluations):
            return None
        per_step = self.training_seconds / self.training_steps if self.training_steps else 0.0
        return training_steps * per_step + (cells * mean(self.evaluations) if cells else 0.0)

    def outlook(self, steps_per_training: Sequence[int], cells: int) -> str:
        """``"; about 3.9 h left (5 trainings, 17 cells)"``, or ``""`` when nothing is left or the
        estimate still lacks a measurement.

        Args:
            steps_per_training: optimizer steps each training run still to come needs (0: finished).
            cells: cells still to evaluate.
        """
        left = self.seconds_left(sum(steps_per_training), cells)
        if not cells or left is None:
            return ""
        trainings = sum(steps > 0 for steps in steps_per_training)
        return f"; about {format_duration(left)} left ({_count(trainings, 'training')}, {_count(cells, 'cell')})"


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"7.5 min"``, ``"3.9 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
