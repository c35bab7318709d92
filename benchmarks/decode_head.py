"""Greedy decoding of text prompts with and without the frozen models' contiguous-input hook on the output
head (``frozen_lm._contiguous_input``), side by side on the same prompts, for each model and dtype.

    python benchmarks/decode_head.py --config embedded --examples 16 data.source=../shared/data/squad
    python benchmarks/decode_head.py --config tiny --examples 4 data.source=tests/assets/squad_mini

``generate`` hands the head a strided ``(B, 1, d)`` slice; without the hook ``torch.matmul`` copies the
``(V, d)`` weight once per row for a batched product. Prints the seconds of both, their ratio and whether
the answers are identical.
"""

from __future__ import annotations

import torch

from common import config_of, parse_args, report, timed
from interlingua.data.prompts import text_prompt
from interlingua.data.squad import load_squad
from interlingua.models.frozen_lm import CONTIGUOUS_HOOK, FrozenLM, _contiguous_input
from interlingua.runtime import resolve_device


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--examples", type=int, default=16, help="validation examples (one batch)"),
        p.add_argument("--dtypes", default="float32,bfloat16", help="frozen model dtypes, comma-separated"),
        p.add_argument("--tokens", type=int, default=16, help="new tokens per answer")))
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    rows, data = [], {"config": config.name, "examples": len(examples), "models": {}}
    for model_config in config.models:
        for dtype_name in args.dtypes.split(","):
            lm = FrozenLM.load(model_config, device=device, dtype=getattr(torch, dtype_name))
            head = lm.model.get_output_embeddings()
            prefix = lm.text_prefix([text_prompt(e.context, e.question) for e in examples])

            def decode(hooked: bool) -> list[str]:
                getattr(head, CONTIGUOUS_HOOK).remove()
                if hooked:
                    setattr(head, CONTIGUOUS_HOOK, head.register_forward_pre_hook(_contiguous_input))
                return lm.generate(prefix, args.tokens)

            decode(True)  # warm-up
            plain_s, plain = timed(lambda: decode(False))
            hooked_s, hooked = timed(lambda: decode(True))
            same = plain == hooked
            data["models"].setdefault(model_config.spec, {})[dtype_name] = {
                "plain_s": plain_s, "contiguous_s": hooked_s, "speedup": plain_s / hooked_s, "identical": same,
                "predictions": hooked}
            rows.append((f"{model_config.spec} {dtype_name}",
                         f"{len(examples)} prompts x {args.tokens} tokens: strided head input {plain_s:.2f} s, "
                         f"contiguous {hooked_s:.2f} s ({plain_s / hooked_s:.2f}x), identical answers: {same}"))
    report(f"decoding head input, {config.name}", rows, data, args.json)


if __name__ == "__main__":
    main()
