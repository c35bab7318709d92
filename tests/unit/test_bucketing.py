"""Length-bucketed training batches (data.bucket_window): same examples, less padding, still a pure
function of (seed, step)."""

from __future__ import annotations

import pytest

from interlingua.config import ConfigError, load_config
from interlingua.data.squad import load_squad
from interlingua.training.batches import TrainingStream
from tests.conftest import SQUAD_MINI


def _stream(tiny_lms, window: int, batch_size: int = 2, grad_accum: int = 1) -> TrainingStream:
    examples = load_squad("train", str(SQUAD_MINI), None, 0)
    return TrainingStream(examples, [lm.tokenizer for lm in tiny_lms.values()], 1024, batch_size, grad_accum, 0,
                          bucket_window=window)


def _length(stream, index):
    example = stream.examples[index]
    return len(example.context) + len(example.question)


def _padding(stream, steps):
    total = 0
    for step in range(steps):
        lengths = [_length(stream, i) for i in stream.batch_indices(step)]
        total += sum(max(lengths) - n for n in lengths)
    return total


def test_buckets_hold_the_same_examples_with_less_padding(tiny_lms):
    plain, bucketed = _stream(tiny_lms, 0), _stream(tiny_lms, 4)
    window = 4  # steps per window; 4 x 2 = 8 examples = one epoch of squad_mini
    for start in (0, window):
        steps = range(start, start + window)
        assert sorted(i for s in steps for i in plain.batch_indices(s)) == sorted(
            i for s in steps for i in bucketed.batch_indices(s))
    assert _padding(bucketed, 8) < _padding(plain, 8)
    for step in range(8):  # each batch is a run of neighbours in length order
        lengths = sorted(_length(bucketed, i) for i in bucketed.batch_indices(step))
        window_lengths = sorted(_length(bucketed, i)
                                for s in range(step // window * window, step // window * window + window)
                                for i in bucketed.batch_indices(s))
        position = window_lengths.index(lengths[0])
        assert window_lengths[position:position + len(lengths)] == lengths


def test_bucketed_batches_are_a_function_of_seed_and_step(tiny_lms):
    a, b = _stream(tiny_lms, 4), _stream(tiny_lms, 4)
    assert [a.global_batch(s) for s in range(8)] == [b.global_batch(s) for s in reversed(range(8))][::-1]
    assert a.global_answers(3) == [item.answer for item in a.global_batch(3)]
    order = [a.batch_indices(s) for s in range(4)]
    assert order != sorted(order, key=lambda batch: _length(a, batch[0]))  # batch order is shuffled, not by length


def test_bucketing_keeps_the_micro_batch_split(tiny_lms):
    one, accum = _stream(tiny_lms, 2, batch_size=4), _stream(tiny_lms, 2, batch_size=2, grad_accum=2)
    assert one.global_batch(1) == accum.global_batch(1)


def test_bucket_window_is_validated(tiny_lms):
    with pytest.raises(ConfigError, match="data.bucket_window"):
        load_config("tiny", ["data.bucket_window=-1"])
    with pytest.raises(ValueError, match="bucket_window"):
        _stream(tiny_lms, -2)
