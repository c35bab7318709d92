"""The KD teacher (the frozen LLM reading the text prompt), computed once per example and cached.

Stored form, per example and model: for each of the K answer positions the teacher's top-k logits,
their ids, and the log-sum-exp of all V logits at temperature τ. :func:`losses.kd_loss_topk` turns
that into the exact KL between teacher and student *coarsened to k + 1 outcomes* (the top-k ids and
one bucket for the rest of the vocabulary): never larger than the full-vocabulary KL, equal to it when
the teacher puts no mass outside its top k. docs/performance.md gives the measured gap at k = 256.

An entry's key is the hash of the exact token ids the teacher reads (prompt format, chat template and
context cut included) and of the K target ids; everything else that changes the values — the model's
weights, dtype, τ, k, K — is part of the store's settings (a different folder). Changing any of them
can therefore never return a stale teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from interlingua.losses import compress_teacher_logits, kd_loss, kd_loss_topk
from interlingua.models.frozen_lm import FrozenLM, Targets, lm_fingerprint

TEACHER_CACHE_VERSION = 1  # bump when the stored form or the teacher's forward changes


@dataclass
class TeacherTargets:
    """Compact teacher of a batch: ``topk_logits`` (B, K, k) raw logits, ``topk_ids`` (B, K, k),
    ``logsumexp`` (B, K) of all logits / τ."""

    topk_logits: Tensor
    topk_ids: Tensor
    logsumexp: Tensor


class KDTeacher:
    """Teacher logits at the answer positions of one frozen LLM, and the KD loss against them.

    Args:
        lm: the frozen LLM (it reads the text prompt as its own text baseline does).
        temperature: τ of the KD term.
        top_k: 0 = full-vocabulary logits, recomputed every call (exact, the seed's form); k > 0 =
            the compact top-k form (required for caching).
        store: a :class:`TensorStore` opened with :meth:`settings` (None = no caching).
        any_process: ``flag -> flag on any process``, where the frozen LLM's layers are sharded across
            processes (``runtime.shard_frozen``): then a process whose rows are all cached still joins
            the forward another process needs (default: this process alone).
    """

    def __init__(
        self, lm: FrozenLM, temperature: float, top_k: int = 0, store=None,
        any_process: Optional[Callable[[bool], bool]] = None,
    ):
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if store is not None and top_k == 0:
            raise ValueError("caching the teacher needs top_k > 0 (full-vocabulary logits are too large to store)")
        self.lm, self.temperature, self.store = lm, temperature, store
        self.top_k = min(top_k, lm.model.get_output_embeddings().out_features) if top_k else 0
        self._prompt_ids: dict[str, list[int]] = {}  # text -> token ids: each prompt is tokenised once per run
        self._any_process = any_process or bool

    @staticmethod
    def settings(lm: FrozenLM, temperature: float, top_k: int) -> dict:
        """What a cached teacher depends on besides its key (the store's folder is named by their hash)."""
        return {
            "kind": "kd-teacher", "version": TEACHER_CACHE_VERSION, "model": lm.key,
            "fingerprint": lm_fingerprint(lm.model), "dtype": str(lm.dtype), "temperature": temperature,
            "top_k": top_k,
        }

    def kd_loss(self, student_logits: Tensor, texts: list[str], targets: Targets) -> Tensor:
        """τ²·KL(teacher ‖ student) at the real answer positions (see :func:`losses.kd_loss`)."""
        if not self.top_k:
            with torch.no_grad():
                teacher = self.lm.target_logits(self.lm.text_prefix(texts), targets)  # (B, K, V)
            return kd_loss(student_logits, teacher, targets.mask, self.temperature)
        teacher = self.targets(texts, targets)
        return kd_loss_topk(
            student_logits, teacher.topk_logits, teacher.topk_ids, teacher.logsumexp, targets.mask, self.temperature
        )

    @torch.no_grad()
    def targets(self, texts: list[str], targets: Targets) -> TeacherTargets:
        """The compact teacher of a batch; cached rows are read, the others computed in one forward."""
        token_lists = [self._token_ids(text) for text in texts]
        keys = [self._key(tokens, ids, mask) for tokens, ids, mask in zip(token_lists, targets.ids, targets.mask)]
        entries = [self.store.get(key) if self.store is not None else None for key in keys]
        missing = [row for row, entry in enumerate(entries) if entry is None]
        if self._any_process(bool(missing)) and not missing:
            # another process computes its misses through sharded layers: take part in that forward
            self.lm.target_logits(self.lm.ids_prefix([token_lists[0]]), Targets(targets.ids[:1], targets.mask[:1]))
        elif missing:
            rows = torch.tensor(missing, device=targets.ids.device)
            subset = Targets(targets.ids[rows], targets.mask[rows])
            logits = self.lm.target_logits(self.lm.ids_prefix([token_lists[r] for r in missing]), subset)  # (b, K, V)
            topk_logits, topk_ids, lse = compress_teacher_logits(logits, self.top_k, self.temperature)
            for i, row in enumerate(missing):
                entries[row] = {"logits": topk_logits[i], "ids": topk_ids[i].to(torch.int32), "lse": lse[i]}
                if self.store is not None:
                    self.store.put(keys[row], entries[row])
        device = targets.ids.device
        return TeacherTargets(
            topk_logits=torch.stack([e["logits"] for e in entries]).to(device, torch.float32),
            topk_ids=torch.stack([e["ids"] for e in entries]).to(device, torch.long),
            logsumexp=torch.stack([e["lse"] for e in entries]).to(device, torch.float32),
        )

    def _token_ids(self, text: str) -> list[int]:
        ids = self._prompt_ids.get(text)
        if ids is None:
            ids = self._prompt_ids[text] = self.lm.prompt_token_ids(text)
        return ids

    @staticmethod
    def _key(prompt_ids: list[int], target_ids: Tensor, target_mask: Tensor) -> str:
        payload = json.dumps([prompt_ids, target_ids.tolist(), target_mask.tolist()])
        return hashlib.sha256(payload.encode()).hexdigest()[:32]
