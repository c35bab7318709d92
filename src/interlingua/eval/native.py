"""Evaluation of the native interlingua (DESIGN §8): every (sender, receiver) pair, both ways.

For each conditioning of ``eval.conditionings``:

* ``hybrid``: the senders encode ``Context: …``; the receiver reads its prompt template's head + the soft
  tokens + ``\\nQuestion: …\\nAnswer:`` as text + the template's tail;
* ``full``: the senders encode the whole text prompt; the receiver reads head + soft tokens + tail.

Rows per example, per receiver b and sender a: ``latent`` (a = b) or ``cross`` (a ≠ b) from the example's
own z, and ``shuffled`` from another example's z (a fixed seeded derangement) for *every* pair, cross pairs
included. Each row carries ``sender`` and ``conditioning``. Around them: the share of each model's text F1
that survives, the information-flow margin per pair (latent − shuffled), agreement, interlingua distance
(between the senders' masked-mean summaries of the same example), message sizes and the bridge's fit.

    rows, summary = evaluate_native(system, examples, config, text_rows=baseline_rows)
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from statistics import mean
from typing import Sequence

import torch
from torch import Tensor

from interlingua.artifacts.files import gzip_bytes, utf8_bytes, write_json, write_jsonl
from interlingua.codec.message import message_size
from interlingua.codec.quantize import FLOAT_DTYPES
from interlingua.codec.vocabulary import VocabularyCode
from interlingua.config import Conditioning, Config, ConfigError, Precision
from interlingua.data.prompts import sender_prompt
from interlingua.data.squad import SquadExample
from interlingua.eval.baselines import summarize
from interlingua.eval.latent import _eval_mode, _row, agreement, derangement, interlingua_distance, received_z
from interlingua.eval.native_heads import compare_receiver_heads, head_report_lines
from interlingua.models.system import Interlingua, answers_from_soft
from interlingua.settings import Artifact, settings_of

FLOW_MARGIN_F1 = 3.0
"""F1 points a pair's latent row must beat its own shuffled-z row by (issue #15's target)."""


class PassStore:
    """The rows of each finished (conditioning, sender, receiver) pass, kept in ``directory`` so that a
    stopped evaluation (an n = 1000 run takes hours on a CPU) resumes where it was.

    ``settings`` names everything the rows depend on (checkpoint fingerprint, examples, decoding, wire);
    a folder written under other settings is emptied first, so stale rows are never read.
    """

    def __init__(self, directory: Path | None, settings: dict):
        self.directory = None if directory is None else Path(directory)
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = self.directory / "settings.json"
        if not stamp.is_file() or json.loads(stamp.read_text()) != settings:
            for old in self.directory.glob("*.jsonl"):
                old.unlink()
            write_json(stamp, settings)

    def _path(self, name: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.jsonl"

    def get(self, name: str) -> list[dict] | None:
        if self.directory is None or not self._path(name).is_file():
            return None
        return [json.loads(line) for line in self._path(name).read_text().splitlines()]

    def put(self, name: str, rows: list[dict]) -> None:
        if self.directory is not None:
            write_jsonl(self._path(name), rows)


def finished_passes_table(passes_dir: Path, text_rows: Sequence[dict] | None = None) -> str:
    """Markdown table of the passes a (possibly unfinished) evaluation has written so far: per pass its
    n, latent/cross F1, its own shuffled-z F1, the margin and the share of the receiver's text F1 on the
    same examples (from ``text_rows``, the ``text`` mode rows of a baselines run)."""
    from interlingua.artifacts.files import markdown_table

    rows = [json.loads(line) for path in sorted(Path(passes_dir).glob("*.jsonl"))
            for line in path.read_text().splitlines()]
    if not rows:
        return f"no finished pass in {passes_dir} yet"
    by_id = {(r["model"], r["id"]): r["f1"] for r in text_rows or [] if r["mode"] == "text"}
    table = []
    for (conditioning, sender, receiver), group in sorted(_grouped(rows, ("conditioning", "sender", "model")).items()):
        read = [r for r in group if r["mode"] != "shuffled"]
        latent = 100 * mean(r["f1"] for r in read)
        shuffled = 100 * mean(r["f1"] for r in group if r["mode"] == "shuffled")
        text = [by_id[(receiver, r["id"])] for r in read if (receiver, r["id"]) in by_id]
        text_f1 = 100 * mean(text) if len(text) == len(read) else None
        table.append([conditioning, f"{sender} -> {receiver}", len(read), latent, shuffled, latent - shuffled,
                      "–" if text_f1 is None else text_f1,
                      "–" if not text_f1 else f"{100 * latent / text_f1:.0f} %"])
    return markdown_table(["conditioning", "pair", "n", "latent F1", "shuffled F1", "margin", "receiver text F1",
                           "share of text"], table)


def pass_settings(system: Interlingua, examples: Sequence[SquadExample], config: Config) -> dict:
    """What the rows of a pass depend on besides its (conditioning, sender, receiver): the checkpoint's
    fingerprint, the example ids, the config's ``NATIVE_PASS`` settings (:mod:`interlingua.settings`) and
    each receiver's resolved prompt format."""
    return {
        "fingerprint": system.model.fingerprint(), "ids": [e.id for e in examples],
        **settings_of(Artifact.NATIVE_PASS, config),
        "formats": {k: lm.prompt_format.value for k, lm in system.lms.items()},
    }


def evaluate_native(
    system: Interlingua,
    examples: Sequence[SquadExample],
    config: Config,
    text_rows: Sequence[dict] | None = None,
    progress: bool = True,
    passes_dir: Path | None = None,
) -> tuple[list[dict], dict]:
    """All rows and the summary (module docstring). With ``eval.decoders``, the other receiver heads' rows
    follow (each with ``"decoder"``) and ``summary["heads"]`` compares them (:mod:`interlingua.eval.native_heads`).

    Args:
        passes_dir: keep each finished pass here and reuse the ones a stopped run left (see :class:`PassStore`).
    Raises:
        ConfigError: fewer than 2 examples (no shuffled control).
    """
    if len(examples) < 2:
        raise ConfigError(f"the shuffled-z control needs at least 2 examples, got {len(examples)}; raise eval.limit")
    rows: list[dict] = []
    runs = {}
    store = PassStore(passes_dir, pass_settings(system, examples, config))
    with _eval_mode(system.model):
        for conditioning in (Conditioning(c) for c in config.eval.conditionings):
            texts = sent_texts(system, examples, config, conditioning)
            code = system.wire_code(config.compression.precision)
            latents = {a: received_rows(system.encode_rows(a, texts, config.eval.batch_size, progress), config, code)
                       for a in system.lms}
            rows += decode_all(system, examples, latents, conditioning, config, progress, store)
            runs[conditioning.value] = (texts, latents)
        summary = native_summary(system, rows, runs, [e.id for e in examples], text_rows, config)
        head_rows, heads = compare_receiver_heads(system, examples, config, {c: z for c, (_, z) in runs.items()},
                                                  rows, progress, store)
    if heads:
        summary["heads"] = heads
    return rows + head_rows, summary


def sent_texts(system: Interlingua, examples: Sequence[SquadExample], config: Config,
               conditioning: Conditioning) -> list[str]:
    """What every sender reads for each example: cut to fit ``data.max_prompt_tokens`` in every tokenizer."""
    tokenizers = [lm.tokenizer for lm in system.lms.values()]
    budget = config.data.max_prompt_tokens
    return [sender_prompt(tokenizers, e.context, e.question, budget, conditioning) for e in examples]


def received_rows(rows: list[Tensor], config: Config, code: VocabularyCode | None = None) -> list[Tensor]:
    """Each message's z as the wire delivers it at ``compression.precision`` / ``group_size`` (vocab: ``code``)."""
    return [received_z(row.unsqueeze(0), config.compression, code)[0] for row in rows]


def receiver_questions(examples: Sequence[SquadExample], conditioning: Conditioning) -> list[str] | None:
    """What each receiver reads as text after the soft tokens: the question (hybrid) or nothing (full: None)."""
    return [e.question for e in examples] if conditioning == Conditioning.HYBRID else None


def decode_all(system: Interlingua, examples: Sequence[SquadExample], latents: dict[str, list[Tensor]],
               conditioning: Conditioning, config: Config, progress: bool,
               store: PassStore | None = None) -> list[dict]:
    """latent / cross and shuffled rows of every (sender, receiver) pair under one conditioning; passes
    ``store`` already holds are read, not decoded again. Cross pairs come first: they are what the design
    is measured by, and an n = 1000 pass takes ~15 min on a CPU, so a stopped evaluation should have them."""
    permutation = derangement(len(examples), config.runtime.seed)
    questions = receiver_questions(examples, conditioning)
    pairs = sorted(itertools.product(system.lms, system.lms), key=lambda pair: pair[0] == pair[1])  # (receiver, sender)
    rows = []
    for receiver, sender in pairs:
        tag = f"{conditioning.value} {sender} -> {receiver}"
        done = store.get(tag) if store is not None else None
        if done is None:
            done = decode_pair(system, examples, latents[sender], sender, receiver, conditioning, questions,
                               permutation, config, progress)
            if store is not None:
                store.put(tag, done)
        rows += done
    return rows


def decode_pair(system: Interlingua, examples: Sequence[SquadExample], z_rows: list[Tensor], sender: str,
                receiver: str, conditioning: Conditioning, questions: list[str] | None, permutation: list[int],
                config: Config,
                progress: bool) -> list[dict]:
    """The latent/cross rows and the shuffled rows of one pair."""
    lm = system.lms[receiver]
    mode = "latent" if sender == receiver else "cross"
    tag = f"{conditioning.value} {sender} -> {receiver}"
    soft = system.soft_rows(receiver, z_rows, config.eval.batch_size, progress, f"{tag} decode")
    budget = config.eval.batch_size, config.eval.max_new_tokens
    own = answers_from_soft(system, lm, soft, questions, *budget, progress, f"{tag} {mode}")
    # example i reads the soft tokens of example permutation[i] (its own question after them)
    shuffled = answers_from_soft(system, lm, [soft[j] for j in permutation], questions, *budget, progress,
                                 f"{tag} shuffled")
    rows = []
    for i, example in enumerate(examples):
        rows.append({**_row(example, receiver, sender, mode, own[i], example.id), "conditioning": conditioning.value})
        rows.append({**_row(example, receiver, sender, "shuffled", shuffled[i], examples[permutation[i]].id),
                     "conditioning": conditioning.value})
    return rows


# ---- summary ---------------------------------------------------------------------------------------
def pair_scores(rows: Sequence[dict]) -> dict:
    """``{conditioning: {receiver: {sender: {"latent"|"cross": scores, "shuffled": scores}}}}`` (×100)."""
    out: dict = {}
    for (conditioning, sender), group in _grouped(rows, ("conditioning", "sender")).items():
        for receiver, modes in summarize(group).items():
            out.setdefault(conditioning, {}).setdefault(receiver, {})[sender] = modes
    return out


def _grouped(rows: Sequence[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups


def information_flow(scores: dict, text: dict | None, margin: float = FLOW_MARGIN_F1) -> dict:
    """Per conditioning and pair: latent F1, shuffled F1, the receiver's text F1 and the share kept, and
    whether latent beats shuffled by ``margin``."""
    verdicts: dict = {}
    for conditioning, receivers in scores.items():
        for receiver, senders in receivers.items():
            for sender, modes in senders.items():
                latent = modes["latent" if sender == receiver else "cross"]["f1"]
                shuffled = modes["shuffled"]["f1"]
                text_f1 = text[receiver]["text"]["f1"] if text and receiver in text else None
                verdicts.setdefault(conditioning, {})[f"{sender} -> {receiver}"] = {
                    "latent_f1": latent, "shuffled_f1": shuffled, "margin_f1": latent - shuffled,
                    "text_f1": text_f1, "share_of_text": latent / text_f1 if text_f1 else None,
                    "flows": latent >= shuffled + margin,
                }
    return verdicts


def native_summary(system: Interlingua, rows: Sequence[dict], runs: dict, ids: Sequence[str],
                   text_rows: Sequence[dict] | None, config: Config) -> dict:
    text = summarize(r for r in text_rows or [] if r["mode"] == "text") if text_rows else None
    scores = pair_scores(rows)
    agreements, distances, messages = {}, {}, {}
    for conditioning, (texts, latents) in runs.items():
        own = {m: _predictions(rows, conditioning, m, m, ids) for m in system.lms}
        per_sender = {a: agreement({b: _predictions(rows, conditioning, a, b, ids) for b in system.lms})
                      for a in system.lms}
        agreements[conditioning] = {"own": agreement(own), "same_sender": per_sender}
        summaries = {a: torch.stack([row.mean(0) for row in z]) for a, z in latents.items()}
        distances[conditioning] = [{"a": a, "b": b, **interlingua_distance(summaries[a], summaries[b])}
                                   for a, b in itertools.combinations(summaries, 2)]
        code = system.wire_code(config.compression.precision)
        messages[conditioning] = {a: message_sizes(z, texts, config, code) for a, z in latents.items()}
    return {
        "n": len(ids), "design": "native", "shuffle_seed": config.runtime.seed,
        "trained_conditioning": system.model.spec.interlingua.conditioning.value,
        "pool_window": str(system.model.spec.interlingua.pool_window),
        "decoder": system.model.spec.interlingua.decoder.value,
        "scores": scores, "information_flow": information_flow(scores, text), "text": text,
        "agreement": agreements, "distance": distances, "messages": messages,
        "bridge_fit": getattr(system.model, "bridge_metrics", None),
    }


def _predictions(rows: Sequence[dict], conditioning: str, sender: str, receiver: str, ids: Sequence[str]) -> list[str]:
    found = {r["id"]: r["prediction"] for r in rows if r["conditioning"] == conditioning and r["sender"] == sender
             and r["model"] == receiver and r["mode"] != "shuffled"}
    return [found[i] for i in ids]


def message_sizes(z_rows: list[Tensor], texts: Sequence[str], config: Config,
                  code: VocabularyCode | None = None) -> dict:
    """z positions and whole wire-message bytes per message (means), next to the text they replace."""
    precision = Precision(config.compression.precision)
    group = 0 if precision in FLOAT_DTYPES else config.compression.group_size
    if precision is Precision.VOCAB:
        group = code.bits_per_position
    return {
        "mean_z_positions": mean(len(z) for z in z_rows),
        "wire_precision": precision.value,
        "mean_wire_bytes": mean(message_size(tuple(z.shape), precision, group) for z in z_rows),
        "mean_text_utf8_bytes": mean(utf8_bytes(t) for t in texts),
        "mean_text_gzip_bytes": mean(gzip_bytes(t) for t in texts),
    }


def native_report_lines(native: dict) -> list[str]:
    """The native sections of report.md: per conditioning, the pair table and the controls."""
    from interlingua.artifacts.files import markdown_table

    lines = [f"Design: native (decoder `{native['decoder']}`, pool_window `{native['pool_window']}`, trained with "
             f"`{native['trained_conditioning']}` conditioning). Every pair has its own shuffled-z row; a pair "
             f"carries the context when latent ≥ shuffled + {FLOW_MARGIN_F1:g} F1.", ""]
    for conditioning, pairs in native["information_flow"].items():
        lines += [f"## {conditioning}: sender -> receiver", ""]
        table = []
        for pair, v in pairs.items():
            share = f"{100 * v['share_of_text']:.0f} %" if v["share_of_text"] is not None else "–"
            text_f1 = v["text_f1"] if v["text_f1"] is not None else "–"
            table.append([pair, v["latent_f1"], v["shuffled_f1"], v["margin_f1"], text_f1, share,
                          "yes" if v["flows"] else "no"])
        lines += [markdown_table(["pair", "latent F1", "shuffled F1", "margin", "receiver text F1", "share of text",
                                  "carries context"], table), ""]
        agree = native["agreement"][conditioning]["own"]
        lines += ["Agreement (own decodes): "
                  + ", ".join(f"{a['a']} / {a['b']} {100 * a['share']:.1f} %" for a in agree)]
        lines += ["Interlingua distance (masked-mean summaries): " + ", ".join(
            f"{d['a']} / {d['b']} cos {d['mean_cosine']:.3f}, L2 {d['mean_l2']:.2f}"
            for d in native["distance"][conditioning])]
        for sender, m in native["messages"][conditioning].items():
            lines.append(f"Messages from {sender}: {m['mean_z_positions']:.1f} z positions, "
                         f"{m['mean_wire_bytes']:.0f} B "
                         f"({m['wire_precision']}) for {m['mean_text_utf8_bytes']:.0f} B UTF-8 / "
                         f"{m['mean_text_gzip_bytes']:.0f} B gzip of text")
        lines.append("")
    fit = native.get("bridge_fit")
    if fit:
        lines += ["## Vocabulary bridge (held-out shared strings)", "",
                  f"Shared token strings: {fit['shared_strings']} (vocabularies: "
                  + ", ".join(f"{k} {v}" for k, v in fit["vocabulary"].items()) + f"); held out {fit['held_out']}.", ""]
        table = [[pair, v["shared_cosine"], v["nn1"], v["decoded_cosine"], v["vocab_nn1"]]
                 for pair, v in {**fit["pairs"], **{f"{k} (own)": v for k, v in fit["own"].items()}}.items()]
        lines += [markdown_table(["pair", "cos(P_a x_a, P_b x_b)", "nn@1 (held-out)", "cos(Q_b P_a x_a, x_b)",
                                  "vocab nn@1"], [[r[0], *(f"{x:.3f}" for x in r[1:])] for r in table]), ""]
    if native.get("heads"):
        lines += head_report_lines(native["decoder"], native["heads"])
    return lines
