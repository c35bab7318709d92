"""How close the cached top-k KD term is to the exact full-vocabulary KD term, on real examples.

    python benchmarks/kd_topk_gap.py --config embedded --checkpoint runs/X/step_000250 data.source=../shared/data/squad

For a batch of training examples: the student's logits from the interlingua's soft prompt, the
teacher's full logits from the text prompt, then KD as the exact KL and as the coarsened KL of
:func:`losses.kd_loss_topk` for several k. The coarsened value is never larger; the table shows how
much of the exact value it keeps, and the share of the teacher's probability mass inside its top k.
"""

from __future__ import annotations

import torch

from common import config_of, parse_args, report
from interlingua.data.squad import load_squad
from interlingua.losses import compress_teacher_logits, kd_loss, kd_loss_topk
from interlingua.models.interlingua import InterlinguaModel
from interlingua.models.system import Interlingua, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.batches import TrainingStream
from interlingua.training.recipe import interlingua_spec

TOP_KS = (16, 64, 256, 1024)


def main() -> None:
    def extra(parser):
        parser.add_argument("--examples", type=int, default=16)
        parser.add_argument("--checkpoint", help="trained interlingua (default: freshly initialised)")

    args = parse_args(__doc__.splitlines()[0], extra)
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    lms, encoder = load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype))
    torch.manual_seed(config.runtime.seed)
    model = InterlinguaModel.from_pretrained(args.checkpoint) if args.checkpoint else InterlinguaModel(
        interlingua_spec(config, lms, encoder))
    system = Interlingua(model.to(device).eval(), lms, encoder)
    examples = load_squad("train", config.data.source, config.data.train_limit, config.data.seed)
    stream = TrainingStream(examples, [lm.tokenizer for lm in lms.values()], config.data.max_prompt_tokens,
                            args.examples, 1, config.data.seed)
    batch = stream.micro_batches(0)[0]
    tau = config.loss.kd_temperature
    rows, data = [], {"examples": args.examples, "temperature": tau, "models": {}}
    with torch.no_grad():
        for key, lm in lms.items():
            targets = lm.answer_targets(batch.answers, config.loss.k_tokens)
            z = system.encode_z(key, batch.texts)
            student = lm.target_logits(lm.soft_prefix(system.soft_prompt(key, z)), targets)
            teacher = lm.target_logits(lm.text_prefix(batch.texts), targets)
            exact = float(kd_loss(student, teacher, targets.mask, tau))
            probabilities = torch.softmax(teacher[targets.mask] / tau, dim=-1)
            data["models"][key] = {"exact": exact, "top_k": {}}
            rows.append((f"{key} exact KD", f"{exact:.4f}"))
            for k in sorted({min(k, teacher.shape[-1]) for k in TOP_KS}):
                approx = float(kd_loss_topk(student, *compress_teacher_logits(teacher, k, tau), targets.mask, tau))
                mass = float(probabilities.topk(k, dim=-1).values.sum(-1).mean())
                data["models"][key]["top_k"][k] = {"kd": approx, "fraction_of_exact": approx / exact,
                                                   "teacher_mass": mass}
                rows.append((f"{key} top-{k}",
                             f"{approx:.4f} ({approx / exact:.1%} of exact; teacher mass in top k {mass:.1%})"))
    report(f"top-k KD vs exact KD, {config.name}, {args.examples} examples", rows, data, args.json)


if __name__ == "__main__":
    main()
