"""What a vocabulary-coded message carries beyond the tokens it starts from (docs/compression.md, "The bytes
target met"): every (sender, receiver) pair of a native checkpoint, hybrid, each beside its shuffled-z row,
reading three messages of the same examples:

* ``vocab``: the message as ``compression.precision=vocab`` sends it (the nearest key of every receiver
  vocabulary and the norm of each refined z position);
* ``mean-norm``: the same ids, every norm replaced by the sender's mean norm (what the norms add);
* ``tokens``: the ids of the *unrefined* z (the fitted map of the sender's own token embeddings, cut the same
  way) at the mean norm: a message that is a function of the kept context tokens alone.

It also prints how often a position's id in the sender's own vocabulary is the sender's own context token at
that position. Paired ΔF1 ± SE against ``vocab`` on the same examples.

    .venv/bin/python scripts/probes/vocab_code_controls.py \
        --checkpoint runs/sweeps/native/train/k4prefix_d512/step_000040 --examples 1000 \
        --out runs/vocab-controls data.source=../shared/data/squad
"""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, stdev

import torch

from interlingua.artifacts.files import markdown_table, write_json, write_jsonl
from interlingua.config import Conditioning
from interlingua.data.prompts import sender_prompt
from interlingua.data.squad import load_squad
from interlingua.eval.native import decode_all, pair_scores
from interlingua.models.aligner import module_key
from interlingua.models.system import Interlingua

MODES = ("vocab", "mean-norm", "tokens")


@contextmanager
def unrefined(model):
    """Within it the native model encodes without its refiner: z is the fitted map of the token embeddings."""
    refiner, model.refiner = model.refiner, None
    try:
        yield
    finally:
        model.refiner = refiner


def messages(system: Interlingua, texts: list[str], encoded: dict[str, list[torch.Tensor]],
             mode: str) -> dict[str, list[torch.Tensor]]:
    """Each sender's received z rows under ``mode``; ``encoded``: each sender's refined z of ``texts``."""
    code = system.vocabulary_code()
    out = {}
    for sender, refined in encoded.items():
        mean_norm = float(torch.cat([z.norm(dim=-1) for z in refined]).mean())
        if mode == "tokens":
            with unrefined(system.model):
                refined = system.encode_rows(sender, texts)
        rows = []
        for z in refined:
            ids, norms = code.encode(z)
            if mode != "vocab":
                norms = torch.full_like(norms, mean_norm)
            rows.append(code.decode(ids, norms))
        out[sender] = rows
    return out


def own_token_share(system: Interlingua, texts: list[str], encoded: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per sender: the share of positions whose id in its own vocabulary is its own token at that position."""
    code = system.vocabulary_code()
    share = {}
    for book, sender in enumerate(system.lms):
        head = system.model.receivers[module_key(sender)]
        ids, _ = system.lms[sender].tokenize_plain(texts)
        same = total = 0
        for z, tokens in zip(encoded[sender], ids):
            coded = head._ids[code.encode(z)[0][:, book]]
            same += int((coded == tokens[: len(z)]).sum())
            total += len(z)
        share[sender] = 100.0 * same / total
    return share


def paired(rows: list[dict], base: list[dict]) -> dict[str, str]:
    """ΔF1 ± SE (×100) of ``rows`` against ``base`` per pair, non-shuffled rows, matched by example."""
    def keyed(table):
        return {(r["sender"], r["model"], r["id"]): r["f1"] for r in table if r["mode"] != "shuffled"}

    a, b = keyed(rows), keyed(base)
    out = {}
    for sender, receiver in sorted({k[:2] for k in a}):
        deltas = [100 * (a[k] - b[k]) for k in a if k[:2] == (sender, receiver) and k in b]
        se = stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else float("nan")
        out[f"{sender} -> {receiver}"] = f"{mean(deltas):+.1f} ± {se:.1f}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a native step_N/ folder (decoder=vocab)")
    parser.add_argument("--examples", type=int, default=1000, help="validation examples (>= 2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=None, help="write predictions and a summary here")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.source=../shared/data/squad")
    args = parser.parse_args(argv)

    system = Interlingua.from_pretrained(args.checkpoint, ["eval.conditionings=[hybrid]", *args.overrides])
    for key in system.model_keys:  # every sender and receiver (the code holds every vocabulary)
        system.lm(key)
    config = system.config
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    tokenizers = [lm.tokenizer for lm in system.lms.values()]
    texts = [sender_prompt(tokenizers, e.context, e.question, config.data.max_prompt_tokens, Conditioning.HYBRID)
             for e in examples]
    system.model.eval()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    summary = {"n": len(examples), "checkpoint": str(args.checkpoint), "modes": {}}
    with torch.no_grad():
        encoded = {sender: system.encode_rows(sender, texts) for sender in system.lms}
        summary["own_token_share"] = own_token_share(system, texts, encoded)
        print("own-vocabulary id = the sender's own token at that position:",
              ", ".join(f"{s} {v:.1f} %" for s, v in summary["own_token_share"].items()))
        results = {}
        for mode in args.modes:
            received = messages(system, texts, encoded, mode)
            rows = decode_all(system, examples, received, Conditioning.HYBRID, config, False)
            results[mode] = rows
            if args.out:
                write_jsonl(args.out / f"{mode}.predictions.jsonl", rows)
    table = []
    for mode, rows in results.items():
        scores = pair_scores(rows)[Conditioning.HYBRID.value]
        deltas = paired(rows, results["vocab"]) if "vocab" in results and mode != "vocab" else {}
        summary["modes"][mode] = {"scores": scores, "paired_vs_vocab": deltas}
        for receiver, senders in scores.items():
            for sender, cell in senders.items():
                own = cell.get("latent", cell.get("cross"))
                pair = f"{sender} -> {receiver}"
                table.append([mode, pair, str(own["n"]), f"{own['f1']:.1f}", f"{cell['shuffled']['f1']:.1f}",
                              deltas.get(pair, "")])
    print(markdown_table(["message", "pair", "n", "F1", "shuffled F1", "paired ΔF1 vs vocab"], table))
    if args.out:
        write_json(args.out / "summary.json", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
