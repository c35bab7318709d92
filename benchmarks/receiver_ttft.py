"""Receiver time-to-first-answer-token: from the interlingua (receiver head + soft tokens) vs from the full
text prompt, same model, same examples: one request at a time, and batches of requests served together.

    python benchmarks/receiver_ttft.py --config embedded data.source=../shared/data/squad
    python benchmarks/receiver_ttft.py --config native data.source=../shared/data/squad interlingua.pool_window=4
    python benchmarks/receiver_ttft.py --config tiny data.source=tests/assets/squad_mini --examples 4

The receiver's work from a message is: soft prompt = adapter(z), then one prefill over
``[BOS] + M soft tokens + answer cue`` and the first greedy token; with ``interlingua.conditioning=hybrid``
z carries the context alone and the prefill reads ``\nQuestion: …\nAnswer:`` after the soft tokens
(the question tokenised as part of the receiver's work). From text it is: tokenise the whole prompt
(chat template included where the model uses one), embed, prefill over all of its tokens, first greedy
token. ``z`` itself comes from the sender and is not part of the receiver's time. The learned modules
are freshly initialised (their cost does not depend on their training) unless --checkpoint is given.

Native design (``interlingua.design=native``): z is T' vectors per message (T' ≈ sender tokens /
``interlingua.pool_window``), and the receiver's work is its head (soft tokens from z, the vocabulary
decoder's top-k search over the receiver's vocabulary included), then one prefill over the prompt
template's head + the T' soft tokens + the question as text (hybrid) + the template's tail, as
``answers_from_soft`` builds it, and the first greedy token. Fresh native modules are the fitted bridge
at step 0 (``training.recipe.initial_model``; the fit is cached).

Batched: the examples sorted by the length of what each path reads (the text prompt's tokens; the
latent prefix's positions) and cut into batches of ``--batch-size``, each one left-padded prefill; every
request of a batch gets its first token when the batch's prefill ends, so the per-batch time is each
request's time to first token. Both paths batch the same way, so padding costs each its own share.
"""

from __future__ import annotations

import statistics

import torch

from common import config_of, parse_args, report, timed
from interlingua.config import Conditioning
from interlingua.data.prompts import question_suffix
from interlingua.data.squad import load_squad
from interlingua.eval.latent import conditioning_of, prompt_texts, sender_texts
from interlingua.models.frozen_lm import Prefix
from interlingua.models.interlingua import InterlinguaModel
from interlingua.models.native import Latent
from interlingua.models.system import Interlingua, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.recipe import initial_model


def _first_tokens(lm, prefix) -> list[int]:
    """One prefill over a left-padded batch and each row's first greedy token."""
    position_ids = (prefix.mask.long().cumsum(-1) - 1).clamp(min=0)
    out = lm.model(inputs_embeds=prefix.embeddings, attention_mask=prefix.mask.long(), position_ids=position_ids,
                   use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1).tolist()


def _buckets(lengths: list[int], size: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of ``size``: how a server batches requests that arrive together."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + size] for i in range(0, len(order), size)]


def main() -> None:
    def extra(parser):
        parser.add_argument("--examples", type=int, default=32, help="validation examples timed (default 32)")
        parser.add_argument("--batch-size", type=int, default=8,
                            help="requests served together in the batched measurement (default 8)")
        parser.add_argument("--checkpoint", help="a trained checkpoint folder (default: fresh learned modules)")

    args = parse_args(__doc__.splitlines()[0], extra)
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    lms, encoder = load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype))
    if args.checkpoint:
        model = InterlinguaModel.from_pretrained(args.checkpoint)
    else:
        torch.manual_seed(config.runtime.seed)
        model = initial_model(config, lms, encoder)  # native: the fitted bridge at step 0
    system = Interlingua(model.to(device).eval(), lms, encoder)  # attaches the native receivers' vocabularies
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    texts, sent = prompt_texts(system, examples, config), sender_texts(system, examples, config)
    conditioning = conditioning_of(system)
    hybrid = conditioning == Conditioning.HYBRID
    shape = system.model.spec.interlingua
    window = (shape.pool_size or "all") if system.is_native else None
    rows = []
    data = {"config": config.name, "examples": len(examples), "batch_size": args.batch_size,
            "conditioning": conditioning.value, "design": shape.design.value, "models": {}}
    with torch.no_grad():
        for key, lm in lms.items():
            if system.is_native:
                # the messages, one (T'_i, d_inter) z each on the receiver's device (sender side, not timed)
                zs = [row.to(system.device) for row in system.encode_rows(key, sent)]

                def latent_prefix(indices: list[int]):
                    # the receiver head (its vocabulary search included), then the prefix of answers_from_soft
                    soft = system.soft_prompt(key, Latent.from_rows([zs[i] for i in indices]))
                    tails = [question_suffix(examples[i].question) if hybrid else "" for i in indices]
                    return lm.soft_tokens_prefix(soft.embeddings, soft.mask, tails)

                soft_tokens = [len(z) for z in zs]
            else:
                zs = system.encode_z(key, sent)  # the messages (sender side, not timed)

                def latent_prefix(indices: list[int]):
                    questions = [examples[i].question for i in indices] if hybrid else None
                    return lm.soft_prefix(system.soft_prompt(key, zs[indices]), questions=questions)

                soft_tokens = [system.soft_prompt(key, zs[:1]).shape[1]] * len(texts)

            def text_prefix(indices: list[int]):
                return lm.ids_prefix([lm.prompt_token_ids(texts[i]) for i in indices])

            text_tokens = [len(lm.prompt_token_ids(text)) for text in texts]
            latent_positions = [latent_prefix([i]).embeddings.shape[1] for i in range(len(texts))]
            _first_tokens(lm, latent_prefix([0])), _first_tokens(lm, text_prefix([0]))  # warm-up
            paths = {"latent": (latent_prefix, latent_positions), "text": (text_prefix, text_tokens)}
            # one request at a time, the two paths alternating per example: a drift of the machine's speed
            # during the run moves both sides of each example's ratio together
            alone = {path: [] for path in paths}
            for i in range(len(texts)):
                for path, (prefix_of, _) in paths.items():
                    alone[path].append(timed(lambda i=i: _first_tokens(lm, prefix_of([i]))))
            single = {path: statistics.median(seconds for seconds, _ in alone[path]) for path in paths}
            # what no prompt length goes below: one prefill over a single position still reads every weight
            # matrix once (and the whole output matrix for the token's logits)
            bos = latent_prefix([0]).embeddings[:, :1]
            one_position = Prefix(bos, torch.ones(1, 1, dtype=torch.bool, device=bos.device))
            floor = statistics.median(timed(lambda: _first_tokens(lm, one_position))[0] for _ in range(len(texts)))
            paired = statistics.median(text[0] / latent[0] for text, latent in zip(alone["text"], alone["latent"]))
            batched, same_tokens = {}, {}
            for path, (prefix_of, lengths) in paths.items():
                batches = _buckets(lengths, args.batch_size)
                _first_tokens(lm, prefix_of(batches[0]))  # warm-up at this batch size
                together = [(batch, timed(lambda batch=batch: _first_tokens(lm, prefix_of(batch))))
                            for batch in batches]
                batched[path] = sum(seconds for _, (seconds, _) in together) / len(batches)
                # left padding must not change the answer: the batched first tokens against one at a time
                same_tokens[path] = sum(tokens[j] == alone[path][i][1][0] for batch, (_, tokens) in together
                                        for j, i in enumerate(batch))
            positions = sum(latent_positions) / len(latent_positions)
            soft_mean = sum(soft_tokens) / len(soft_tokens)
            data["models"][key] = {
                "median_ttft_s": single, "speedup": single["text"] / single["latent"],
                "median_paired_speedup": paired,
                "one_position_prefill_s": floor, "speedup_bound": single["text"] / floor,
                "batched_mean_ttft_s": batched, "batched_speedup": batched["text"] / batched["latent"],
                "batched_same_first_token": same_tokens,
                "receiver_positions": {"latent": positions, "soft_tokens": soft_mean,
                                       "text_mean": sum(text_tokens) / len(text_tokens)},
            }
            if system.is_native:
                data["models"][key]["pool_window"] = window
            rows += [
                (f"{key} latent", f"{single['latent'] * 1e3:.1f} ms  "
                                  f"({positions:.0f} positions{' mean' if hybrid or system.is_native else ''}, "
                                  f"{soft_mean:.0f} soft tokens"
                                  f"{f' mean, pool_window={window}' if system.is_native else ''})"),
                (f"{key} text", f"{single['text'] * 1e3:.1f} ms  "
                                f"({sum(text_tokens) / len(text_tokens):.0f} tokens mean)"),
                (f"{key} speedup", f"{single['text'] / single['latent']:.2f}x  "
                                   f"(median of per-example ratios {paired:.2f}x)"),
                (f"{key} one-position prefill (floor)", f"{floor * 1e3:.1f} ms: no receiver prefix can beat "
                                                         f"{single['text'] / floor:.2f}x"),
                (f"{key} batch of {args.batch_size}: latent", f"{batched['latent'] * 1e3:.1f} ms per batch"),
                (f"{key} batch of {args.batch_size}: text", f"{batched['text'] * 1e3:.1f} ms per batch"),
                (f"{key} batch of {args.batch_size}: speedup", f"{batched['text'] / batched['latent']:.2f}x"),
                (f"{key} batch of {args.batch_size}: same first token as alone",
                 f"latent {same_tokens['latent']}/{len(texts)}, text {same_tokens['text']}/{len(texts)}"),
            ]
    report(f"receiver time to first token, {config.name}, {len(examples)} examples: one request at a time "
           f"(median) and batches of {args.batch_size} sorted by length (mean per batch)", rows, data, args.json)


if __name__ == "__main__":
    main()
