"""Run by tests/unit/test_sharding.py under ``torch.distributed.run`` with 2 CPU processes: shard the
tiny frozen LLMs with ``training.sharding`` and check, on every process, that outputs and gradients
equal the unsharded model's and that each process still holds half of the layer weights after a
no-grad forward (the KD teacher's) and after a forward + backward (the student's)."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from interlingua.config import ModelConfig, PromptFormat
from interlingua.models.frozen_lm import FrozenLM
from interlingua.training.sharding import local_share, shard_frozen_layers

TEXTS = ["Context: Paris is the capital of France.\nQuestion: What is the capital?\nAnswer:"]


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    lms = [FrozenLM.load(ModelConfig("tiny-llama", PromptFormat.RAW)),
           FrozenLM.load(ModelConfig("tiny-qwen2", PromptFormat.CHAT))]
    whole = [copy.deepcopy(lm) for lm in lms]
    layers = shard_frozen_layers(lms, torch.device("cpu"))
    assert local_share(layers) == 0.5, local_share(layers)
    for lm, reference in zip(lms, whole):
        targets = lm.answer_targets(["Paris"], k=3)
        with torch.no_grad():  # the teacher's forward
            got = lm.target_logits(lm.text_prefix(TEXTS), targets)
        torch.testing.assert_close(got, reference.target_logits(reference.text_prefix(TEXTS), targets))
        assert local_share(layers) == 0.5, f"gathered weights kept after a no-grad forward: {local_share(layers)}"
        torch.manual_seed(rank)
        soft = torch.randn(2, 3, lm.hidden_size, requires_grad=True)
        soft_ref = soft.detach().clone().requires_grad_(True)
        both = lm.answer_targets(["Paris", "France"], k=3)
        lm.target_logits(lm.soft_prefix(soft), both).logsumexp(-1).sum().backward()  # the student's
        reference.target_logits(reference.soft_prefix(soft_ref), both).logsumexp(-1).sum().backward()
        torch.testing.assert_close(soft.grad, soft_ref.grad)
        assert local_share(layers) == 0.5, f"gathered weights kept after a backward: {local_share(layers)}"
    dist.barrier()
    print(f"process {rank}: sharded outputs and gradients match, local share 0.50", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
