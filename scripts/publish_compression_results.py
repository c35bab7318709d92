"""Copy a compression sweep's table and plot into results/compression/ and docs/compression.md.

    python scripts/publish_compression_results.py [SWEEP_DIR]     (default runs/sweeps/compression)

The docs' results block (between the ``sweep-results`` markers) becomes the sweep's own table.md — the
cells, then the text references — under a status line saying how many cells are finished.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("table.md", "table.csv", "table.json", "pareto.png")
START, END = "<!-- sweep-results:start -->", "<!-- sweep-results:end -->"


def publish(sweep_dir: Path, results_dir: Path, doc: Path) -> str:
    missing = [name for name in FILES if not (sweep_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{sweep_dir}: no {', '.join(missing)}; run `interlingua sweep` first")
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(sweep_dir / name, results_dir / name)
    table = json.loads((sweep_dir / "table.json").read_text())
    finished, planned = table["cells_finished"], table["cells_planned"]
    date = table["run"]["date"][:10]
    status = (f"**All {planned} cells finished** (as of {date})" if finished == planned
              else f"**Partial: {finished} of {planned} cells finished** (as of {date}; the sweep resumes with the "
                   "same command)")
    body = (sweep_dir / "table.md").read_text()
    body = body[body.index("| d_inter"):].replace("## Text references", "#### Text references").strip()
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: the markers {START} / {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{status}\n\n{body}\n{END}{tail}")
    return status


if __name__ == "__main__":
    sweep = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "sweeps" / "compression"
    print(publish(sweep, REPO / "results" / "compression", REPO / "docs" / "compression.md"))
