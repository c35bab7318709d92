"""Length-bucketed batching over many items (prompts to encode, prefixes to generate from), with a progress bar."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def generate_batched(
    items: Sequence[T],
    generate: Callable[[list[T]], Sequence[R]],
    batch_size: int,
    length: Callable[[T], int] | None = None,
    desc: str = "generating",
    progress: bool = True,
) -> list[R]:
    """Run ``generate`` over ``items`` in batches and return the outputs in the input order.

    ``generate`` returns one output per item: usually the answer text, but anything per-item works
    (the latent evaluation also batches its encoder through here, returning one ``z`` row per item).

    With ``length``, items are batched longest-first so each batch pads to similar lengths
    (greedy outputs do not depend on the batch, see the batched-equals-unbatched tests).
    """
    order = sorted(range(len(items)), key=lambda i: -length(items[i])) if length else list(range(len(items)))
    outputs: list[R | None] = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, text in zip(chunk, generate([items[i] for i in chunk])):
                outputs[index] = text
            bar.update(len(chunk))
    return outputs  # type: ignore[return-value]
