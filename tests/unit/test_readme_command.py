"""The README's first command: the native design at smoke size, the embedded default."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from interlingua.cli import DEFAULT_CONFIG
from interlingua.config import Design, load_config

ROOT = Path(__file__).resolve().parents[2]


def first_command() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md lost its first bash block"
    runs = [line for line in block.group(1).splitlines() if "interlingua run" in line and not line.startswith("#")]
    assert len(runs) == 1, runs
    return shlex.split(runs[0].split("&&", 1)[1])


def test_the_first_command_runs_the_native_design_the_cli_defaults_to():
    argv = first_command()
    assert argv[:2] == [".venv/bin/interlingua", "run"]
    assert argv[argv.index("--config") + 1] == DEFAULT_CONFIG  # the command runs what --config defaults to
    config = load_config(DEFAULT_CONFIG, [a for a in argv if "=" in a and not a.startswith("-")])
    assert config.interlingua.design == Design.NATIVE and len(config.models) == 2
    # the smoke size the README's time was measured at (docs/usage.md)
    assert (config.train.steps, config.train.batch_size * config.train.grad_accum, config.eval.limit) == (24, 8, 100)
