"""The native receiver head's vocabulary search: bf16 scoring + exact fp32 rescoring of the best candidates
against the exact fp32 search, side by side on the same z rows, for every (sender, receiver) pair.

    python benchmarks/vocab_search.py --config native --examples 64 data.source=../shared/data/squad
    python benchmarks/vocab_search.py --config tiny --examples 4 interlingua.design=native \
        data.source=tests/assets/squad_mini

The model is the fitted bridge at step 0 (the search does not depend on training). Prints the seconds of
``Interlingua.soft_rows`` both ways and whether the soft tokens are identical. On a CPU without native
bf16 (no AVX512-BF16 / AMX) the head keeps the exact search and the two columns are the same code.
"""

from __future__ import annotations

import torch

from common import config_of, parse_args, report, timed
from interlingua.data.prompts import context_prompt
from interlingua.data.squad import load_squad
from interlingua.models.native import ReceiverHead
from interlingua.models.system import Interlingua, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.recipe import initial_model


def main() -> None:
    args = parse_args(__doc__.splitlines()[0],
                      lambda p: p.add_argument("--examples", type=int, default=64, help="validation examples"))
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    lms, encoder = load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype))
    system = Interlingua(initial_model(config, lms, encoder).to(device), lms, encoder, config)
    heads = [m for m in system.model.modules() if isinstance(m, ReceiverHead) and m._keys is not None]
    fast = {id(head): head._search_keys for head in heads}
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    texts = [context_prompt(e.context) for e in examples]
    batch = config.eval.batch_size
    z = {sender: system.encode_rows(sender, texts, batch) for sender in system.lms}

    def decode(receiver: str, sender: str, bf16: bool) -> list[torch.Tensor]:
        for head in heads:
            head._search_keys = fast[id(head)] if bf16 else None
        return system.soft_rows(receiver, z[sender], batch)

    bf16_search = any(keys is not None for keys in fast.values())
    rows, data = [], {"config": config.name, "examples": len(examples), "bf16_search": bf16_search, "pairs": {}}
    for receiver in system.lms:
        for sender in system.lms:
            decode(receiver, sender, True)  # warm-up
            exact_s, exact = timed(lambda: decode(receiver, sender, False))
            fast_s, quick = timed(lambda: decode(receiver, sender, True))
            same = all(torch.equal(a, b) for a, b in zip(exact, quick))
            tokens = sum(len(row) for row in z[sender])
            data["pairs"][f"{sender} -> {receiver}"] = {"tokens": tokens, "exact_s": exact_s, "bf16_s": fast_s,
                                                         "speedup": exact_s / fast_s, "identical": same}
            rows.append((f"{sender} -> {receiver}", f"{tokens} tokens: fp32 {exact_s:.2f} s, bf16 + rescoring "
                                                    f"{fast_s:.2f} s ({exact_s / fast_s:.2f}x), identical: {same}"))
    report(f"vocabulary search, {config.name}", rows, data, args.json)


if __name__ == "__main__":
    main()
