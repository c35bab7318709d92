"""Typed configuration for every command: dataclass defaults <- YAML file <- command-line overrides.

    cfg = load_config("embedded", ["train.lr=1e-4", "models.1.prompt_format=raw"])

A config name is looked up as a path first, then as ``configs/<name>.yaml`` in the current directory,
then in the ``configs/`` folder shipped next to the package source. Unknown keys and bad values raise
:class:`ConfigError` naming the key to change. A config file may start from another one with
``extends: NAME`` and change some of its keys (``configs/embedded-full.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from interlingua.errors import ConfigError

log = logging.getLogger(__name__)


class PromptFormat(str, Enum):
    AUTO = "auto"  # chat template when the tokenizer has one, raw text otherwise
    RAW = "raw"
    CHAT = "chat"


class Pooling(str, Enum):
    MEAN = "mean"  # seed: masked mean over token states -> one vector
    QUERIES = "queries"  # M learned queries cross-attend over the token states


class AnchorKind(str, Enum):
    SENTENCE = "sentence"  # seed: one pooled sentence embedding (single key; degenerate attention)
    TOKENS = "tokens"  # the sentence encoder's token states as keys


class Conditioning(str, Enum):
    FULL = "full"  # seed: the whole prompt (context + question) travels through z
    HYBRID = "hybrid"  # the context travels through z; the receiver reads the question as text


class Positions(str, Enum):
    NONE = "none"  # seed: the aligner sees a prompt as a set of tokens (permutation invariant)
    SINUSOIDAL = "sinusoidal"  # fixed sinusoidal position encodings added after the input projection


class Design(str, Enum):
    POOLED = "pooled"  # the seed's design (DESIGN §3): a learned bottleneck from random init
    NATIVE = "native"  # DESIGN §8: token-level z through the fitted vocabulary bridge, residual learning


class NativeDecoder(str, Enum):
    VOCAB = "vocab"  # attention over the receiver's own vocabulary embeddings (top-k, learned temperature)
    LINEAR = "linear"  # the fitted linear map Q_m


class PoolMode(str, Enum):
    WINDOW = "window"  # k neighbours -> one vector, learnable weights that start as the mean
    PREFIX = "prefix"  # the first ceil(T / k) positions of the refined z; the refiner sees all T


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"
    VOCAB = "vocab"
    """Native design only: each z position as its nearest vocabulary key's id in every model, and its norm
    (:mod:`interlingua.codec.vocabulary`)."""


@dataclass
class ModelConfig:
    """One frozen LLM."""

    spec: str = "???"
    """Hub id, local directory, ``.gguf`` file, or embedded name (see ``interlingua models``)."""
    prompt_format: PromptFormat = PromptFormat.AUTO
    """How the text baselines and the KD teacher see the prompt: ``raw``, ``chat`` or ``auto``."""


@dataclass
class DataConfig:
    """Where SQuAD v1.1 comes from and how much of it is used."""

    source: str = "auto"
    """``auto`` ($INTERLINGUA_SQUAD_DIR if set, else the hub), ``hub``, or a JSON file / folder."""
    train_limit: Optional[int] = 2000
    """Training examples taken (after the seeded shuffle); null = all."""
    seed: int = 0
    """Seed of the deterministic example order."""
    max_prompt_tokens: int = 1024
    """Contexts are cut so a text prompt never exceeds this many tokens (counted in metrics)."""
    bucket_window: int = 0
    """Training batches sorted by prompt length within windows of this many global batches (less
    padding); 0 = off (the seed's plain shuffled order)."""

    def __post_init__(self) -> None:
        if self.train_limit is not None and self.train_limit <= 0:
            raise ConfigError(f"data.train_limit must be positive or null, got {self.train_limit}")
        if self.bucket_window < 0:
            raise ConfigError(f"data.bucket_window must be >= 0 (0 = off), got {self.bucket_window}")
        if self.max_prompt_tokens < 32:
            raise ConfigError(f"data.max_prompt_tokens must be >= 32, got {self.max_prompt_tokens}")


@dataclass
class InterlinguaConfig:
    """Shape of the learned interlingua (DESIGN §3)."""

    d_inter: int = 512
    """Width of the shared space."""
    num_slots: int = 32
    """M: soft tokens each adapter produces."""
    n_heads: int = 8
    """Attention heads in the cross-attention and refinement layers."""
    n_cross_layers: int = 4
    """Cross-attention blocks from token states to the anchor."""
    n_refine_layers: int = 2
    """TransformerEncoder layers after cross-attention."""
    dropout: float = 0.0
    """Dropout inside the learned modules."""
    pooling: Pooling = Pooling.MEAN
    """``mean`` (seed) or ``queries``."""
    anchor: AnchorKind = AnchorKind.SENTENCE
    """``sentence`` (seed, one key) or ``tokens`` (encoder token states as keys)."""
    positions: Positions = Positions.NONE
    """``none`` (seed: no positions, z depends on the multiset of tokens only) or ``sinusoidal`` (token
    order reaches z, which reconstruction and answers that depend on word order need)."""
    conditioning: Conditioning = Conditioning.FULL
    """``full`` (seed: z carries the whole prompt, the receiver reads ``[BOS?] + soft prompt + "\\nAnswer:"``)
    or ``hybrid`` (z carries ``Context: …`` only; the receiver reads ``[BOS?] + soft prompt +
    "\\nQuestion: …\\nAnswer:"``)."""

    design: Design = Design.POOLED
    """``pooled`` (the seed's learned bottleneck, DESIGN §3) or ``native`` (DESIGN §8: token-level z in the
    space fitted on the models' shared vocabulary; the keys below apply to it)."""
    pool_window: str = "1"
    """native: ``1`` (one z vector per sender token, 1.0x), ``k`` (k consecutive vectors pooled with
    learnable weights that start as the mean) or ``all`` (one vector: the seed's pool)."""
    pool_mode: PoolMode = PoolMode.WINDOW
    """native, ``pool_window`` k > 1: how T positions become ceil(T / k). ``window``: each k consecutive
    vectors pooled (weights start as the mean, which carries little: docs/compression.md). ``prefix``: the first
    ceil(T / k) positions of the refined z are kept; the refiner attends over all T positions, so training
    can move what the dropped positions held into the kept ones, and at the start the kept positions read
    exactly as the uncompressed z's first ones do."""
    d_wire: Optional[int] = None
    """native: width of the message on the wire (None: ``d_inter``). A narrower wire keeps the whole
    ``d_inter``-wide model: the sender maps z through the top ``d_wire`` principal directions of the starting
    model's z, whitened (fitted in closed form on ``wire_fit_examples`` training prompts wherever the tensors
    do not come from ``train.init_from``), and every receiver maps it back before its head; both maps train."""
    wire_fit_examples: int = 512
    """native, ``d_wire``: training prompts whose z (every sender, every kept position) the wire's PCA is fitted on."""
    decoder: NativeDecoder = NativeDecoder.VOCAB
    """native: how a receiver turns z into soft tokens: ``vocab`` (attention over its own vocabulary
    embeddings) or ``linear`` (the fitted map Q_m)."""
    vocab_top_k: int = 8
    """native, ``decoder=vocab``: candidate tokens per z vector."""
    vocab_temperature: float = 0.01
    """native, ``decoder=vocab``: starting softmax temperature over cosine scores (learned)."""
    train_maps: bool = True
    """native: train the fitted encoder / linear decoder maps (false: only the residual branches learn)."""
    bridge_ridge: float = 1e-2
    """native: ridge strength of the closed-form vocabulary fit (relative to the mean squared input)."""

    @property
    def pool_size(self) -> int | None:
        """``pool_window`` as a number of vectors per pooled vector; None = the whole prompt."""
        return None if str(self.pool_window) == "all" else int(self.pool_window)

    def __post_init__(self) -> None:
        for key in ("d_inter", "num_slots", "n_heads"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"interlingua.{key} must be positive, got {getattr(self, key)}")
        native = self.design == Design.NATIVE
        if self.n_cross_layers < (0 if native else 1):
            raise ConfigError(f"interlingua.n_cross_layers must be {'>= 0' if native else 'positive'}, "
                              f"got {self.n_cross_layers}")
        if self.n_refine_layers < 0:
            raise ConfigError(f"interlingua.n_refine_layers must be >= 0, got {self.n_refine_layers}")
        window = str(self.pool_window)
        if window != "all" and not (window.isdigit() and int(window) >= 1):
            raise ConfigError(f"interlingua.pool_window must be a positive integer or 'all', got {self.pool_window!r}")
        if self.vocab_top_k <= 0 or not self.vocab_temperature > 0 or not self.bridge_ridge > 0:
            raise ConfigError("interlingua.vocab_top_k, vocab_temperature and bridge_ridge must be positive")
        if self.d_inter % self.n_heads:
            raise ConfigError(
                f"interlingua.d_inter ({self.d_inter}) must be divisible by interlingua.n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"interlingua.dropout must be in [0, 1), got {self.dropout}")
        if self.d_wire is not None:
            if not native:
                raise ConfigError("interlingua.d_wire narrows the native design's message; this interlingua is "
                                  f"{self.design.value} (its width is interlingua.d_inter): drop interlingua.d_wire")
            if isinstance(self.d_wire, bool) or not 1 <= self.d_wire < self.d_inter:
                raise ConfigError(f"interlingua.d_wire must be between 1 and d_inter - 1 = {self.d_inter - 1}, got "
                                  f"{self.d_wire!r} (leave it unset, null, for a message of the full width d_inter)")
        if self.wire_fit_examples <= 0:
            raise ConfigError(f"interlingua.wire_fit_examples must be positive, got {self.wire_fit_examples}")


@dataclass
class LossConfig:
    """L = w_gen·L_gen + w_align·L_align + w_sem·L_sem + w_kd·L_kd (DESIGN §3) [+ w_nce·L_nce + w_rec·L_rec
    + w_l1·L1]."""

    k_tokens: int = 4
    """K: answer tokens supervised by CE and KD."""
    w_gen: float = 1.0
    w_align: float = 0.5
    w_sem: float = 0.1
    w_kd: float = 0.3
    kd_temperature: float = 1.0
    """Softmax temperature of the KD term."""
    w_nce: float = 0.0
    """Contrastive alignment (InfoNCE across models, in-batch negatives); 0 = off (the seed)."""
    nce_temperature: float = 0.1
    """τ of the contrastive term's cosine logits."""
    w_rec: float = 0.0
    """L_rec (repeat the first ``pretrain.tokens`` tokens of the text from the soft prompt) as an extra
    term of the QA stage; 0 = off (the seed). The reconstruction stage (``pretrain.steps``) always
    weighs L_rec 1 and drops L_gen and L_kd."""
    w_l1: float = 0.0
    """L1 sparsity of z: the term ``l1`` = mean |z| over models and elements (a mean over the global batch
    like L_align); 0 = off, not computed. Stored configs' ``compression.l1`` is read as this key."""
    w_kd_z: float = 0.0
    """Native design: KD from the uncompressed interlingua, the term ``kd_z`` = τ²·KL(teacher ‖ student) at
    the answer positions, where the teacher is the same frozen receiver reading the same sender's z from the
    frozen ``train.init_from`` checkpoint (how a compressed shape learns from the one it starts from; that
    reader beats the text teacher by far). Needs ``train.init_from``; 0 = off."""

    def __post_init__(self) -> None:
        if self.k_tokens <= 0:
            raise ConfigError(f"loss.k_tokens must be positive, got {self.k_tokens}")
        for key in ("w_gen", "w_align", "w_sem", "w_kd", "w_nce", "w_rec", "w_l1", "w_kd_z"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        if self.kd_temperature <= 0:
            raise ConfigError(f"loss.kd_temperature must be positive, got {self.kd_temperature}")
        if self.nce_temperature <= 0:
            raise ConfigError(f"loss.nce_temperature must be positive, got {self.nce_temperature}")


@dataclass
class TrainConfig:
    """Optimisation."""

    steps: int = 250
    """Optimizer steps."""
    batch_size: int = 8
    """Examples per forward pass."""
    grad_accum: int = 1
    """Forward passes per optimizer step."""
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 25
    """Linear warmup, then cosine decay to zero."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    save_every: int = 50
    """Checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = 0
    """Keep only the newest N ``step_*/`` folders, deleting older ones after each save; 0 = keep all.
    A checkpoint with its optimizer state is ~150 MB for the embedded pair, so long runs fill disks."""
    log_every: int = 10
    """Collapse diagnostics and metrics every N optimizer steps (and at step 0)."""
    init_from: Optional[str] = None
    """A checkpoint (``step_N/``) of the same design and models whose learned modules start this run: every
    tensor whose name and shape match is copied, the rest keep their step-0 values (the fitted bridge at this
    ``d_inter``, zero-initialised residuals, window weights that start as the mean). How a compressed shape
    (``pool_window``, ``d_inter``) trains from the uncompressed checkpoint. ``--resume`` takes precedence."""

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"train.keep_checkpoints must be >= 0 (0 = keep every checkpoint), "
                              f"got {self.keep_checkpoints}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ConfigError(f"train.warmup_steps must be in [0, train.steps={self.steps}], got {self.warmup_steps}")


@dataclass
class PretrainConfig:
    """Reconstruction stage before the QA stage (as in ICAE / 500xCompressor): each frozen LLM must
    reproduce the start of the text from its soft prompt alone. Optimizer steps [0, steps) are this
    stage, [steps, steps + train.steps) the QA stage; the data stream simply continues."""

    steps: int = 0
    """Optimizer steps of the reconstruction stage; 0 = no stage (the seed)."""
    tokens: int = 32
    """R: the first R tokens of the text the aligner read are the reconstruction targets."""
    lr: Optional[float] = None
    """Peak learning rate of the stage; null = train.lr."""
    warmup_steps: int = 10
    """Linear warmup of the stage, then cosine decay to zero at its end."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"pretrain.steps must be >= 0 (0 = no reconstruction stage), got {self.steps}")
        if self.tokens <= 0:
            raise ConfigError(f"pretrain.tokens must be positive, got {self.tokens}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"pretrain.lr must be positive or null (= train.lr), got {self.lr}")
        if self.warmup_steps < 0 or (self.steps and self.warmup_steps > self.steps):
            raise ConfigError(
                f"pretrain.warmup_steps must be in [0, pretrain.steps={self.steps}], got {self.warmup_steps}"
            )


@dataclass
class EvalConfig:
    """Evaluation on the SQuAD v1.1 validation split (DESIGN §5)."""

    limit: Optional[int] = 1000
    """Validation examples (seeded order); below 1000 the report labels the run a smoke run."""
    batch_size: int = 16
    max_new_tokens: int = 16
    """Greedy decoding, cut at the first newline or EOS."""
    conditionings: List[str] = field(default_factory=lambda: ["hybrid", "full"])
    """native design: the ways every pair is evaluated: ``hybrid`` (the question as text after the soft
    tokens) and/or ``full`` (everything through z)."""
    decoders: List[str] = field(default_factory=list)
    """native design: receiver heads (``vocab``, ``linear``) to evaluate besides the checkpoint's own, on the
    same z and examples, each pair with its shuffled row and its paired ΔF1 against the own head."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditionings if c not in {m.value for m in Conditioning}]
        if unknown or not self.conditionings:
            raise ConfigError(f"eval.conditionings must list hybrid and/or full, got {list(self.conditionings)}")
        heads = {m.value for m in NativeDecoder}
        if any(str(getattr(d, "value", d)) not in heads for d in self.decoders):
            raise ConfigError(f"eval.decoders lists receiver heads of the native design ({', '.join(sorted(heads))}), "
                              f"got {list(self.decoders)}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"eval.limit must be positive or null, got {self.limit}")
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise ConfigError("eval.batch_size and eval.max_new_tokens must be positive")


@dataclass
class CompressionConfig:
    """Wire format of the interlingua (DESIGN §6)."""

    precision: Precision = Precision.FP32
    group_size: int = 32
    """Values sharing one scale in int8/int4."""
    qat: bool = False
    """Quantisation-aware training (straight-through estimator)."""

    def __post_init__(self) -> None:
        if self.group_size <= 0:
            raise ConfigError(f"compression.group_size must be positive, got {self.group_size}")


@dataclass
class CacheConfig:
    """Frozen work computed once per example and reused by later epochs and runs (docs/performance.md)."""

    teacher: bool = True
    """Cache the KD teacher's top-k targets (needs ``teacher_top_k > 0``)."""
    teacher_top_k: int = 256
    """k of the compact teacher (top-k logits + log-sum-exp); 0 = full-vocabulary KD recomputed every
    step (exact; the form the seed run used)."""
    anchor: bool = True
    """Cache the sentence encoder's anchors of training prompts."""
    dir: Optional[str] = None
    """Cache folder; default ``$INTERLINGUA_CACHE/frozen`` (else ``~/.cache/interlingua/frozen``)."""

    def __post_init__(self) -> None:
        if self.teacher_top_k < 0:
            raise ConfigError(f"cache.teacher_top_k must be >= 0, got {self.teacher_top_k}")
        if self.teacher and self.teacher_top_k == 0:
            raise ConfigError(
                "cache.teacher=true needs cache.teacher_top_k > 0 (full-vocabulary logits are not cached); "
                "set cache.teacher=false for exact full-vocabulary KD"
            )


FROZEN_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class RuntimeConfig:
    """Where and how things run."""

    device: str = "auto"
    """``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    dtype: str = "auto"
    """Weights of the frozen LLMs: ``auto`` (fp32 on CPU, bf16 on CUDA), ``float32`` or ``bfloat16``. The
    learned modules stay fp32 either way. On a CPU with AMX (Sapphire Rapids and newer) bf16 makes the
    native training step 1.5x faster but Gemma-3's decoding 3x slower (``benchmarks/frozen_dtype.py``);
    its F1 differs from fp32 by a few tenths, so compare rows of one dtype only (baseline reuse and native
    passes check it)."""
    seed: int = 0
    output_dir: Optional[str] = None
    """Run folder; default ``runs/<config name>/<command>``."""
    gradient_checkpointing: bool = False
    """Recompute the frozen LLMs' layer activations in the backward pass instead of storing them
    (less memory for long prompts / large models, ~1/3 more compute)."""
    shard_frozen: bool = False
    """Training under ``accelerate launch`` with N >= 2 processes: shard every decoder layer of the
    frozen LLMs across the processes (FSDP2), so each holds 1/N of their weights (frozen models too
    large to replicate per GPU, e.g. the 8B pair on GPUs under ~48 GB). Same updates as unsharded."""

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in FROZEN_DTYPES:
            raise ConfigError(f"runtime.dtype must be one of {', '.join(FROZEN_DTYPES)}, got {self.dtype!r}")


@dataclass
class Config:
    """A whole run."""

    name: str = "unnamed"
    models: List[ModelConfig] = field(default_factory=list)
    """The frozen LLMs (N >= 1 for baselines, N >= 2 to train an interlingua)."""
    encoder: str = "all-minilm-l6-v2"
    """Frozen sentence encoder that gives the semantic anchor."""
    data: DataConfig = field(default_factory=DataConfig)
    interlingua: InterlinguaConfig = field(default_factory=InterlinguaConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Optional reconstruction stage before ``train`` (pretrain.steps = 0: none)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models is empty: list at least one model, e.g. models: [{spec: smollm2-135m-instruct}]")
        specs = [m.spec for m in self.models]
        if "???" in specs:
            raise ConfigError("every entry of models needs a spec (models.N.spec)")
        if len(set(specs)) != len(specs):
            raise ConfigError(f"models lists the same spec twice: {specs}")
        if self.loss.w_kd_z and (self.interlingua.design != Design.NATIVE or not self.train.init_from):
            raise ConfigError(f"loss.w_kd_z={self.loss.w_kd_z} distils from the interlingua of train.init_from: it "
                              "needs interlingua.design=native and train.init_from=RUN/step_N (or set loss.w_kd_z=0)")
        vocab = Precision(self.compression.precision) == Precision.VOCAB
        vocab_readers = self.interlingua.design == Design.NATIVE and self.interlingua.decoder == NativeDecoder.VOCAB
        if vocab and not vocab_readers:
            raise ConfigError("compression.precision=vocab sends each z position as vocabulary ids, which only the "
                              "native design's vocabulary heads read: it needs interlingua.design=native and "
                              "interlingua.decoder=vocab (or pick fp16 / int8 / int4)")
        if vocab and self.interlingua.d_wire is not None:
            raise ConfigError(f"compression.precision=vocab sends d_inter-wide positions as vocabulary ids; "
                              f"interlingua.d_wire={self.interlingua.d_wire} narrows them first: drop one of the two")

    def output_dir(self, command: str) -> Path:
        return Path(self.runtime.output_dir or Path("runs") / self.name / command)


SHIPPED_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def find_config_file(name_or_path: str) -> Path:
    """Resolve a config name or path to an existing YAML file."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates += [Path("configs") / f"{name_or_path}.yaml", SHIPPED_CONFIG_DIR / f"{name_or_path}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in SHIPPED_CONFIG_DIR.glob("*.yaml")) if SHIPPED_CONFIG_DIR.is_dir() else []
    raise ConfigError(
        f"config {name_or_path!r} not found (looked at {', '.join(str(c) for c in candidates)}); "
        f"shipped configs: {', '.join(shipped) or 'none found'}"
    )


def parse_override(text: str) -> tuple[str, object]:
    """``'train.lr=3e-4'`` -> ``('train.lr', '3e-4')``; the value is parsed as YAML (OmegaConf casts it)."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def _key_of(err: OmegaConfBaseException) -> str:
    return getattr(err, "full_key", None) or "?"


def load_config(name_or_path: str, overrides: Optional[List[str]] = None) -> Config:
    """Load a config by name or path and apply ``key=value`` overrides.

    A config file may start from another one: ``extends: NAME`` (a config name or YAML path, looked up
    next to the file first) takes that file's keys, and the file's own keys change them (nested keys
    merge, a list replaces the whole list).

    Raises:
        ConfigError: unknown key, wrong type, invalid value, missing file, or an ``extends`` cycle; the
            message names the key.
    """
    path = find_config_file(name_or_path)
    return _build_config(_read_config_file(path), overrides, str(path))


def config_from_mapping(
    data, overrides: Optional[List[str]] = None, origin: str = "config", relative_to: Optional[Path] = None
) -> Config:
    """A config written as a mapping the way a config file is (``extends: NAME`` plus nested keys), plus
    ``key=value`` overrides: e.g. the ``base:`` section of a sweep file.

    Args:
        data: a dict or OmegaConf mapping.
        overrides: ``key=value`` strings applied on top.
        origin: names the source of ``data`` in error messages.
        relative_to: the folder a relative ``extends`` path is looked up in first (None: as ``--config``).
    Raises:
        ConfigError: as :func:`load_config`.
    """
    node = data if OmegaConf.is_config(data) else OmegaConf.create(data)
    return _build_config(resolve_extends(node, origin, relative_to), overrides, origin)


EXTENDS_KEY = "extends"
"""The key of a config file (or a sweep's ``base:``) naming the config it starts from."""


def resolve_extends(node, origin: str, relative_to: Optional[Path] = None, _chain: tuple = ()):
    """``node`` merged over the config its ``extends`` names (recursively), without the ``extends`` key.

    Raises:
        ConfigError: ``extends`` is not a string, names no config file, or the files extend each other.
    """
    if not OmegaConf.is_dict(node) or node.get(EXTENDS_KEY) is None:
        if OmegaConf.is_dict(node) and EXTENDS_KEY in node:
            node = OmegaConf.masked_copy(node, [k for k in node.keys() if k != EXTENDS_KEY])
        return node
    parent = node[EXTENDS_KEY]
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{origin}: extends must name a config (a name such as embedded, or a YAML path), "
                          f"got {parent!r}")
    path = _extended_file(parent, origin, relative_to)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{origin}: extends forms a cycle ({cycle})")
    base = _read_config_file(path, (*_chain, path.resolve()))
    own = OmegaConf.masked_copy(node, [k for k in node.keys() if k != EXTENDS_KEY])
    try:
        return OmegaConf.merge(base, own)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{origin}: bad key {_key_of(err)!r} over {path}: {_first_line(err)}") from None


def _extended_file(name: str, origin: str, relative_to: Optional[Path]) -> Path:
    if relative_to is not None:
        beside = relative_to / name if name.endswith((".yaml", ".yml")) else relative_to / f"{name}.yaml"
        if beside.is_file():
            return beside
    try:
        return find_config_file(name)
    except ConfigError as err:
        raise ConfigError(f"{origin}: extends: {err}") from None


def _read_config_file(path: Path, chain: tuple = ()):
    """The YAML mapping of a config file with its ``extends`` resolved."""
    try:
        from_file = OmegaConf.load(path)
    except Exception as err:  # yaml errors of several kinds
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return resolve_extends(from_file, str(path), path.parent, chain or (path.resolve(),))


LEGACY_KEYS = {"compression.l1": "loss.w_l1"}
"""Keys that moved: old dotted key -> new one. Stored configs (checkpoints, results/) and overrides that
use the old key are read as the new one, with a log line."""
_LEGACY_LOGGED: set = set()


def _upgrade_legacy_keys(source, origin: str):
    """``source`` with every key of :data:`LEGACY_KEYS` moved to its new place (a copy if any moved).

    Raises:
        ConfigError: both the old and the new key are set, to different values.
    """
    if not OmegaConf.is_dict(source):
        return source
    for old, new in LEGACY_KEYS.items():
        value = OmegaConf.select(source, old, default=_MISSING)
        if value is _MISSING:
            continue
        current = OmegaConf.select(source, new, default=_MISSING)
        if current is not _MISSING and current != value:
            raise ConfigError(f"{origin}: {old}={value} and {new}={current} are both set; {old} is the old name "
                              f"of {new}: keep {new} only")
        source = copy.deepcopy(source)
        section, _, key = old.rpartition(".")
        OmegaConf.select(source, section).pop(key)
        OmegaConf.update(source, new, value, merge=True)
        _log_legacy(f"{origin}: {old} is now {new}; read {old}={value} as {new}={value}", bool(value))
    return source


def _upgrade_legacy_override(text: str) -> str:
    key, sep, value = text.partition("=")
    old = key.strip().removeprefix("--")
    if sep and old in LEGACY_KEYS:
        _log_legacy(f"override {text!r}: {old} is now {LEGACY_KEYS[old]}", True)
        return f"{LEGACY_KEYS[old]}={value}"
    return text


def _log_legacy(message: str, warn: bool) -> None:
    """Once per process and level: a warning where the old key changes something, else an info line."""
    if warn not in _LEGACY_LOGGED:
        _LEGACY_LOGGED.add(warn)
        log.log(logging.WARNING if warn else logging.INFO, message)


_MISSING = object()


def config_from_dict(data: dict, overrides: Optional[List[str]] = None, origin: str = "config") -> Config:
    """A config from a plain dict (e.g. the one stored in a checkpoint) plus ``key=value`` overrides.

    Args:
        data: nested dict as written by :func:`config_to_dict`.
        overrides: ``key=value`` strings applied on top.
        origin: names the source of ``data`` in error messages.
    Raises:
        ConfigError: as :func:`load_config`.
    """
    return _build_config(OmegaConf.create(data), overrides, origin)


def _build_config(source, overrides: Optional[List[str]], origin: str) -> Config:
    """Dataclass defaults <- ``source`` (an OmegaConf node) <- overrides, validated."""
    source, overrides = _upgrade_legacy_keys(source, origin), [_upgrade_legacy_override(t) for t in overrides or []]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), source)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{origin}: bad key {_key_of(err)!r}: {_first_line(err)}") from None
    for text in overrides or []:
        key, value = parse_override(text)
        if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
            raise ConfigError(f"override {text!r}: unknown key {key!r}; {_known_keys_hint(merged, key)}")
        try:
            OmegaConf.update(merged, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {text!r}: bad value for {key!r}: {_first_line(err)}") from None
    try:
        config = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise ConfigError(f"{origin}: bad value for {_key_of(err)!r}: {_first_line(err)}") from None
    assert isinstance(config, Config)
    return config


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _known_keys_hint(merged, key: str) -> str:
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(merged, parent) if parent else merged
    if OmegaConf.is_dict(node):
        return f"keys under {parent or 'the top level'}: {', '.join(str(k) for k in node.keys())}"
    return "see `interlingua config --config NAME` for the full list"


def to_plain(obj) -> dict:
    """A config dataclass (a whole :class:`Config`, a section, a checkpoint spec) as plain JSON/YAML values.

    Serialised through OmegaConf with the dataclass as schema; enums are written as their values
    (``hybrid``), as a user writes them (``OmegaConf.to_container(enum_to_str=True)`` would write their
    names, which older files hold and which still read: see :func:`from_plain`).
    """
    return _enum_values(OmegaConf.to_container(OmegaConf.structured(obj), enum_to_str=False))


def from_plain(schema: type, data: dict):
    """``data`` read into the dataclass ``schema`` through OmegaConf: keys absent from ``data`` take the
    dataclass defaults, enums read from their values or their names (older files), types are checked.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or one the dataclass rejects.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise ConfigError(f"bad key {_key_of(err)!r}: {_first_line(err)}") from None


def config_to_dict(config: Config) -> dict:
    """Plain dict for JSON/YAML output (run info, trainer state, config.yaml); see :func:`to_plain`."""
    return to_plain(config)


def normalised_config_dict(stored: dict) -> dict:
    """A stored config dict as :func:`config_to_dict` writes it today (older checkpoints stored enum
    names such as ``HYBRID`` and lack newer keys); a dict that no longer loads is returned unchanged."""
    try:
        return config_to_dict(config_from_dict(stored))
    except ConfigError:
        return stored


def _enum_values(node):
    if isinstance(node, dict):
        return {key: _enum_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_enum_values(value) for value in node]
    return node.value if isinstance(node, Enum) else node


def save_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def replace(config: Config, **changes) -> Config:
    """A copy with top-level fields replaced (configs are never mutated in place)."""
    return dataclasses.replace(config, **changes)
