"""Run-folder artifacts that training, evaluation and the sweep all write: atomic file and folder writes,
the resolved config and provenance stamped on every result, byte counts of text, and markdown tables."""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from interlingua.config import Config, config_to_dict, save_config
from interlingua.constants import RESOLVED_CONFIG_FILE
from interlingua.provenance import git_hash, library_versions, machine_info


def run_info(config: Config, command: str) -> dict:
    """What produced a result: command line, config, code version, libraries, machine, time."""
    return {
        "command": command,
        "argv": sys.argv,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_hash(),
        "versions": library_versions(),
        "machine": machine_info(),
        "config": config_to_dict(config),
    }


def prepare_run_dir(config: Config, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / RESOLVED_CONFIG_FILE)
    return out_dir


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def gzip_bytes(text: str) -> int:
    """Size of the text gzip-compressed at level 9 (header included): the honest byte count of
    sending the prompt compressed."""
    return len(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is replaced only after ``tmp`` is complete."""
    old = final.with_name(final.name + f".old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        for child in old.iterdir():
            child.unlink()
        old.rmdir()
