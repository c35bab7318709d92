"""Receiver time-to-first-answer-token: from the interlingua (adapter + M soft tokens) vs from the full
text prompt, same model, same examples, one request at a time.

    python benchmarks/receiver_ttft.py --config embedded data.source=../shared/data/squad
    python benchmarks/receiver_ttft.py --config tiny data.source=tests/assets/squad_mini --examples 4

The receiver's work from a message is: soft prompt = adapter(z), then one prefill over
``[BOS] + M soft tokens + answer cue`` and the first greedy token; with ``interlingua.conditioning=hybrid``
z carries the context alone and the prefill reads ``\nQuestion: …\nAnswer:`` after the soft tokens
(the question tokenised as part of the receiver's work). From text it is: tokenise the whole prompt
(chat template included where the model uses one), embed, prefill over all of its tokens, first greedy
token. ``z`` itself comes from the sender and is not part of the receiver's time. The learned modules
are freshly initialised (their cost does not depend on their training) unless --checkpoint is given.
"""

from __future__ import annotations

import statistics

import torch

from common import config_of, parse_args, report, timed
from interlingua.config import Conditioning
from interlingua.data.squad import load_squad
from interlingua.eval.latent import conditioning_of, prompt_texts, sender_texts
from interlingua.models.interlingua import InterlinguaModel
from interlingua.pipeline import InterlinguaSystem, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.recipe import interlingua_spec


def _first_token(lm, prefix) -> int:
    out = lm.model(inputs_embeds=prefix.embeddings, attention_mask=prefix.mask.long(), use_cache=True,
                   logits_to_keep=1)
    return int(out.logits[0, -1].argmax())


def main() -> None:
    def extra(parser):
        parser.add_argument("--examples", type=int, default=30, help="validation examples timed (default 30)")
        parser.add_argument("--checkpoint", help="a trained checkpoint folder (default: fresh learned modules)")

    args = parse_args(__doc__.splitlines()[0], extra)
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    lms, encoder = load_frozen_models(config, device, frozen_dtype(device))
    if args.checkpoint:
        model = InterlinguaModel.from_pretrained(args.checkpoint)
    else:
        torch.manual_seed(config.runtime.seed)
        model = InterlinguaModel(interlingua_spec(config, lms, encoder))
    system = InterlinguaSystem(model.to(device).eval(), lms, encoder)
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    texts, sent = prompt_texts(system, examples, config), sender_texts(system, examples, config)
    hybrid = conditioning_of(system) == Conditioning.HYBRID
    rows = []
    data = {"config": config.name, "examples": len(examples), "conditioning": conditioning_of(system).value, "models": {}}
    with torch.no_grad():
        for key, lm in lms.items():
            zs = system.encode(key, sent, system.anchor(sent))  # the messages (sender side, not timed)

            def latent_prefix(i: int):
                questions = [examples[i].question] if hybrid else None
                return lm.soft_prefix(system.soft_prompt(key, zs[i : i + 1]), questions=questions)

            latent_times, text_times, text_tokens, latent_positions = [], [], [], []
            for i, text in enumerate(texts):
                latent_fn = lambda i=i: _first_token(lm, latent_prefix(i))  # noqa: E731
                text_fn = lambda text=text: _first_token(lm, lm.ids_prefix([lm.prompt_token_ids(text)]))  # noqa: E731
                if i == 0:  # warm-up
                    latent_fn(), text_fn()
                latent_times.append(timed(latent_fn)[0])
                text_times.append(timed(text_fn)[0])
                text_tokens.append(len(lm.prompt_token_ids(text)))
                latent_positions.append(latent_prefix(i).embeddings.shape[1])
            latent_s, text_s = statistics.median(latent_times), statistics.median(text_times)
            positions = sum(latent_positions) / len(latent_positions)
            data["models"][key] = {
                "median_ttft_s": {"latent": latent_s, "text": text_s}, "speedup": text_s / latent_s,
                "receiver_positions": {"latent": positions, "text_mean": sum(text_tokens) / len(text_tokens)},
            }
            rows += [
                (f"{key} latent", f"{latent_s * 1e3:.1f} ms  ({positions:.0f} positions{' mean' if hybrid else ''})"),
                (f"{key} text", f"{text_s * 1e3:.1f} ms  ({sum(text_tokens) / len(text_tokens):.0f} tokens mean)"),
                (f"{key} speedup", f"{text_s / latent_s:.2f}x"),
            ]
    report(f"receiver time to first token, {config.name}, median of {len(examples)}", rows, data, args.json)


if __name__ == "__main__":
    main()
