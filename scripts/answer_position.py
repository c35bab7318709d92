"""F1 on answers a cut message keeps against answers it dropped (src/interlingua/eval/answer_position.py).

    .venv/bin/python scripts/answer_position.py --window 4 --data ../shared/data/squad \
        runs/sweeps/native/cells/k4prefix_d512_fp16.predictions.jsonl \
        runs/sweeps/native/window_budget/*_k4.jsonl --json split.json

Prints one markdown row per (pair, mode) of every file: n and F1 on kept answers, n and F1 on dropped ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from interlingua.artifacts.files import markdown_table
from interlingua.data.squad import load_squad
from interlingua.eval.answer_position import DROPPED, KEPT, answer_position_split
from interlingua.models.registry import resolve_model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="prediction JSONL files (cells, window budget)")
    parser.add_argument("--window", "-k", type=int, required=True, help="the k of the cut (ceil(T / k) kept)")
    parser.add_argument("--data", default="auto", help="SQuAD source (a folder, a JSON file, or auto)")
    parser.add_argument("--json", type=Path, default=None, help="also write the split here")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    missing = [str(p) for p in args.predictions if not p.is_file()]
    if missing:
        parser.error(f"no such prediction file: {', '.join(missing)}")
    examples = {e.id: e for e in load_squad("validation", args.data)}
    out, table = {}, []
    for path in args.predictions:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        unknown = {row["id"] for row in rows} - examples.keys()
        if unknown:
            parser.error(f"{path}: {len(unknown)} ids are not SQuAD validation examples (e.g. {sorted(unknown)[0]})")
        readers = {row.get("sender") or row["model"] for row in rows}
        tokenizers = {key: AutoTokenizer.from_pretrained(resolve_model_path(key)) for key in readers}
        split = answer_position_split(rows, examples, tokenizers, args.window)
        out[str(path)] = split
        for name, v in split.items():
            table.append([path.name, name, v[KEPT]["n"], _f1(v[KEPT]), v[DROPPED]["n"], _f1(v[DROPPED])])
    print(markdown_table(["file", "rows", "kept n", "kept F1", "dropped n", "dropped F1"], table))
    if args.json:
        args.json.write_text(json.dumps({"window": args.window, "split": out}, indent=2) + "\n")
    return 0


def _f1(part: dict) -> str:
    return "–" if part["f1"] is None else f"{part['f1']:.1f}"


if __name__ == "__main__":
    sys.exit(main())
