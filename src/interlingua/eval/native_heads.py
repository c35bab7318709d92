"""The receiver heads of the native design compared in one evaluation (issue #15, item 2).

``eval.decoders`` names receiver heads to evaluate besides the checkpoint's own (``vocab``: attention over
the receiver's vocabulary; ``linear``: the fitted map Q_b). Each is read from the same z, on the same
examples, under each conditioning, with its own shuffled-z row per pair; the trained residual branch is kept
(zero at step 0, so there the comparison is of the two fitted heads alone). Per pair the summary gives the
head's F1, its shuffled F1, and the paired ΔF1 ± SE against the checkpoint's own head.

    rows, summary = compare_receiver_heads(system, examples, config, latents, own_rows, progress, store)
"""

from __future__ import annotations

import contextlib
from typing import Sequence

from torch import Tensor

from interlingua.config import Conditioning, Config, NativeDecoder
from interlingua.data.squad import SquadExample
from interlingua.eval.compare import paired_difference, per_example_f1
from interlingua.models.aligner import module_key
from interlingua.models.system import Interlingua


def other_heads(system: Interlingua, config: Config) -> list[NativeDecoder]:
    """``eval.decoders`` without the checkpoint's own head (that one is the main evaluation)."""
    own = system.model.spec.interlingua.decoder
    return [NativeDecoder(d) for d in dict.fromkeys(config.eval.decoders) if NativeDecoder(d) != own]


@contextlib.contextmanager
def receiver_heads(system: Interlingua, decoder: NativeDecoder):
    """Every receiver reads through ``decoder`` inside the block; the checkpoint's own head afterwards."""
    heads = [system.model.receivers[module_key(key)] for key in system.lms]
    before = [head.decoder for head in heads]
    for head in heads:
        head.decoder = decoder
    try:
        if decoder == NativeDecoder.VOCAB:
            system.model.attach_vocabularies(system.lms)  # a linear checkpoint has no keys yet
        yield
    finally:
        for head, old in zip(heads, before):
            head.decoder = old


def compare_receiver_heads(system: Interlingua, examples: Sequence[SquadExample],
                           config: Config, latents: dict[str, dict[str, list[Tensor]]],
                           own_rows: Sequence[dict], progress: bool, store) -> tuple[list[dict], dict]:
    """Rows (each with ``"decoder"``) and ``{decoder: {"information_flow", "paired"}}`` (module docstring).

    Args:
        latents: ``{conditioning: {sender: z rows as received}}`` of the main evaluation.
        own_rows: the main evaluation's rows (the checkpoint's own head), the paired reference.
        store: the main evaluation's :class:`~interlingua.eval.native.PassStore`; passes are tagged by head.
    """
    from interlingua.eval.native import decode_all, information_flow, pair_scores

    rows: list[dict] = []
    summary: dict = {}
    for decoder in other_heads(system, config):
        head_rows = []
        with receiver_heads(system, decoder):
            for conditioning, by_sender in latents.items():
                decoded = decode_all(system, examples, by_sender, Conditioning(conditioning), config, progress,
                                     _Tagged(store, decoder.value))
                head_rows += [{**row, "decoder": decoder.value} for row in decoded]
        summary[decoder.value] = {"information_flow": information_flow(pair_scores(head_rows), None),
                                  "paired": paired_against(head_rows, own_rows)}
        rows += head_rows
    return rows, summary


def paired_against(rows: Sequence[dict], reference: Sequence[dict]) -> dict:
    """``{conditioning: {"sender -> receiver": {"delta_f1", "se", "n"}}}`` of the read rows (not shuffled)."""
    mine, theirs = per_example_f1(rows), per_example_f1(reference)
    paired: dict = {}
    for (conditioning, pair), f1 in mine.items():
        delta, se, n = paired_difference(f1, theirs.get((conditioning, pair), {}))
        paired.setdefault(conditioning, {})[pair] = {"delta_f1": delta, "se": se, "n": n}
    return paired


def head_report_lines(own: str, heads: dict) -> list[str]:
    """report.md: per other head and conditioning, each pair's F1, shuffled F1 and ΔF1 against ``own``."""
    from interlingua.artifacts.files import markdown_table

    lines = []
    for decoder, result in heads.items():
        lines += [f"## Receiver head `{decoder}` against the checkpoint's `{own}`", "",
                  "The same z, examples and conditionings; the trained residual is kept. ΔF1 is paired per "
                  "example (mean ± SE).", ""]
        for conditioning, pairs in result["information_flow"].items():
            table = []
            for pair, v in pairs.items():
                p = result["paired"][conditioning][pair]
                table.append([conditioning, pair, v["latent_f1"], v["shuffled_f1"], v["margin_f1"],
                              f"{p['delta_f1']:+.1f} ± {p['se']:.1f}", "yes" if v["flows"] else "no"])
            lines += [markdown_table(["conditioning", "pair", f"{decoder} F1", "shuffled F1", "margin",
                                      f"ΔF1 vs {own}", "carries context"], table), ""]
    return lines


class _Tagged:
    """A PassStore view whose pass names start with the head, so they never meet the main passes."""

    def __init__(self, store, tag: str):
        self.store, self.tag = store, tag

    def get(self, name: str):
        return self.store.get(f"{self.tag} {name}") if self.store is not None else None

    def put(self, name: str, rows: list[dict]) -> None:
        if self.store is not None:
            self.store.put(f"{self.tag} {name}", rows)
