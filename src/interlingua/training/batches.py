"""Deterministic, resumable batching of SQuAD training examples.

The examples form one endless stream: epoch ``e`` is a permutation of all examples seeded by
``(seed, e)``, and the epochs are laid end to end. Optimizer step ``s`` reads stream positions
``[s·G, (s+1)·G)`` with ``G = batch_size · grad_accum`` (the *global* batch), so the batch of any
step is a pure function of ``(seed, s)``: resuming at step ``s`` needs no saved data-loader state,
and ``batch_size=2, grad_accum=2`` reads exactly the examples of ``batch_size=4, grad_accum=1``.

The global batch is cut into ``grad_accum`` micro-batches of ``batch_size`` examples; under data
parallelism each process takes every ``world_size``-th example of a micro-batch, so the global batch
is the same for 1 or N processes.

With ``bucket_window = W > 0`` (``data.bucket_window``), the stream is cut into windows of ``W``
global batches; inside a window the examples are sorted by length (characters of context + question,
a cheap proxy for tokens) and cut into ``W`` batches, whose order is then shuffled (seeded by the
window). Each batch then holds prompts of similar length, so little of it is padding, while every
example is still read once per epoch (up to the window that straddles an epoch's end). The batch of a
step stays a pure function of ``(seed, W, G, step)``.

Every model reads the same prompt text (the sentence encoder too): the text prompt with its context
cut to fit ``data.max_prompt_tokens`` under *every* model's tokenizer (the shortest of the per-model
cuts). With ``interlingua.conditioning=hybrid`` the senders and the encoder read the context prompt
``Context: …`` (cut the same way, question not counted), the student reads the question as text after
its soft prompt, and the KD teacher still reads the whole text prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from interlingua.config import Conditioning
from interlingua.data.prompts import sender_prompt, shared_text_prompt
from interlingua.data.squad import SquadExample


@dataclass(frozen=True)
class TrainItem:
    """One training example as the step reads it."""

    text: str
    """What the KD teacher reads: the text prompt ``Context: …\\nQuestion: …\\nAnswer:``, cut to the
    token budget of every model (also what the senders read with ``conditioning=full``)."""
    answer: str
    """The first gold answer: the target of L_gen and the positions of L_kd."""
    sender_text: str | None = None
    """What the senders (aligner) and the anchor read when it is not ``text``: ``Context: …`` with
    ``conditioning=hybrid``; None with ``full``."""
    question: str | None = None
    """``conditioning=hybrid``: the question the student reads as text after its soft prompt; else None."""

    @property
    def sender(self) -> str:
        """The text the aligner and the sentence encoder read."""
        return self.text if self.sender_text is None else self.sender_text


@dataclass(frozen=True)
class MicroBatch:
    """One forward pass of one process: what ``training.step.batch_loss`` reads."""

    items: list[TrainItem]

    @classmethod
    def of(cls, texts: Sequence[str], answers: Sequence[str], sender_texts: Sequence[str] | None = None,
           questions: Sequence[str] | None = None) -> "MicroBatch":
        """A batch from parallel lists (``sender_texts`` / ``questions``: hybrid conditioning; None = full).

        Raises:
            ValueError: the lists differ in length.
        """
        senders = list(sender_texts) if sender_texts is not None else [None] * len(texts)
        asked = list(questions) if questions is not None else [None] * len(texts)
        if not len(texts) == len(answers) == len(senders) == len(asked):
            raise ValueError(f"MicroBatch.of needs lists of one length, got {len(texts)} texts, {len(answers)} "
                             f"answers, {len(senders)} sender texts, {len(asked)} questions")
        return cls([TrainItem(t, a, s, q) for t, a, s, q in zip(texts, answers, senders, asked)])

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    @property
    def answers(self) -> list[str]:
        return [item.answer for item in self.items]

    @property
    def sender_texts(self) -> list[str]:
        """What the aligner and the anchor read (= ``texts`` with ``conditioning=full``)."""
        return [item.sender for item in self.items]

    @property
    def questions(self) -> list[str] | None:
        """The questions the student reads after its soft prompt (``hybrid``); None with ``full``."""
        questions = [item.question for item in self.items]
        return None if all(q is None for q in questions) else questions


class TrainingStream:
    """The seeded stream of training items and the batches each step reads from it.

    Args:
        examples: the training split (already cut to ``data.train_limit``).
        tokenizers: the tokenizer of every frozen model; prompts are cut to fit all of them.
        max_prompt_tokens: ``data.max_prompt_tokens``.
        batch_size: ``train.batch_size`` (examples per micro-batch, over all processes).
        grad_accum: ``train.grad_accum`` (micro-batches per optimizer step).
        seed: seeds the epoch permutations (``data.seed``).
        bucket_window: ``data.bucket_window``: global batches sorted by length together (0 = off).
        conditioning: ``interlingua.conditioning``: what the senders read (see :class:`TrainItem`).
    Raises:
        ValueError: no examples, or a micro-batch that cannot be split over the processes.
    """

    def __init__(
        self,
        examples: Sequence[SquadExample],
        tokenizers: Sequence,
        max_prompt_tokens: int,
        batch_size: int,
        grad_accum: int,
        seed: int,
        bucket_window: int = 0,
        conditioning: Conditioning = Conditioning.FULL,
    ):
        if not examples:
            raise ValueError("no training examples: check data.source and data.train_limit")
        self.examples = list(examples)
        self.tokenizers = list(tokenizers)
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        if bucket_window < 0:
            raise ValueError(f"data.bucket_window must be >= 0, got {bucket_window}")
        self.bucket_window = bucket_window
        self.conditioning = Conditioning(conditioning)

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step, over all micro-batches and processes."""
        return self.batch_size * self.grad_accum

    def position(self, step: int) -> dict[str, int]:
        """Where step ``step`` starts in the stream: ``{"epoch", "epoch_offset", "examples_seen"}``."""
        seen = step * self.global_batch_size
        return {"epoch": seen // len(self.examples), "epoch_offset": seen % len(self.examples), "examples_seen": seen}

    def global_batch(self, step: int) -> list[TrainItem]:
        """The ``batch_size · grad_accum`` items optimizer step ``step`` reads (0-based)."""
        return [self.item(index) for index in self.batch_indices(step)]

    def global_answers(self, step: int) -> list[str]:
        """The first gold answer of each example of :meth:`global_batch` (no prompt building)."""
        return [self.examples[index].answers[0] for index in self.batch_indices(step)]

    def batch_indices(self, step: int) -> list[int]:
        """Example indices of optimizer step ``step``'s global batch, in micro-batch order."""
        size = self.global_batch_size
        if not self.bucket_window:
            return [self._example_index(p) for p in range(step * size, (step + 1) * size)]
        window, slot = divmod(step, self.bucket_window)
        return list(self._bucketed_window(window)[slot])

    @lru_cache(maxsize=2)
    def _bucketed_window(self, window: int) -> tuple[tuple[int, ...], ...]:
        """The ``bucket_window`` global batches of one window: examples sorted by length, batches shuffled."""
        size, count = self.global_batch_size, self.bucket_window
        start = window * count * size
        indices = [self._example_index(p) for p in range(start, start + count * size)]
        indices.sort(key=lambda i: len(self.examples[i].context) + len(self.examples[i].question))  # stable
        batches = [tuple(indices[b * size:(b + 1) * size]) for b in range(count)]
        random.Random(f"interlingua-buckets/{self.seed}/{window}").shuffle(batches)
        return tuple(batches)

    def micro_batches(self, step: int, rank: int = 0, world_size: int = 1) -> list[MicroBatch]:
        """This process's share of step ``step``: ``grad_accum`` micro-batches of ``batch_size / world_size``.

        Raises:
            ValueError: ``batch_size`` is not a multiple of ``world_size``.
        """
        if self.batch_size % world_size:
            raise ValueError(
                f"train.batch_size={self.batch_size} cannot be split over {world_size} processes; "
                f"set train.batch_size to a multiple of {world_size}"
            )
        items = self.global_batch(step)
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        return [MicroBatch(chunk[rank::world_size]) for chunk in chunks]

    def item(self, index: int) -> TrainItem:
        """Training item of example ``index``: its prompt(s) cut to fit every tokenizer, first gold answer."""
        example = self.examples[index]
        text = shared_text_prompt(self.tokenizers, example.context, example.question, self.max_prompt_tokens)
        if self.conditioning == Conditioning.FULL:
            return TrainItem(text=text, answer=example.answers[0])
        sender = sender_prompt(self.tokenizers, example.context, example.question, self.max_prompt_tokens,
                               self.conditioning)
        return TrainItem(text=text, answer=example.answers[0], sender_text=sender, question=example.question)

    def _example_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.examples))
        return _permutation(len(self.examples), self.seed, epoch)[offset]


@lru_cache(maxsize=4)
def _permutation(size: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Seeded permutation of ``range(size)`` for one epoch; the same on every machine and process."""
    order = list(range(size))
    random.Random(f"interlingua-train/{seed}/{epoch}").shuffle(order)
    return tuple(order)
