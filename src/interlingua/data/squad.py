"""SQuAD v1.1 from the Hugging Face hub or from official-format JSON, flattened to examples.

The order is deterministic: examples are flattened in file order (articles -> paragraphs -> questions),
shuffled with ``random.Random(seed)``, then cut to ``limit``. The hub rows come in the same order as
the official JSON, so hub and local files give the identical list for the same seed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from interlingua.constants import ENV_SQUAD_DIR, SQUAD_FILES, SQUAD_HUB_ID
from interlingua.errors import SquadDataError

SPLITS = ("train", "validation")



@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]  # every gold text as given; the metrics take the max over them


def load_squad(split: str, source: str = "auto", limit: int | None = None, seed: int = 0) -> list[SquadExample]:
    """Load one split of SQuAD v1.1.

    Args:
        split: ``train`` or ``validation``.
        source: ``auto`` ($INTERLINGUA_SQUAD_DIR if set, else the hub), ``hub``, or a JSON file / folder.
        limit: examples kept after the seeded shuffle; None keeps all.
        seed: seed of the shuffle.
    Returns:
        The examples in file order shuffled by ``random.Random(seed)``, then the first ``limit``. Hub rows
        come in the official JSON's order, so the hub and local files give the identical list per seed.
    Raises:
        SquadDataError: unknown split, missing or malformed file, unreachable hub.
    """
    if split not in SPLITS:
        raise SquadDataError(f"unknown SQuAD split {split!r}; use one of: {', '.join(SPLITS)}")
    if limit is not None and limit <= 0:
        raise SquadDataError(f"limit must be positive or None, got {limit}")
    examples = list(_load_unshuffled(split, source))
    random.Random(seed).shuffle(examples)
    return examples[:limit] if limit is not None else examples


def _load_unshuffled(split: str, source: str) -> tuple[SquadExample, ...]:
    if source == "auto":
        folder = os.environ.get(ENV_SQUAD_DIR)
        source = folder if folder else "hub"
    if source == "hub":
        return _load_hub(split)
    path = Path(source).expanduser()
    if path.is_dir():
        path = _file_in_folder(path, split)
    elif not path.is_file():
        raise SquadDataError(
            f"SQuAD source {source!r} is neither a file nor a folder; set data.source to a folder holding "
            f"{' / '.join(SQUAD_FILES[split])}, to an official-format JSON file, or to 'hub'"
        )
    stat = path.resolve().stat()
    return _parse_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _file_in_folder(folder: Path, split: str) -> Path:
    for name in SQUAD_FILES[split]:
        if (folder / name).is_file():
            return folder / name
    raise SquadDataError(
        f"{folder}: no SQuAD v1.1 {split} file (looked for {', '.join(SQUAD_FILES[split])}); "
        "put the official file there or point data.source / $INTERLINGUA_SQUAD_DIR at the right folder"
    )


@lru_cache(maxsize=4)
def _parse_file(path: str, mtime_ns: int, size: int) -> tuple[SquadExample, ...]:
    """Parse and validate an official-format file (cached per path, mtime and size)."""
    if size == 0:
        raise SquadDataError(f"{path}: file is empty")
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except json.JSONDecodeError as err:
        raise SquadDataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise SquadDataError(f"{path}: not UTF-8 text ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise SquadDataError(f"{path}: not SQuAD v1.1 format (the top level needs a 'data' list of articles)")
    return tuple(_flatten(path, payload["data"]))


def _flatten(path: str, articles: list) -> list[SquadExample]:
    examples: list[SquadExample] = []
    seen: set[str] = set()
    for a, article in enumerate(articles):
        paragraphs = _field(path, article, "paragraphs", f"data[{a}]", list)
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(path, paragraph, "context", where, str)
            for q, qa in enumerate(_field(path, paragraph, "qas", where, list)):
                at = f"{where}.qas[{q}]"
                qid = _field(path, qa, "id", at, str)
                question = _field(path, qa, "question", at, str)
                answers = _field(path, qa, "answers", at, list)
                if not answers:
                    raise SquadDataError(f"{path}: {at} (id {qid}) has an empty 'answers' list")
                texts = tuple(_field(path, ans, "text", f"{at}.answers[{i}]", str) for i, ans in enumerate(answers))
                if qid in seen:
                    raise SquadDataError(f"{path}: {at} repeats the id {qid!r}")
                seen.add(qid)
                examples.append(SquadExample(qid, title, context, question, texts))
    return examples


def _field(path: str, node: object, key: str, where: str, kind: type):
    if not isinstance(node, dict) or key not in node:
        raise SquadDataError(f"{path}: {where} has no {key!r}")
    value = node[key]
    if not isinstance(value, kind):
        raise SquadDataError(f"{path}: {where}.{key} should be a {kind.__name__}, got {type(value).__name__}")
    return value


@lru_cache(maxsize=2)
def _load_hub(split: str) -> tuple[SquadExample, ...]:
    try:
        import datasets

        rows = datasets.load_dataset(SQUAD_HUB_ID, split=split)
    except Exception as err:  # offline, hub down, missing package: all end the same way for the user
        raise SquadDataError(
            f"could not load {SQUAD_HUB_ID} ({split}) from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"Offline? Set {ENV_SQUAD_DIR}=/folder/with/dev-v1.1.json (and train-v1.1.json), "
            "or set data.source=/path/to/folder-or-file"
        ) from None
    return tuple(
        SquadExample(row["id"], row["title"], row["context"], row["question"], tuple(row["answers"]["text"]))
        for row in rows
    )
