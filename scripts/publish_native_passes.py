"""Copy the finished passes of a native-design evaluation into results/ with a table of them, so a long
evaluation's results are committed as they come (and a later session can resume from them).

    python scripts/publish_native_passes.py EVAL_DIR RESULTS_DIR [--baselines DIR]

EVAL_DIR is the folder `interlingua eval` writes (it holds passes/); RESULTS_DIR gets passes/ (the rows and
their settings.json) and passes.md. To resume there, copy RESULTS_DIR/passes back to EVAL_DIR/passes and
run the same `interlingua eval` command: passes made under the same settings are not decoded again.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from interlingua.eval.native import finished_passes_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--baselines", type=Path, default=None, help="a baselines run on the same examples (text F1)")
    args = parser.parse_args()
    passes = args.eval_dir / "passes"
    if not (passes / "settings.json").is_file():
        raise SystemExit(f"{passes}: no passes of a native evaluation")
    target = args.results_dir / "passes"
    target.mkdir(parents=True, exist_ok=True)
    for path in passes.glob("*"):
        shutil.copyfile(path, target / path.name)
    text_rows = None
    if args.baselines is not None:
        text_rows = [json.loads(line) for line in (args.baselines / "predictions.jsonl").read_text().splitlines()]
    table = finished_passes_table(passes, text_rows)
    (args.results_dir / "passes.md").write_text(f"# Finished passes of {args.eval_dir}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
