"""A naive implementation of the same training step, the reference the real step is measured against.

Same losses (the seed's four terms, plus InfoNCE and the hybrid layout when the config uses them), same
learned modules, same batch — but written the obvious way: the K-token CE takes
K separate forward passes of each frozen LLM (one per answer prefix), every forward computes
full-vocabulary logits at every position, the KD teacher reads the text prompt again every step, and
the sentence encoder runs every step.
"""

from __future__ import annotations

import torch

from interlingua.losses import alignment_loss, contrastive_loss, k_token_ce, kd_loss, semantic_anchor_loss


def _full_logits(lm, embeddings, mask):
    """All-position, full-vocabulary logits of the frozen LLM ``(B, T, V)`` (fp32)."""
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = lm.model(inputs_embeds=embeddings, attention_mask=mask.long(), position_ids=position_ids, use_cache=False)
    return out.logits.float()


def naive_step_loss(system, forward, batch, config):
    """The loss of one QA-stage micro-batch (a ``training.batches.MicroBatch``, as ``training.step.batch_loss``
    reads it), computed naively (see the module docstring); returns the fp32 total."""
    if config.w_rec or config.w_l1:
        raise ValueError("the naive reference has no reconstruction or L1 term (loss.w_rec and loss.w_l1 must be 0)")
    texts, answers, sender_texts, questions = batch.texts, batch.answers, batch.sender_texts, batch.questions
    anchor = system.anchor(sender_texts)  # recomputed every step
    zs, soft_prompts, anchor_target = forward(sender_texts, anchor)
    gen, kd = [], []
    for key, lm in system.lms.items():
        targets = lm.answer_targets(answers, config.k_tokens)  # (B, K)
        prefix = lm.soft_prefix(soft_prompts[key], questions=questions)
        student = []
        for j in range(config.k_tokens):  # one full forward per answer position
            embeddings = torch.cat([prefix.embeddings, lm.embed(targets.ids[:, :j])], dim=1)
            mask = torch.cat([prefix.mask, torch.ones_like(targets.mask[:, :j])], dim=1)
            student.append(_full_logits(lm, embeddings, mask)[:, -1])  # (B, V)
        student = torch.stack(student, dim=1)  # (B, K, V)
        gen.append(k_token_ce(student, targets.ids, targets.mask))
        with torch.no_grad():  # the teacher again, full vocabulary at every position
            text = lm.text_prefix(texts)
            embeddings = torch.cat([text.embeddings, lm.embed(targets.ids)], dim=1)
            mask = torch.cat([text.mask, torch.ones_like(targets.mask)], dim=1)
            width = text.embeddings.shape[1]
            teacher = _full_logits(lm, embeddings, mask)[:, width - 1 : width - 1 + config.k_tokens]
        kd.append(kd_loss(student, teacher, targets.mask, config.kd_temperature))
    total = (config.w_gen * torch.stack(gen).sum() + config.w_kd * torch.stack(kd).sum()
             + config.w_align * alignment_loss(zs) + config.w_sem * semantic_anchor_loss(zs, anchor_target))
    if config.w_nce:
        total = total + config.w_nce * contrastive_loss(zs, config.nce_temperature)
    return total
