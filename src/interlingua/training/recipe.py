"""Train the interlingua: setup -> train -> save_checkpoint -> cleanup.

    interlingua train --config tiny data.source=tests/assets/squad_mini
    interlingua train --config tiny --resume                  # continue from <output_dir>/latest
    accelerate launch --multi_gpu --num_processes 2 -m interlingua train --config tiny
                                                   # data parallel; on a CPU machine this runs DDP over gloo

Only the learned modules (AlignmentTransformer + adapters) are trained, wrapped for data parallelism
and checkpointed; the frozen LLMs and the sentence encoder are loaded on every process and never
touched by the optimizer. Each process reads its share of the same global batch (see
``training/batches.py``) and its loss is that share of the global batch's loss (``training/step.py``),
so 1 or N processes, and any ``batch_size × grad_accum`` split of the same global batch, take the
same update up to float rounding.

Step ``s`` (0-based) is the ``(s+1)``-th optimizer update; checkpoint ``step_000050`` holds the
state after 50 updates. With ``pretrain.steps = P > 0`` the steps ``[0, P)`` are the reconstruction
stage and ``[P, P + train.steps)`` the QA stage: one step counter, one data stream (step ``s`` reads
the ``s``-th global batch in both), checkpoints named by the global step (also one at ``P``, the end
of the reconstruction stage), and one warmup + cosine learning-rate schedule per stage; the AdamW
moments carry over from one stage to the next.

A NaN/inf loss term or gradient norm stops training with :class:`TrainingDivergedError` before
anything is saved, so the last good checkpoint stays as it was.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from interlingua.artifacts.files import prepare_run_dir, run_info, write_json
from interlingua.artifacts.layout import checkpoint_dir, latest_checkpoint
from interlingua.artifacts.plots import plot_training_curves
from interlingua.cache.install import install_caches
from interlingua.config import AnchorKind, Config, ConfigError, Design, config_to_dict
from interlingua.constants import METRICS_LOG_FILE, RUN_INFO_FILE, TRAINING_CURVES_PLOT
from interlingua.data.squad import load_squad
from interlingua.errors import TrainingDivergedError
from interlingua.models.interlingua import CheckpointError, InterlinguaModel, InterlinguaSpec, read_spec
from interlingua.models.system import Interlingua, frozen_model_info, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device, seed_everything
from interlingua.settings import Artifact, settings_differences
from interlingua.training.batches import MicroBatch, TrainingStream
from interlingua.training.checkpoint import (
    check_same_config,
    prune_checkpoints,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from interlingua.training.monitor import MetricsLog, model_diagnostics
from interlingua.training.sharding import any_process, check_can_shard, local_share, shard_frozen_layers
from interlingua.training.step import LossNorm, Stage, StepLoss, batch_loss, loss_norm

log = logging.getLogger(__name__)



def train(config: Config, output_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    """Train the learned modules of ``config`` and checkpoint them under ``output_dir``.

    Args:
        config: the run (``models`` >= 2, ``train.*``, ``loss.*``, ``interlingua.*``, ``data.*``).
        output_dir: run folder: ``config.yaml``, ``run_info.json``, ``metrics.jsonl``, ``step_*/``, ``latest``.
        resume: continue exactly from the checkpoint ``output_dir/latest`` names.
        progress: show a progress bar (main process only).
    Returns:
        The final checkpoint folder (``step_<pretrain.steps + train.steps>``).
    Raises:
        TrainingDivergedError: a loss term or the gradient norm is NaN/inf (names the term and step).
        CheckpointError: resuming from a missing, damaged or incompatible checkpoint, or starting a
            fresh run in a folder that already holds checkpoints.
    """
    recipe = TrainingRecipe(config, Path(output_dir), progress)
    finished = False
    try:
        recipe.setup(resume)
        final = recipe.train()
        finished = True
        return final
    finally:
        recipe.cleanup(finished)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier of update ``step``: linear warmup to 1 over ``warmup`` updates, then a
    cosine to 0 at ``total`` (so the last update still has a small non-zero rate)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def total_steps(config: Config) -> int:
    """Optimizer steps of the whole run: the reconstruction stage, then the QA stage."""
    return config.pretrain.steps + config.train.steps


def stage_of(step: int, config: Config) -> Stage:
    """The stage optimizer step ``step`` (0-based, global) belongs to."""
    return Stage.RECONSTRUCT if step < config.pretrain.steps else Stage.QA


def stage_lr_factor(step: int, config: Config) -> float:
    """Multiplier of ``train.lr`` at global step ``step``: each stage has its own :func:`lr_factor`
    schedule over its own steps; the reconstruction stage peaks at ``pretrain.lr`` (default train.lr)."""
    pretrain, qa = config.pretrain, config.train
    if step < pretrain.steps:
        peak = (pretrain.lr or qa.lr) / qa.lr
        return peak * lr_factor(step, pretrain.warmup_steps, pretrain.steps)
    return lr_factor(step - pretrain.steps, qa.warmup_steps, qa.steps)


def interlingua_spec(config: Config, lms: dict, encoder) -> InterlinguaSpec:
    """The learned modules' shapes for ``config`` and the loaded frozen models."""
    d_sem = encoder.token_dim if config.interlingua.anchor == AnchorKind.TOKENS else encoder.dim
    return InterlinguaSpec(
        models=[frozen_model_info(lm) for lm in lms.values()], encoder=config.encoder, d_sem=d_sem,
        interlingua=config.interlingua,
    )


def initial_model(config: Config, lms: dict, encoder) -> InterlinguaModel:
    """The learned modules at step 0: random (``interlingua.design=pooled``, the seed) or the fitted
    vocabulary bridge with zero-initialised residual branches (``native``; the fit is cached)."""
    spec = interlingua_spec(config, lms, encoder)
    if config.interlingua.design != Design.NATIVE:
        return InterlinguaModel(spec)
    from interlingua.models.bridge.fit import BridgeSettings, load_or_fit_bridge
    from interlingua.models.native import NativeInterlingua

    return NativeInterlingua(spec, load_or_fit_bridge(lms, BridgeSettings.of(config)))


def starting_model(config: Config, lms: dict, encoder, fit_wire: bool = True) -> InterlinguaModel:
    """:func:`initial_model`, then the matching tensors of ``train.init_from`` when it is set; a narrow wire
    (``interlingua.d_wire``) that does not come from there is then fitted on the z this model starts with
    (``fit_wire=False``: not, for a caller that loads every tensor from a checkpoint next, e.g. a resumed run)."""
    model = initial_model(config, lms, encoder)
    copied: list[str] = []
    if config.train.init_from:
        from interlingua.training.init import initialise_from

        copied = initialise_from(model, config.train.init_from)["copied"]
    if fit_wire and getattr(model, "wire", None) is not None and not any(n.startswith("wire.") for n in copied):
        from interlingua.training import init

        init.fit_wire(model, lms, encoder, config)
    return model


def interlingua_teacher(config: Config, lms: dict, encoder) -> Interlingua:
    """``loss.w_kd_z``: the ``train.init_from`` checkpoint, frozen, reading the same frozen models (its
    receivers attach their vocabularies) with the wire's exact z (no quantisation-aware rounding)."""
    device = next(iter(lms.values())).device
    teacher = InterlinguaModel.from_pretrained(config.train.init_from).to(device).eval().requires_grad_(False)
    log.info("loss.w_kd_z=%g: KD from the interlingua of %s (fingerprint %s)", config.loss.w_kd_z,
             config.train.init_from, teacher.fingerprint())
    return Interlingua(teacher, lms, encoder)


class TrainingRecipe:
    """One training run; :func:`train` drives it. Attributes are set by :meth:`setup`."""

    def __init__(self, config: Config, output_dir: Path, progress: bool = True):
        if len(config.models) < 2:
            raise ConfigError(f"training needs at least two models, got {len(config.models)}; add one under models")
        self.config, self.output_dir = config, output_dir
        on_cpu = resolve_device(config.runtime.device).type == "cpu"
        # Without a token loss (L_gen, L_kd, L_rec) the adapters get no gradient; DDP must then look for
        # unused parameters. The reconstruction stage always trains L_rec.
        loss = config.loss
        adapters_unused = not (loss.w_gen or loss.w_kd or loss.w_rec)
        self.accelerator = Accelerator(
            cpu=on_cpu, mixed_precision="no" if on_cpu else "bf16",  # DESIGN §4.8: fp32 on CPU, bf16 autocast on CUDA
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=adapters_unused)],
        )
        per_process = config.train.batch_size // self.accelerator.num_processes
        if loss.w_nce and per_process < 2:
            raise ConfigError(
                f"loss.w_nce > 0 takes its negatives from the micro-batch, which has train.batch_size / "
                f"processes = {per_process} example(s); raise train.batch_size to at least 2 per process "
                "or set loss.w_nce=0"
            )
        if config.runtime.shard_frozen:
            check_can_shard(self.accelerator.num_processes)  # before loading the models, not after
        self.is_main = self.accelerator.is_main_process
        self.progress = progress and self.is_main
        self.step = 0
        self.bar = self.metrics = self._rng_after_setup = None
        self.sharded_layers: list = []

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        cfg, acc = self.config, self.accelerator
        seed_everything(cfg.runtime.seed)
        self._check_output_dir(resume)
        self.lms, encoder = load_frozen_models(cfg, acc.device, frozen_dtype(acc.device, cfg.runtime.dtype))
        self.embedding_rms = {key: lm.embedding_rms for key, lm in self.lms.items()}
        model = starting_model(cfg, self.lms, encoder, fit_wire=not resume).to(acc.device)  # resume: restored below
        self.system = Interlingua(model, self.lms, encoder, cfg)  # compression.qat: soft prompts read the wire z
        sharded = cfg.runtime.shard_frozen
        # cached KD teachers and anchors (cache.*); fingerprinted from the whole weights, so before sharding
        self.caches = install_caches(self.system, cfg, partial(any_process, device=acc.device) if sharded else None)
        if sharded:
            self.sharded_layers = shard_frozen_layers(self.lms.values(), acc.device)
            log.info("runtime.shard_frozen: %d decoder layers sharded over %d processes; local share of the "
                     "frozen decoder layers' weights: %.2f", len(self.sharded_layers), acc.num_processes,
                     local_share(self.sharded_layers))
        if cfg.loss.w_kd_z:
            object.__setattr__(self.system, "interlingua_teacher", interlingua_teacher(cfg, self.lms, encoder))
        forward = self.system
        optimizer = torch.optim.AdamW(forward.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        # Not prepared: accelerate would step a prepared scheduler once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(stage_lr_factor, config=cfg))
        if resume:
            self._resume(model, optimizer)
        # Only the learned modules are prepared (DDP-wrapped with several processes).
        self.forward, self.optimizer = acc.prepare(forward, optimizer)
        examples = load_squad("train", cfg.data.source, cfg.data.train_limit, cfg.data.seed)
        self.stream = TrainingStream(
            examples, [lm.tokenizer for lm in self.lms.values()], cfg.data.max_prompt_tokens,
            cfg.train.batch_size, cfg.train.grad_accum, cfg.data.seed, cfg.data.bucket_window,
            conditioning=cfg.interlingua.conditioning,
        )
        self.stream.micro_batches(0, acc.process_index, acc.num_processes)  # fail early on a bad split
        if self.is_main:
            info = run_info(cfg, "train")
            prepare_run_dir(cfg, self.output_dir)
            write_json(self.output_dir / RUN_INFO_FILE, info)
            self.metrics = MetricsLog(self.output_dir / METRICS_LOG_FILE, start_step=self.step)
        self.bar = tqdm(total=total_steps(cfg), initial=self.step, desc="train", unit="step",
                        disable=not self.progress, dynamic_ncols=True)
        if self._rng_after_setup is not None:
            set_rng_state(self._rng_after_setup)  # last: setup itself draws random numbers (model init)

    def _check_output_dir(self, resume: bool) -> None:
        latest = latest_checkpoint(self.output_dir)
        if resume and latest is None:
            raise CheckpointError(
                f"--resume: {self.output_dir} has no checkpoint (no 'latest' file); run without --resume"
            )
        if not resume and latest is not None:
            raise CheckpointError(
                f"{self.output_dir} already holds checkpoints (latest: {latest.name}); "
                "pass --resume to continue that run, or choose another --output-dir"
            )
        if resume:  # before loading any model: a mismatch found after loading two 8B models wastes minutes
            check_same_config(read_spec(latest), self.config, latest)

    def _resume(self, model: InterlinguaModel, optimizer: torch.optim.Optimizer) -> None:
        directory = latest_checkpoint(self.output_dir)
        state = restore_checkpoint(directory, model, optimizer, self.scheduler)
        self.step = state["step"]
        if self.step > total_steps(self.config):
            raise CheckpointError(
                f"{directory} is past pretrain.steps + train.steps = {total_steps(self.config)}; raise train.steps"
            )
        _warn_config_changes(state["config"], self.config)
        rngs, acc = state["rng"], self.accelerator
        if len(rngs) == acc.num_processes:
            self._rng_after_setup = rngs[acc.process_index]
        else:
            log.warning("checkpoint saved by %d processes, resumed by %d: RNG streams are reseeded, not restored",
                        len(rngs), acc.num_processes)
        log.info("resuming from %s (step %d)", directory, self.step)

    # ---- train ------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Run the remaining optimizer steps; returns the final checkpoint folder."""
        cfg, total = self.config.train, total_steps(self.config)
        for step in range(self.step, total):
            started = time.perf_counter()
            terms, diagnostics = self._forward_backward(step)
            grad_norm = self._clip_gradients(step)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step + 1
            self._log(step, lr, terms, grad_norm, diagnostics, time.perf_counter() - started)
            if self.step % cfg.save_every == 0 or self.step in (total, self.config.pretrain.steps):
                self.save_checkpoint()
        return checkpoint_dir(self.output_dir, total)

    def _forward_backward(self, step: int) -> tuple[dict[str, float], dict | None]:
        """Forward + backward of this process's micro-batches of ``step``; gradients accumulate.

        Returns:
            The loss terms of the global batch (summed over micro-batches and processes) and, on
            logged steps, the collapse diagnostics of the first micro-batch.
        """
        acc = self.accelerator
        micro_batches = self.stream.micro_batches(step, acc.process_index, acc.num_processes)
        cfg = self.config
        rec_tokens = cfg.pretrain.tokens if stage_of(step, cfg) == Stage.RECONSTRUCT or cfg.loss.w_rec else 0
        texts = [item.sender for item in self.stream.global_batch(step)] if rec_tokens else None
        norm = loss_norm(self.lms, self.stream.global_answers(step), cfg.loss.k_tokens, texts, rec_tokens)
        sums: dict[str, float] = {}
        diagnostics = None
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with nullcontext() if last else acc.no_sync(self.forward):  # all-reduce once per step
                out = self._micro_batch_loss(step, micro, norm)
                # DDP averages gradients over processes, but each process's loss is already its share
                # of the global batch's loss: the sum over processes is wanted, hence × world size.
                acc.backward(out.total * acc.num_processes)
            sums = {name: sums.get(name, 0.0) + value for name, value in out.terms.items()}
            if diagnostics is None and self._logs(step):
                diagnostics = model_diagnostics(out, self.embedding_rms)
        names = sorted(sums)
        summed = acc.reduce(torch.tensor([sums[n] for n in names], device=acc.device), "sum")
        return dict(zip(names, summed.tolist())), diagnostics

    def _micro_batch_loss(self, step: int, micro: MicroBatch, norm: LossNorm) -> StepLoss:
        """:func:`batch_loss` of one micro-batch; every process stops if any one hits a NaN/inf term."""
        out, error = None, None
        try:
            with self.accelerator.autocast():
                out = batch_loss(self.system, self.forward, micro, stage_of(step, self.config), self.config.loss,
                                 norm, rec_tokens=self.config.pretrain.tokens)
        except FloatingPointError as err:
            error = str(err)
        errors = [e for e in gather_object([error]) if e]  # a lone process raising would hang the others
        if errors:
            raise self._diverged(step, errors[0])
        return out

    def _clip_gradients(self, step: int) -> float:
        """Clip to ``train.grad_clip`` (0 = only measure) and return the global gradient norm."""
        max_norm = self.config.train.grad_clip or math.inf
        norm = float(self.accelerator.clip_grad_norm_(self.forward.parameters(), max_norm))
        if not math.isfinite(norm):
            raise self._diverged(step, f"the gradient norm is {norm}")
        return norm

    def _diverged(self, step: int, what: str) -> TrainingDivergedError:
        latest = latest_checkpoint(self.output_dir)
        kept = f"the last good checkpoint, {latest}, is kept" if latest else "no checkpoint had been written yet"
        return TrainingDivergedError(
            f"training stopped at step {step} (update {step + 1} of {total_steps(self.config)}): {what}; "
            f"{kept} and nothing was saved after it. Lower train.lr, raise train.warmup_steps or set "
            "train.grad_clip, then continue with --resume."
        )

    def _logs(self, step: int) -> bool:
        """Every ``train.log_every`` steps, the first step of each stage and the last step."""
        cfg = self.config
        return step % cfg.train.log_every == 0 or step in (total_steps(cfg) - 1, cfg.pretrain.steps)

    def _log(
        self, step: int, lr: float, terms: dict, grad_norm: float, diagnostics: dict | None, seconds: float
    ) -> None:
        self.bar.set_postfix({name: f"{value:.4g}" for name, value in terms.items()}, refresh=False)
        self.bar.update(1)
        if self.is_main and self._logs(step):
            self.metrics.write({
                "step": step, "stage": stage_of(step, self.config).value, "lr": lr, "loss": terms,
                "grad_norm": grad_norm,
                "examples_per_s": self.stream.global_batch_size / seconds, "models": diagnostics,
            })

    # ---- save_checkpoint ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``step_<self.step>/`` (main process) with every process's RNG state; all processes wait."""
        acc = self.accelerator
        for store in self.caches:
            store.flush()
        rngs = gather_object([rng_state()])  # one per process, in process order
        if acc.is_main_process:
            state = {
                "step": self.step, **self.stream.position(self.step), "num_train_examples": len(self.stream.examples),
                "world_size": acc.num_processes, "config": config_to_dict(self.config), "rng": rngs,
            }
            model = acc.unwrap_model(self.forward).model
            save_checkpoint(self.output_dir, model, self.optimizer.optimizer, self.scheduler, state)
            prune_checkpoints(self.output_dir, self.config.train.keep_checkpoints)
        acc.wait_for_everyone()
        return checkpoint_dir(self.output_dir, self.step)

    # ---- cleanup ------------------------------------------------------------------------------------
    def cleanup(self, finished: bool) -> None:
        """Close the bar and the log; after a clean finish, wait for every process and end the group."""
        if self.bar is not None:
            self.bar.close()
        for store in getattr(self, "caches", []):
            store.flush()  # also after an error: the teachers computed so far are still right
            log.info("cache %s", store.stats())
        if self.sharded_layers:  # still 1/N after the forwards and backwards of training, or sharding failed
            log.info("runtime.shard_frozen: local share of the frozen decoder layers' weights at the end: %.2f",
                     local_share(self.sharded_layers))
        if self.metrics is not None:
            self.metrics.close()
            log_path = self.output_dir / METRICS_LOG_FILE
            if log_path.stat().st_size:  # also after an error: the curves up to it help the diagnosis
                plot_training_curves(log_path, self.output_dir / TRAINING_CURVES_PLOT)
        if finished:  # after an error another process may never arrive: do not wait for it
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()


def _warn_config_changes(saved: dict | Config, current: dict | Config) -> None:
    """Log the settings of the training run (``TRAINING_RUN`` in :mod:`interlingua.settings`) a resumed run
    changes: the resume is then not exact. The checkpoint's shapes were checked before (an error)."""
    for difference in settings_differences(Artifact.TRAINING_RUN, saved, current):
        log.warning("resumed run changes %s (checkpoint -> now)", difference)
