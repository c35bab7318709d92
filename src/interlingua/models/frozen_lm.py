"""A frozen causal LM seen through the two ways interlingua uses it.

* conditioned by a **soft prompt**: ``[BOS?] + soft prompt (M) + answer cue`` (DESIGN §2, §4.5);
* conditioned by a **text prompt** (baselines and the KD teacher), raw or inside the chat template.

Both become a *prefix* of input embeddings, left-padded with an attention mask, so one code path
serves training (logits at the answer positions only, DESIGN §4.6) and greedy generation.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from interlingua.config import ModelConfig, PromptFormat
from interlingua.constants import ANSWER_CUE, CHAT_SYSTEM_INSTRUCTION
from interlingua.data.prompts import question_suffix

log = logging.getLogger(__name__)

TEMPLATE_SLOT = "<<interlingua-context>>"  # where the text goes when a prompt template is split around it
PLAIN_IDS_MEMO = 16384  # texts; a few MB of ids, more than a training set's prompts at the embedded size


@dataclass
class Prefix:
    """Input embeddings ``(B, P, d)`` and their mask ``(B, P)``; padding is on the left."""

    embeddings: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.embeddings.shape[0]


@dataclass
class Targets:
    """Answer tokens ``(B, K)`` (no special tokens) and which of them are real ``(B, K)``."""

    ids: Tensor
    mask: Tensor


CONTIGUOUS_HOOK = "_interlingua_contiguous_input"
"""Attribute of a frozen model's output head that holds the handle of its :func:`_contiguous_input` hook."""


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the output head: its input made contiguous. ``generate`` hands the head the
    last position only, a strided ``(B, 1, d)`` slice, and ``torch.matmul`` cannot fold that into one
    matrix product: it copies the ``(V, d)`` weight once per row for a batched product instead (22 s of
    one Gemma-3 bf16 prefill on a CPU, 262k x 640 x B copies; ``benchmarks/decode_head.py``)."""
    return (args[0].contiguous(), *args[1:])


class FrozenLM:
    """A causal LM and its tokenizer, frozen (eval mode, ``requires_grad=False``).

    Args:
        model: a ``*ForCausalLM`` from transformers.
        tokenizer: its tokenizer.
        key: the model spec; names the model in configs, checkpoints and reports.
        prompt_format: how text prompts are shown (``auto`` = chat template if there is one).
    """

    def __init__(self, model, tokenizer, key: str, prompt_format: PromptFormat = PromptFormat.AUTO):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.key = key
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == PromptFormat.CHAT and not has_template:
            raise ValueError(
                f"{key}: prompt_format is 'chat' but its tokenizer has no chat template; "
                "set models.N.prompt_format=raw"
            )
        if prompt_format == PromptFormat.AUTO:
            prompt_format = PromptFormat.CHAT if has_template else PromptFormat.RAW
        self.prompt_format = prompt_format
        self._plain_ids: OrderedDict[str, list[int]] = OrderedDict()  # tokenize_plain memo, see there
        head = model.get_output_embeddings()
        if head is not None and getattr(head, CONTIGUOUS_HOOK, None) is None:
            setattr(head, CONTIGUOUS_HOOK, head.register_forward_pre_hook(_contiguous_input))

    @classmethod
    def load(
        cls, config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "FrozenLM":
        from interlingua.models.registry import load_causal_lm

        model, tokenizer = load_causal_lm(config.spec, dtype=dtype, device=device)
        return cls(model, tokenizer, key=config.spec, prompt_format=config.prompt_format)

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @cached_property
    def bos_id(self) -> int | None:
        """The BOS id if this tokenizer puts one in front of a text, else None."""
        ids = self.tokenizer("a").input_ids
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None and ids and ids[0] == bos else None

    @cached_property
    def embedding_rms(self) -> float:
        """RMS of the input embeddings over the whole vocabulary, as the model sees them
        (Gemma's ``sqrt(d)`` scaling included). Soft prompts are calibrated to it (DESIGN §4.1)."""
        embed = self.model.get_input_embeddings()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, embed.num_embeddings, 16384):
                ids = torch.arange(start, min(start + 16384, embed.num_embeddings), device=self.device)
                chunk = embed(ids).float()
                total += chunk.pow(2).sum().item()
                count += chunk.numel()
        return (total / count) ** 0.5

    @cached_property
    def newline_token_ids(self) -> Tensor:
        """Ids whose text contains a newline: decoding stops on them (DESIGN §5)."""
        vocab_size = len(self.tokenizer)
        texts = self.tokenizer.batch_decode([[i] for i in range(vocab_size)])
        ids = [i for i, text in enumerate(texts) if "\n" in text]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # ---- tokens and embeddings ---------------------------------------------------------------
    def embed(self, ids: Tensor) -> Tensor:
        """Token ids ``(B, T)`` -> input embeddings ``(B, T, d)``."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def format_prompt(self, text: str) -> str:
        """The string the model reads for a text prompt: as is, or inside the chat template."""
        if self.prompt_format == PromptFormat.RAW:
            return text
        messages = [{"role": "system", "content": CHAT_SYSTEM_INSTRUCTION}, {"role": "user", "content": text}]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (e.g. Gemma) raise; fold it into the turn
            merged = [{"role": "user", "content": f"{CHAT_SYSTEM_INSTRUCTION}\n\n{text}"}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def prompt_token_ids(self, text: str) -> list[int]:
        """Token ids the model reads for text prompt ``text`` (BOS and chat template included)."""
        if not text.strip():
            raise ValueError(f"{self.key}: empty prompt; a text prompt needs at least one non-space character")
        if self.prompt_format == PromptFormat.CHAT:
            # The template already writes any BOS it wants.
            return self.tokenizer(self.format_prompt(text), add_special_tokens=False).input_ids
        return self.tokenizer(text).input_ids

    def tokenize_plain(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Texts without special tokens, right-padded: ids ``(B, T)``, mask ``(B, T)`` bool.

        This is what the AlignmentTransformer reads (the model's own frozen token embeddings). A
        training step reads each text up to three times (aligner, L_rec targets, their loss norm) and
        every epoch again, so ids are memoised per text (the most recent PLAIN_IDS_MEMO texts)."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._plain_ids]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing, add_special_tokens=False).input_ids):
                self._plain_ids[text] = ids
        for text in texts:
            self._plain_ids.move_to_end(text)
        while len(self._plain_ids) > PLAIN_IDS_MEMO:
            self._plain_ids.popitem(last=False)
        batch = self.tokenizer.pad({"input_ids": [self._plain_ids[text] for text in texts]}, padding=True,
                                   return_tensors="pt", padding_side="right")
        return batch.input_ids.to(self.device), batch.attention_mask.bool().to(self.device)

    def answer_targets(self, answers: list[str], k: int) -> Targets:
        """The first ``k`` tokens of ``" " + answer + "\\n"`` (no special tokens, so BOS is never a
        target, DESIGN §4.5). The newline teaches the model where to stop; rows shorter than ``k``
        are masked."""
        batch = self.tokenizer([" " + answer.strip() + "\n" for answer in answers], add_special_tokens=False,
                               truncation=True, max_length=k, padding="max_length", padding_side="right",
                               return_tensors="pt")
        return Targets(batch.input_ids.to(self.device), batch.attention_mask.bool().to(self.device))

    # ---- prefixes ----------------------------------------------------------------------------
    def soft_prefix(self, soft_prompt: Tensor, *, cue: str | None = None, questions: list[str] | None = None) -> Prefix:
        """``[BOS?] + soft prompt + embed(cue)``: ``(B, M, d)`` -> prefix ``(B, b + M + c, d)``; ``cue``
        defaults to the answer cue (e.g. ``RECONSTRUCTION_CUE`` in the reconstruction stage).

        With ``questions`` (``interlingua.conditioning=hybrid``) row ``i`` ends with
        ``embed("\\nQuestion: {questions[i]}\\nAnswer:")`` instead of the cue; see :meth:`question_prefix`."""
        if questions is not None:
            if cue is not None:
                raise ValueError("soft_prefix takes a cue or questions, not both (questions end with the answer cue)")
            return self.question_prefix(soft_prompt, questions)
        batch = soft_prompt.shape[0]
        cue_ids = self.tokenizer(ANSWER_CUE if cue is None else cue, add_special_tokens=False).input_ids
        if self.bos_id is not None:
            head = self.embed(torch.tensor([[self.bos_id]], device=self.device)).expand(batch, -1, -1)
        else:
            head = soft_prompt.new_zeros(batch, 0, self.hidden_size, dtype=self.dtype)  # cat would promote to fp32
        cue = self.embed(torch.tensor([cue_ids], device=self.device)).expand(batch, -1, -1)
        embeddings = torch.cat([head, soft_prompt.to(self.dtype), cue], dim=1)  # (B, b + M + c, d)
        mask = torch.ones(embeddings.shape[:2], dtype=torch.bool, device=self.device)
        return Prefix(embeddings, mask)

    def question_prefix(self, soft_prompt: Tensor, questions: list[str]) -> Prefix:
        """``[BOS?] + soft prompt + embed(question_suffix(q))`` per row, left-padded (the suffixes differ
        in length): ``(B, M, d)`` -> prefix ``(B, b + M + max_i s_i, d)`` and its mask.

        The suffix is the text prompt's own ``\\nQuestion: …\\nAnswer:`` (``data.prompts.question_suffix``),
        tokenised without special tokens.
        Raises:
            ValueError: ``len(questions)`` is not the batch size.
        """
        if len(questions) != soft_prompt.shape[0]:
            raise ValueError(
                f"{self.key}: {len(questions)} questions for a batch of {soft_prompt.shape[0]} soft prompts"
            )
        head_ids = [self.bos_id] if self.bos_id is not None else []
        head = self.embed(torch.tensor([head_ids], dtype=torch.long))[0]  # (b, d)
        rows = []
        for soft, q in zip(soft_prompt, questions):
            suffix = self.tokenizer(question_suffix(q), add_special_tokens=False).input_ids
            after = self.embed(torch.tensor([suffix], dtype=torch.long))[0]  # (s_i, d)
            rows.append(torch.cat([head, soft.to(self.dtype), after]))  # (b + M + s_i, d)
        return self.rows_prefix(rows)

    @cached_property
    def template_parts(self) -> tuple[list[int], str]:
        """How a text prompt is wrapped for this model (``prompt_format``): the ids before the text
        (BOS, or the chat template up to the user's message) and the text after it (the chat template's
        end of turn and assistant header; empty for raw prompts)."""
        if self.prompt_format == PromptFormat.RAW:
            return ([self.bos_id] if self.bos_id is not None else []), ""
        head, tail = self.format_prompt(TEMPLATE_SLOT).split(TEMPLATE_SLOT)
        return self.tokenizer(head, add_special_tokens=False).input_ids, tail

    def soft_tokens_prefix(self, soft: Tensor, mask: Tensor, suffixes: list[str]) -> Prefix:
        """The native interlingua's prefix: row ``i`` is the prompt template's head + the real soft
        tokens ``soft[i][mask[i]]`` + ``suffixes[i]`` and the template's tail as text, left-padded.

        With ``soft`` the model's own embeddings of ``Context: …`` and ``suffixes[i] = question_suffix(q)``
        this is the text baseline's prompt (``prompt_format`` included), split where the context ends.

        Args:
            soft: ``(B, T, d)`` soft tokens, real positions first.
            mask: ``(B, T)`` True = real.
            suffixes: ``B`` texts read after the soft tokens (``""``: the template's tail only).
        """
        if len(suffixes) != soft.shape[0]:
            raise ValueError(f"{self.key}: {len(suffixes)} suffixes for {soft.shape[0]} soft prompts")
        head_ids, tail = self.template_parts
        head = self.embed(torch.tensor([head_ids], dtype=torch.long))[0]  # (h, d)
        tails = [self.tokenizer(suffix + tail, add_special_tokens=False).input_ids for suffix in suffixes]
        rows = []
        for row_soft, row_mask, ids in zip(soft, mask, tails):
            after = self.embed(torch.tensor([ids], dtype=torch.long))[0]  # (s_i, d)
            rows.append(torch.cat([head, row_soft[row_mask].to(self.dtype), after]))
        return self.rows_prefix(rows)

    def rows_prefix(self, rows: list[Tensor]) -> Prefix:
        """Rows of input embeddings ``(P_i, d)`` -> one left-padded prefix with its mask."""
        width = max(len(r) for r in rows)
        pad = self.embed(torch.tensor([[self.tokenizer.pad_token_id]], dtype=torch.long))[0, 0]  # (d,)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=self.device)
        padded = []
        for index, row in enumerate(rows):
            mask[index, width - len(row):] = True
            padded.append(torch.cat([pad.expand(width - len(row), -1).to(row.dtype), row]))
        return Prefix(torch.stack(padded), mask)

    def text_prefix(self, prompts: list[str]) -> Prefix:
        """Text prompts (formatted per ``prompt_format``), left-padded: prefix ``(B, P, d)``."""
        token_lists = [self.prompt_token_ids(p) for p in prompts]
        return self.ids_prefix(token_lists)

    def ids_prefix(self, token_lists: list[list[int]]) -> Prefix:
        batch = self.tokenizer.pad({"input_ids": token_lists}, padding=True, return_tensors="pt", padding_side="left")
        return Prefix(self.embed(batch.input_ids), batch.attention_mask.bool().to(self.device))

    # ---- forward and generation -------------------------------------------------------------
    def target_logits(self, prefix: Prefix, targets: Targets) -> Tensor:
        """Teacher-forced logits that predict each target token, in one forward pass.

        Args:
            prefix: left-padded prefix ``(B, P, d)``.
            targets: ``(B, K)`` answer tokens.
        Returns:
            ``(B, K, V)`` logits (fp32); row ``j`` predicts ``targets.ids[:, j]``. The LM head runs on
            these ``B·K`` positions only.
        """
        target_embeddings = self.embed(targets.ids)  # (B, K, d)
        embeddings = torch.cat([prefix.embeddings, target_embeddings], dim=1)  # (B, P + K, d)
        # Target padding sits after the real targets, so causal attention already hides it from them.
        mask = torch.cat([prefix.mask, torch.ones_like(targets.mask)], dim=1)
        hidden = self._hidden_states(embeddings, mask)  # (B, P + K, d)
        width = prefix.embeddings.shape[1]
        k = targets.ids.shape[1]
        positions = hidden[:, width - 1 : width - 1 + k]  # (B, K, d)
        return self._lm_head(positions)

    def _hidden_states(self, embeddings: Tensor, mask: Tensor) -> Tensor:
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding -> real tokens start at 0
        out = self.model.base_model(
            inputs_embeds=embeddings, attention_mask=mask.long(), position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def _lm_head(self, hidden: Tensor) -> Tensor:
        """``(..., d)`` -> ``(..., V)`` fp32 logits (soft-capped where the model does)."""
        # As one (rows, d) matrix: a strided slice of the hidden states would make the matmul a bmm that
        # reads the whole (V, d) output matrix once per batch row (8x the memory traffic at B = 8).
        rows = hidden.reshape(-1, hidden.shape[-1]).contiguous()
        logits = self.model.get_output_embeddings()(rows).float().view(*hidden.shape[:-1], -1)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def generate(self, prefix: Prefix, max_new_tokens: int = 16) -> list[str]:
        """Greedy answers from a prefix, cut at the first newline and stripped (DESIGN §5)."""
        texts = self.tokenizer.batch_decode(self.generate_ids(prefix, max_new_tokens), skip_special_tokens=True)
        return [text.split("\n")[0].strip() for text in texts]

    @torch.no_grad()
    def generate_ids(self, prefix: Prefix, max_new_tokens: int = 16) -> Tensor:
        """Greedy decoding with a KV cache; rows stop independently at EOS or a newline token.

        Returns:
            ``(B, n)`` new token ids; rows that stopped early are filled with the pad id.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        newline_ids = self.newline_token_ids

        class StopAtNewline(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # (B, t) generated so far -> (B,) done
                return torch.isin(input_ids[:, -1], newline_ids)

        output = self.model.generate(
            inputs_embeds=prefix.embeddings,
            attention_mask=prefix.mask.long(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([StopAtNewline()]),
        )
        return output  # (B, n): with inputs_embeds, generate returns only the new tokens

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in the backward pass instead of keeping its activations.

        Gradients still flow to the soft prompt; the weights stay frozen. transformers checkpoints a
        layer only in training mode, so the decoder layers are put in training mode — safe only when
        the model has no active dropout, which is checked.
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        dropouts = {k: v for k, v in self.model.config.to_dict().items()
                    if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
        if dropouts:
            raise ValueError(
                f"{self.key}: gradient checkpointing of a frozen model needs its dropout off, but the config has "
                f"{dropouts}; set runtime.gradient_checkpointing=false"
            )
        enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.eval()
        layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ValueError(
                f"{self.key}: this architecture has no checkpointable layers; set runtime.gradient_checkpointing=false"
            )
        for layer in layers:
            layer.train()

    def generate_from_soft_prompt(self, soft_prompt: Tensor, max_new_tokens: int = 16) -> list[str]:
        return self.generate(self.soft_prefix(soft_prompt), max_new_tokens)


def lm_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's architecture config, dtype and a strided sample of every weight.

    Cheap (reads ~1k values per tensor) and changes with any re-quantisation, fine-tune or dtype change.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string(use_diff=False) if config is not None else type(model).__name__).encode())
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)].to("cpu", torch.float64)
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
