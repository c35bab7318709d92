"""Shard the frozen LLMs across the processes of a multi-process run (``runtime.shard_frozen``).

Each process holds 1/N of every decoder layer's weights (FSDP2 ``fully_shard``); a layer gathers its
full weights for its forward (and again for the backward that carries gradients to the soft prompt)
and drops them afterwards. That is what lets frozen models too large to replicate on every GPU train
(the 8B pair on GPUs under ~48 GB). The token embeddings, final norm and output matrix stay whole on
every process: they are called outside the model's forward (embedding the cue, the LM head at the
target positions) and are a small part of the weights of an 8B model.

A sharded layer's forward is a collective: every process must run the same sequence of forwards of
each frozen model. The training step does (each process has its share of every global batch and the
same micro-batch count); the one place where processes differ, the KD teacher's cache misses, is made
collective with :func:`any_process`.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from interlingua.config import ConfigError
from interlingua.models.frozen_lm import FrozenLM


def shard_frozen_layers(lms: Iterable[FrozenLM], device: torch.device) -> list[torch.nn.Module]:
    """``fully_shard`` every decoder layer of each frozen LLM over all processes of the default group.

    Returns:
        The layers sharded.
    Raises:
        ConfigError: no process group of at least 2 processes (run under ``accelerate launch``), or a
            model whose decoder layers cannot be found.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    check_can_shard(dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    sharded = []
    for lm in lms:
        layers = decoder_layers(lm.model)
        if not layers:
            raise ConfigError(f"{lm.key}: found no decoder layers to shard (model._no_split_modules is empty)")
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        # The decoder stack as the root unit, owning none of the weights outside the layers (they stay
        # whole): a root unit keeps its weights gathered after its forward, so without this parent
        # every layer would be a root and, after its first forward, hold all of its weights again.
        stack = lm.model.base_model
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        fully_shard(stack, mesh=mesh, ignored_params={p for p in stack.parameters() if id(p) not in in_layers})
        sharded += layers
    return sharded


def check_can_shard(num_processes: int) -> None:
    """Raise ConfigError unless there are several processes to shard over."""
    if num_processes < 2:
        raise ConfigError(
            f"runtime.shard_frozen shards the frozen LLMs across processes, but this run has {num_processes}: "
            "launch with `accelerate launch --num_processes N -m interlingua train ...` (N >= 2), or set "
            "runtime.shard_frozen=false"
        )


def local_share(layers: Iterable[torch.nn.Module]) -> float:
    """The fraction of the layers' weights this process holds (1/N when sharded over N processes)."""
    params = [p for layer in layers for p in layer.parameters()]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    return local / max(1, sum(p.numel() for p in params))


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers names in ``_no_split_modules`` (what
    accelerate's big-model placement and FSDP auto-wrap use as the unit too)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (a collective: every process must call it)."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
