"""The system layer: :class:`Interlingua` owns the learned modules and reaches the frozen models, with one
encode path (text -> z) and one soft-prompt path (z -> a receiver's soft tokens). Training, evaluation,
the wire commands and the public API all go through it.

    il = Interlingua.from_pretrained("runs/native/train/step_000250")     # a folder or a hub id
    message = il.encode(["Context: …"], sender="smollm2-135m-instruct")   # z + wire bytes
    answers = il.generate(message, receiver="gemma3-270m", question=["…?"])
    il.save_pretrained("my-interlingua")                                  # weights, config, model card

Frozen models load on first use, so a sender alone loads its own LLM and the sentence encoder, and a
receiver alone loads only its own LLM (a vocab-precision message is coded with every model's vocabulary, so
both sides of one load them all). Training and evaluation pass every frozen model in at construction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from interlingua.codec.message import decode_message, encode_message, peek_precision
from interlingua.codec.quantize import fake_quantize
from interlingua.codec.vocabulary import VocabularyCode
from interlingua.config import AnchorKind, CompressionConfig, Conditioning, Config, NativeDecoder, Precision
from interlingua.constants import RESOLVED_CONFIG_FILE, TRAINER_STATE_FILE
from interlingua.data.prompts import QUESTION_MARKER, question_suffix
from interlingua.errors import CheckpointError, ConfigError, MessageInputError, WireFormatError
from interlingua.models.batching import generate_batched
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.interlingua import FrozenModelInfo, InterlinguaModel
from interlingua.models.native import Latent, NativeInterlingua
from interlingua.settings import Artifact, settings_differences

log = logging.getLogger(__name__)

MODEL_CARD_FILE = "README.md"


@dataclass
class Anchor:
    """Semantic anchor: ``(B, d_sem)`` (sentence) or ``(B, S, d_sem)`` with mask ``(B, S)`` (tokens)."""

    states: Tensor
    mask: Tensor | None = None


@dataclass
class Message:
    """What a sender produced for a list of prompts: each prompt's ``z`` and its wire frame.

    ``z`` is what the sender encoded (fp32, CPU): ``(d_inter,)`` or ``(M, d_inter)`` for the pooled
    design, ``(T_i, d_inter)`` (one vector per sender token, T_i varies) for the native one. ``payloads``
    are those z as wire messages at ``precision`` (``docs/wire-format.md``); a receiver reads
    :meth:`received`, the z the wire delivers, never ``z`` itself.
    """

    sender: str
    z: list[Tensor]
    payloads: list[bytes]
    precision: Precision
    checkpoint_id: str
    code: Optional[VocabularyCode] = field(default=None, repr=False, compare=False)
    """The vocabularies a vocab-precision message is coded with (not sent: each side has its own copy)."""

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire, all prompts together."""
        return sum(len(p) for p in self.payloads)

    def received(self) -> list[Tensor]:
        """Each prompt's z as a receiver decodes it from the wire (quantised at ``precision``)."""
        return [decode_message(p, expected_checkpoint_id=self.checkpoint_id, code=self.code).z for p in self.payloads]

    @classmethod
    def from_bytes(cls, payloads: Sequence[bytes], checkpoint_id: str, names: Sequence[str] | None = None,
                   sender: str = "?", code: VocabularyCode | None = None) -> "Message":
        """Messages read back from bytes (e.g. ``.bin`` files); each is checked against ``checkpoint_id``
        (vocab-precision ones are decoded with ``code``, the receiver's ``model.vocabulary_code()``).

        Raises:
            WireFormatError: a corrupted or foreign message, or one from another checkpoint; the error
                names the message.
        """
        names = list(names or [f"message {i + 1}" for i in range(len(payloads))])
        z, precision = [], Precision.FP32
        for name, data in zip(names, payloads):
            try:
                decoded = decode_message(data, expected_checkpoint_id=checkpoint_id, code=code)
            except WireFormatError as err:
                raise WireFormatError(f"{name}: {err}") from None
            z.append(decoded.z)
            precision = decoded.precision
        return cls(sender, z, list(payloads), precision, checkpoint_id, code)


def frozen_model_info(lm: FrozenLM) -> FrozenModelInfo:
    return FrozenModelInfo(spec=lm.key, hidden_size=lm.hidden_size, embedding_rms=lm.embedding_rms)


def load_frozen_models(config: Config, device: torch.device, dtype: torch.dtype):
    """The frozen LLMs of ``config.models`` (in config order) and its sentence encoder, loaded together.

    Returns:
        ``({spec: FrozenLM}, SentenceEncoder)``.
    """
    from interlingua.models.encoder import SentenceEncoder

    lms = {m.spec: load_frozen_model(config, m.spec, device, dtype) for m in config.models}
    return lms, SentenceEncoder(config.encoder, device=device)


def load_frozen_model(config: Config, key: str, device: torch.device, dtype: torch.dtype) -> FrozenLM:
    """One frozen LLM of ``config.models`` (``runtime.gradient_checkpointing`` applied).

    Raises:
        ConfigError: ``key`` is not one of ``config.models``; the message lists them.
    """
    for model_config in config.models:
        if model_config.spec == key:
            lm = FrozenLM.load(model_config, device=device, dtype=dtype)
            if config.runtime.gradient_checkpointing:
                lm.enable_gradient_checkpointing()
            return lm
    raise ConfigError(f"model {key!r} is not in the config; its models are: {', '.join(m.spec for m in config.models)}")


class Interlingua(nn.Module):
    """The learned modules (its only parameters) + the frozen LLMs and sentence encoder they read and write.

    Args:
        model: the learned modules (:class:`InterlinguaModel` or :class:`NativeInterlingua`).
        lms: frozen LLMs by key, checked against ``model``; more load on first use when ``config`` is given.
        encoder: the frozen sentence encoder; loaded on first use when None and ``config`` is given.
        config: the run config (model specs and prompt formats, ``compression``, ``eval``, ``data``).
    Raises:
        CheckpointError: ``lms`` that are not models of ``model``, or differ from the ones it was trained with.
    """

    def __init__(self, model: InterlinguaModel, lms: dict[str, FrozenLM] | None = None, encoder=None,
                 config: Config | None = None):
        super().__init__()
        self.model = model  # the only submodule: parameters(), state_dict() and DDP see the learned modules alone
        # Frozen parts stay plain attributes, never submodules (not wrapped, not in the optimizer, not saved).
        object.__setattr__(self, "lms", {})
        object.__setattr__(self, "_encoder", encoder)
        self.config = config
        self.compression: CompressionConfig | None = config.compression if config is not None else None
        """With ``compression.qat`` the soft prompts of :meth:`forward` read z through the wire's rounding."""
        self.teachers: dict = {}
        """Model key -> ``cache.KDTeacher`` installed by the training recipe (cached top-k teacher); a model
        without one gets the exact full-vocabulary teacher."""
        self.anchor_cache = None
        """A ``cache.AnchorCache`` installed by the training recipe; None = run the encoder every time."""
        object.__setattr__(self, "interlingua_teacher", None)
        """``loss.w_kd_z``: a frozen :class:`Interlingua` over the ``train.init_from`` checkpoint and the same
        frozen models, installed by the training recipe (a plain attribute: not trained, not saved)."""
        lms = dict(lms or {})
        if lms:  # training and evaluation pass every model; a sender or receiver alone loads its own lazily
            model.check_frozen_models([frozen_model_info(lm) for lm in lms.values()])
        for lm in lms.values():
            self._attach(lm)

    # ---- loading and saving ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, overrides: Sequence[str] = (),
                        config: Config | None = None, device: str | None = None) -> "Interlingua":
        """The interlingua saved in a folder (a ``step_N/`` checkpoint or :meth:`save_pretrained`'s) or on the
        Hugging Face hub (``owner/name``); no frozen model is loaded yet.

        Args:
            path_or_hub_id: a local folder, else a hub repository id (downloaded with ``huggingface_hub``).
            overrides: ``key=value`` on top of the stored config (``compression.precision``, ``eval.batch_size``, …).
            config: the config to start from; default the one stored with the weights.
            device: ``runtime.device`` (``auto``, ``cpu``, ``cuda``, …); default the stored one.
        Raises:
            CheckpointError: no such folder or hub repository, or an unreadable checkpoint.
            ConfigError: a bad override.
        """
        directory = resolve_pretrained(path_or_hub_id)
        overrides = list(overrides) + ([f"runtime.device={device}"] if device else [])
        model, config, _ = load_checkpoint(directory, config, overrides)
        return cls(model.eval(), config=config)

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None, command: str | None = None) -> Path:
        """Write the learned modules (``model.safetensors`` + ``interlingua_config.json``), the run config
        (``config.yaml``) and a model card (``README.md``: the config, ``metrics`` and the ``command`` that
        made them), in the layout the hub expects. Returns ``directory``."""
        from interlingua.config import save_config
        from interlingua.models.card import model_card

        directory = Path(directory)
        self.model.save_pretrained(directory)
        if self.config is not None:
            save_config(self.config, directory / RESOLVED_CONFIG_FILE)
        (directory / MODEL_CARD_FILE).write_text(model_card(self, metrics, command))
        return directory

    def push_to_hub(self, repo_id: str, metrics: dict | None = None, command: str | None = None,
                    private: bool = False) -> str:
        """:meth:`save_pretrained` into a temporary folder and upload it to ``repo_id`` on the hub; returns its URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, metrics, command)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp))

    # ---- frozen models ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def model_keys(self) -> list[str]:
        return self.model.model_keys

    @property
    def is_native(self) -> bool:
        return isinstance(self.model, NativeInterlingua)

    @property
    def conditioning(self) -> Conditioning:
        return self.model.spec.interlingua.conditioning

    def lm(self, key: str, role: str = "model") -> FrozenLM:
        """Frozen LLM ``key``, loaded (and checked against the checkpoint) on first use.

        Raises:
            CheckpointError: ``key`` is not one of this interlingua's models (``role`` names it in the message).
        """
        if key not in self.model_keys:
            raise CheckpointError(f"{role} {key!r} is not one of this checkpoint's models: "
                                  f"{', '.join(self.model_keys)}")
        if key not in self.lms:
            if self.config is None:
                raise CheckpointError(f"{key} is not loaded and this Interlingua has no config to load it from")
            from interlingua.runtime import frozen_dtype

            dtype = frozen_dtype(self.device, self.config.runtime.dtype)
            self._attach(load_frozen_model(self.config, key, self.device, dtype))
        return self.lms[key]

    def _attach(self, lm: FrozenLM) -> None:
        self.model.check_frozen_model(frozen_model_info(lm))
        if self.is_native:  # the native receivers read their own vocabularies
            self.model.attach_vocabularies({lm.key: lm})
        self.lms[lm.key] = lm

    @property
    def encoder(self):
        """The frozen sentence encoder, loaded on first use."""
        if self._encoder is None:
            if self.config is None:
                raise CheckpointError("no sentence encoder loaded and this Interlingua has no config to load it from")
            from interlingua.models.encoder import SentenceEncoder

            object.__setattr__(self, "_encoder", SentenceEncoder(self.config.encoder, device=self.device))
        return self._encoder

    # ---- the one encode path and the one soft-prompt path ------------------------------------------
    def anchor(self, texts: list[str]) -> Anchor:
        """The frozen sentence encoder's view of ``texts``, as the learned modules were trained with it."""
        if self.anchor_cache is not None:
            states, mask = self.anchor_cache(texts)
            return Anchor(states.to(self.device), None if mask is None else mask.to(self.device))
        with torch.no_grad():
            if self.model.spec.interlingua.anchor == AnchorKind.TOKENS:
                states, mask = self.encoder.encode_tokens(texts)
                return Anchor(states.to(self.device), mask.to(self.device))
            return Anchor(self.encoder.encode(texts).to(self.device))

    def encode_z(self, sender: str, texts: list[str], anchor: Anchor | None = None) -> Tensor | Latent:
        """``texts`` read through ``sender``'s frozen token embeddings -> z; gradients reach the learned modules.

        Returns:
            pooled: ``(B, d_inter)`` or ``(B, M, d_inter)``; native: a :class:`Latent` ``(B, T', d_inter)`` + mask.
        """
        lm = self.lm(sender)
        anchor = self.anchor(texts) if anchor is None else anchor
        ids, mask = lm.tokenize_plain(texts)
        with torch.no_grad():
            embeddings = lm.embed(ids).float()  # (B, T, d_m); frozen, the learned modules run in fp32
        return self.model.encode(sender, embeddings.to(self.device), mask.to(self.device), anchor.states, anchor.mask)

    def soft_prompt(self, receiver: str, z: Tensor | Latent):
        """Any sender's z -> soft prompt ``(B, M, d_receiver)`` (pooled) or ``SoftTokens`` (native)."""
        return self.model.soft_prompt(receiver, z)

    def delivered(self, z: Tensor | Latent) -> Tensor | Latent:
        """z as the wire delivers it under quantisation-aware training (``compression.qat``), else z itself;
        gradients pass straight through the rounding."""
        if self.compression is None or not self.compression.qat:
            return z
        if isinstance(z, Latent):
            return Latent(self.delivered(z.z), z.mask)
        if Precision(self.compression.precision) == Precision.VOCAB:
            return self.vocabulary_code().fake_code(z)
        return fake_quantize(z, self.compression.precision, self.compression.group_size)

    def vocabulary_code(self) -> VocabularyCode:
        """The codebooks of ``compression.precision=vocab`` (native design: every receiver head's vocabulary)."""
        if not self.is_native:
            raise CheckpointError("compression.precision=vocab codes z with the native design's vocabulary heads; "
                                  "this interlingua is the pooled design: use fp16 / int8 / int4")
        for key in self.model_keys:  # the code holds every model's vocabulary, so both sides load them all
            self.lm(key)
        return self.model.vocabulary_code()

    def wire_code(self, precision: Precision) -> VocabularyCode | None:
        """The code a message at ``precision`` needs: the vocabulary code for vocab, else None."""
        return self.vocabulary_code() if Precision(precision) == Precision.VOCAB else None

    def forward(self, texts: list[str], anchor: Anchor) -> tuple[dict, dict, Tensor]:
        """All of the learned modules' work for one training batch in a single call (data parallelism
        synchronises gradients through ``forward``).

        Returns:
            ``(zs, soft_prompts, anchor_target)``: z per sender, soft prompts (pooled: the own model's, keyed
            by model; native: every receiver of every sender, keyed ``(sender, receiver)``), and the fixed
            anchor projection ``(B, d_inter)`` that L_sem compares z with. The zs stay unquantised.
        """
        zs = {key: self.encode_z(key, texts, anchor) for key in self.lms}
        if self.is_native:
            soft = {(a, b): self.soft_prompt(b, self.delivered(z)) for a, z in zs.items() for b in self.lms}
            return zs, soft, self.model.project_anchor(anchor.states, anchor.mask)
        soft = {key: self.soft_prompt(key, self.delivered(z)) for key, z in zs.items()}
        return zs, soft, self.model.aligner.project_anchor(anchor.states, anchor.mask)

    def encode_rows(self, sender: str, texts: Sequence[str], batch_size: int | None = None,
                    progress: bool = False) -> list[Tensor]:
        """z of every text (no gradients), batched longest-first: one fp32 CPU tensor per text, in order."""
        def encode(batch: list[str]) -> list[Tensor]:
            with torch.no_grad():
                z = self.encode_z(sender, batch)
            rows = z.rows() if isinstance(z, Latent) else list(z)
            return [row.float().cpu() for row in rows]

        return generate_batched(list(texts), encode, batch_size or self._setting("eval.batch_size", 16),
                                length=len, desc=f"{sender} encode", progress=progress)

    def soft_rows(self, receiver: str, z_rows: Sequence[Tensor], batch_size: int | None = None,
                  progress: bool = False, desc: str = "decode") -> list[Tensor]:
        """``receiver``'s soft prompt of each z row (no gradients): ``(M, d)`` or ``(T_i, d)`` per row."""
        def decode(batch: list[Tensor]) -> list[Tensor]:
            with torch.no_grad():
                if self.is_native:
                    soft = self.soft_prompt(receiver, Latent.from_rows(batch).to(self.device))
                    return [row[mask] for row, mask in zip(soft.embeddings, soft.mask)]
                return list(self.soft_prompt(receiver, torch.stack(batch).to(self.device)))

        return generate_batched(list(z_rows), decode, batch_size or self._setting("eval.batch_size", 16),
                                length=len, desc=desc, progress=progress)

    # ---- the public API ----------------------------------------------------------------------------
    def encode(self, texts: str | Sequence[str], sender: str | None = None, precision: Precision | str | None = None,
               group_size: int | None = None) -> Message:
        """Encode prompts as ``sender`` (default: the first model) for any receiver.

        Args:
            texts: prompts used as given, e.g. ``Context: …\\nQuestion: …\\nAnswer:``; for an interlingua
                trained with ``interlingua.conditioning=hybrid`` the context alone, ``Context: …``.
            precision, group_size: the wire format (default ``compression.precision`` / ``group_size``).
        Raises:
            MessageInputError: no texts, an empty one, one over ``data.max_prompt_tokens`` tokens, or one holding
                a question for a hybrid interlingua.
            CheckpointError: ``sender`` is not one of this interlingua's models.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        sender = sender or self.model_keys[0]
        self.check_prompts(texts, sender)
        precision = Precision(precision or self._setting("compression.precision", Precision.FP32))
        group_size = group_size if group_size is not None else self._setting("compression.group_size", 32)
        z = self.encode_rows(sender, texts)
        checkpoint_id = self.model.fingerprint()
        code = self.wire_code(precision)
        payloads = [encode_message(row, precision, group_size, checkpoint_id, code) for row in z]
        return Message(sender, z, payloads, precision, checkpoint_id, code)

    def generate(self, message: Message, receiver: str | None = None, question: str | Sequence[str] | None = None,
                 max_new_tokens: int | None = None, names: Sequence[str] | None = None) -> list[str]:
        """Greedy answers of ``receiver`` (default: the first model), reading each prompt's z as the wire
        delivers it; a hybrid interlingua also reads ``question`` (one per prompt) as text after it.

        Raises:
            MessageInputError: questions missing for a hybrid interlingua, given for a full one, empty, or not
                one per prompt.
            WireFormatError: a message from another checkpoint or of the wrong shape.
            CheckpointError: ``receiver`` is not one of this interlingua's models.
        """
        questions = [question] if isinstance(question, str) else (None if question is None else list(question))
        names = list(names or [f"message {i + 1}" for i in range(len(message))])  # how errors name each message
        check_questions(self.conditioning, questions, names)
        z = self.check_received(message, names)
        lm = self.lm(receiver or self.model_keys[0], "receiver")
        soft = self.soft_rows(lm.key, z)
        return answers_from_soft(self, lm, soft, questions, batch_size=self._setting("eval.batch_size", 16),
                                 max_new_tokens=max_new_tokens or self._setting("eval.max_new_tokens", 16))

    # ---- checks ----------------------------------------------------------------------------------
    def check_prompts(self, texts: Sequence[str], sender: str, names: Sequence[str] | None = None) -> None:
        """Refuse what training never showed a sender: no prompt, an empty one, one over
        ``data.max_prompt_tokens`` tokens, or (hybrid) one holding a question."""
        names = list(names or [f"prompt {i + 1}" for i in range(len(texts))])
        if not texts:
            raise MessageInputError("no prompts to encode")
        for name, text in zip(names, texts):
            if not isinstance(text, str) or not text.strip():
                raise MessageInputError(f"{name} is empty; a prompt needs at least one non-space character")
            if self.conditioning == Conditioning.HYBRID and QUESTION_MARKER in text:
                raise MessageInputError(
                    f"{name} holds a question ({QUESTION_MARKER!r}), but this interlingua was trained with "
                    "interlingua.conditioning=hybrid: send the context alone ('Context: …') and give the question "
                    "to the receiver (generate(..., question=…) or interlingua generate --question …)"
                )
        lm, budget = self.lm(sender, "sender"), self._setting("data.max_prompt_tokens", None)
        for name, text in zip(names, texts) if budget else ():
            count = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
            if count > budget:
                raise MessageInputError(
                    f"{name} is {count} tokens in {lm.key}'s tokenizer, over data.max_prompt_tokens={budget}; "
                    "shorten it (e.g. cut the context) or raise data.max_prompt_tokens"
                )

    def check_received(self, message: Message, names: Sequence[str]) -> list[Tensor]:
        """The z a receiver decodes from each payload, checked to come from this interlingua and to have its shape."""
        if not len(message):
            raise MessageInputError("no messages to decode")
        code = self.receiving_code(message.payloads)
        z = Message.from_bytes(message.payloads, self.model.fingerprint(), names, code=code).z
        expected = self.model.z_shape
        for name, row in zip(names, z):
            fits = (row.dim() == len(expected) and all(e in (-1, s) for e, s in zip(expected, row.shape))
                    and row.shape[0] > 0)
            if not fits:
                shape = tuple("T" if e == -1 else e for e in expected)
                raise WireFormatError(f"{name}: z of shape {tuple(row.shape)}, this checkpoint's z is {shape}")
        return z

    def receiving_code(self, payloads: Sequence[bytes]) -> VocabularyCode | None:
        """The vocabulary code when a payload says vocab and this interlingua has one; otherwise None, and the
        decoder says what is wrong (another checkpoint's message, or no code to read it with)."""
        if not any(peek_precision(p) == Precision.VOCAB for p in payloads):
            return None
        spec = self.model.spec.interlingua
        if not self.is_native or spec.decoder != NativeDecoder.VOCAB or spec.d_wire is not None:
            return None
        return self.vocabulary_code()

    def _setting(self, dotted: str, default):
        """``config.<dotted>``, or ``default`` for an Interlingua built without a config."""
        value = self.config
        for part in dotted.split(".") if value is not None else ():
            value = getattr(value, part)
        return default if value is None else value


def answers_from_soft(system: Interlingua, lm: FrozenLM, soft: list[Tensor], questions: list[str] | None,
                      batch_size: int, max_new_tokens: int, progress: bool = False,
                      desc: str = "generate") -> list[str]:
    """Greedy answers of ``lm`` from soft-prompt rows, each followed by its question as text (hybrid) or by
    nothing but the answer cue (``questions=None``, full), batched longest-first."""
    def generate(indices: list[int]) -> list[str]:
        batch = [soft[i] for i in indices]
        chunk = None if questions is None else [questions[i] for i in indices]
        if system.is_native:
            padded = Latent.from_rows(batch)  # right-padded (B, T, d) + mask, what the prefix builder takes
            tails = [question_suffix(q) for q in chunk] if chunk is not None else [""] * len(batch)
            return lm.generate(lm.soft_tokens_prefix(padded.z, padded.mask, tails), max_new_tokens)
        return lm.generate(lm.soft_prefix(torch.stack(batch).to(lm.device), questions=chunk), max_new_tokens)

    return generate_batched(list(range(len(soft))), generate, batch_size, length=lambda i: len(soft[i]), desc=desc,
                            progress=progress)


def check_questions(conditioning: Conditioning, questions: Sequence[str] | None, names: Sequence[str]) -> None:
    """The receiver reads a question as text exactly when the interlingua was trained that way."""
    if conditioning == Conditioning.HYBRID and questions is None:
        raise MessageInputError(
            "this checkpoint was trained with interlingua.conditioning=hybrid: a message holds only the context "
            'and the receiver reads the question as text; pass --question "…" (or --input FILE.jsonl with a '
            '"question" per message; in Python generate(..., question=…))'
        )
    if conditioning == Conditioning.FULL and questions is not None:
        raise MessageInputError(
            "this checkpoint was trained with interlingua.conditioning=full: the question travels inside the "
            "message; drop --question / --input (in Python, the question argument)"
        )
    if questions is None:
        return
    if len(questions) != len(names):
        raise MessageInputError(f"{len(questions)} questions for {len(names)} messages; give one per message")
    for name, question in zip(names, questions):
        if not isinstance(question, str) or not question.strip():
            raise MessageInputError(f"{name}: empty question; a hybrid receiver needs the question as text")


# ---- checkpoints -------------------------------------------------------------------------------------
def resolve_pretrained(path_or_hub_id: str | Path) -> Path:
    """A local folder as is; otherwise a hub repository id, downloaded (or read from the hub cache).

    Raises:
        CheckpointError: neither a folder nor a reachable hub repository.
    """
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise CheckpointError(
            f"{text}: not an interlingua checkpoint (no such folder); pass a step_N/ folder written by "
            "`interlingua train`, a folder from save_pretrained, or a hub id owner/name"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text))
    except Exception as err:  # offline, unknown repository, no access: all end the same way for the user
        raise CheckpointError(
            f"{text}: no such local folder, and the hub repository could not be fetched ({type(err).__name__}: {err})"
        ) from None


def load_checkpoint(checkpoint_dir: Path, config: Config | None = None, overrides: list[str] | None = None):
    """The learned modules of a checkpoint folder, the config to run them with, and the device.

    Returns:
        ``(model, config, device)``: the model on that device, the config with the checkpoint's
        ``interlingua`` section.
    Raises:
        CheckpointError: no such folder, or an unreadable checkpoint.
        ConfigError: a bad override.
    """
    from interlingua.runtime import resolve_device

    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(
            f"{checkpoint_dir}: not an interlingua checkpoint (no such folder); pass a step_N/ folder written by "
            "`interlingua train`"
        )
    config = checkpoint_config(checkpoint_dir, config, overrides)
    device = resolve_device(config.runtime.device)
    model = InterlinguaModel.from_pretrained(checkpoint_dir, map_location=device)
    return model, check_checkpoint_config(model, config, checkpoint_dir), device


def checkpoint_config(checkpoint_dir: Path, config: Config | None = None, overrides: list[str] | None = None) -> Config:
    """The config to run a checkpoint with: ``config`` if given, else the one stored with it, then
    ``overrides`` on top.

    The stored config is looked up in the checkpoint's ``trainer_state.json`` (key ``config``: exactly the
    config that produced these weights, even after a resume with changes), then in the folder's own
    ``config.yaml`` (:meth:`Interlingua.save_pretrained`) and then in the run folder's.

    Raises:
        CheckpointError: no config given and none stored.
        ConfigError: a bad override.
    """
    from interlingua.config import config_from_dict, config_to_dict

    if config is not None:
        return config_from_dict(config_to_dict(config), overrides, origin=f"config {config.name!r}")
    data, origin = _stored_config(Path(checkpoint_dir))
    return config_from_dict(data, overrides, origin=str(origin))


def _stored_config(checkpoint_dir: Path) -> tuple[dict, Path]:
    from interlingua.artifacts.layout import read_trainer_state

    state_path = checkpoint_dir / TRAINER_STATE_FILE
    if state_path.is_file():
        config = read_trainer_state(checkpoint_dir).get("config")
        if isinstance(config, dict):
            return config, state_path
    for candidate in (checkpoint_dir / RESOLVED_CONFIG_FILE, checkpoint_dir.parent / RESOLVED_CONFIG_FILE):
        if candidate.is_file():
            return OmegaConf.to_container(OmegaConf.load(candidate)), candidate
    raise CheckpointError(
        f"{checkpoint_dir}: no stored config (looked for 'config' in {state_path}, and for {RESOLVED_CONFIG_FILE} "
        "in it and in its parent); pass the run's config explicitly (--config NAME)"
    )


def check_checkpoint_config(model: InterlinguaModel, config: Config, checkpoint_dir: Path) -> Config:
    """Check that ``config`` names the frozen models and encoder ``model`` was trained with (before
    loading any of them), and take the interlingua shape from the checkpoint.

    Returns:
        ``config`` with ``interlingua`` = the checkpoint's (it sets M for the token-budget baseline).
    Raises:
        CheckpointError: other models or another encoder; the message lists both sides.
    """
    from interlingua.config import replace

    changed = settings_differences(Artifact.CHECKPOINT_SHAPE, model.spec, config)
    trained, named = model.model_keys, [m.spec for m in config.models]
    if sorted(trained) != sorted(named) or any(d.key == "encoder" for d in changed):  # any order evaluates
        raise CheckpointError(
            f"{checkpoint_dir} was trained with models {trained} and encoder {model.spec.encoder!r}, but the config "
            f"names models {named} and encoder {config.encoder!r}; evaluate with the checkpoint's own config "
            "(omit --config) or set models.N.spec / encoder to match"
        )
    shape = [d for d in changed if d.key.startswith("interlingua.")]
    if shape:
        log.warning("the config's interlingua section differs from the checkpoint's (%s; checkpoint -> config); "
                    "using the checkpoint's", "; ".join(map(str, shape)))
    return replace(config, interlingua=model.spec.interlingua)

