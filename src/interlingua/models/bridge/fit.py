"""Closed-form maps between N frozen LLMs' token-embedding spaces and one shared ``d_inter`` space.

For every model m, with ``X_m = E_m / rms_m`` its input embeddings at unit RMS:

* the shared target ``Y`` (one row per shared string) is the top-``d_inter`` principal subspace of the
  models' centred embeddings of the shared strings side by side, ``[X_1[S] | … | X_N[S]]``, scaled to
  RMS 1: the directions the models' vocabularies vary along, seen by all of them at once;
* the encoder map ``P_m: d_m -> d_inter`` is the ridge regression ``X_m[S] -> Y``, so
  ``P_a(X_a[v]) ≈ P_b(X_b[v])`` for every shared string ``v``;
* the decoder map ``Q_m: d_inter -> d_m`` is the ridge regression from what any sender delivers to the
  model's own embeddings: ``P_m(X_m)`` over m's whole vocabulary (``Q_m P_m X_m ≈ X_m``) together with
  ``P_a(X_a[S]) -> X_m[S]`` for every other model a (``Q_b P_a X_a[v] ≈ X_b[v]``).

All maps are affine (a bias column) and deterministic. The fit is made on a seeded 90 % of the shared
strings; the held-out rest measures it (:attr:`BridgeFit.metrics`). ``load_or_fit_bridge`` caches the
result under ``$INTERLINGUA_CACHE/bridge/<hash>``, the hash covering every model's weights fingerprint,
its vocabulary and the settings, so a changed model or setting fits again.

    fit = load_or_fit_bridge(lms, BridgeSettings(d_inter=512))
    z = fit.encode("smollm2-135m-instruct", embeddings / rms)     # (…, d_inter)
    fit.metrics["pairs"]["smollm2-135m-instruct -> gemma3-270m"]["vocab_nn1"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from interlingua.models.bridge.vocab import id_bytes, shared_strings, token_bytes
from interlingua.settings import Artifact, settings_of

log = logging.getLogger(__name__)

FIT_VERSION = 1  # bump when the fit changes, so cached fits are redone
BRIDGE_WEIGHTS_FILE = "bridge.safetensors"
BRIDGE_METRICS_FILE = "bridge_fit.json"
VOCAB_PROBE = 1000  # held-out strings searched over a receiver's whole vocabulary (vocab_nn1)


@dataclass(frozen=True)
class BridgeSettings:
    """What a fit depends on besides the models (the config's part: :meth:`of`)."""

    d_inter: int = 512
    """Width of the shared space (at most the sum of the models' widths)."""
    ridge: float = 1e-2
    """Ridge strength relative to the mean squared input (scale-free)."""
    holdout: float = 0.1
    """Share of the shared strings held out to measure the fit."""
    seed: int = 0
    """Seed of the held-out split."""

    @classmethod
    def of(cls, config) -> "BridgeSettings":
        """The settings a run config fits with: its keys of ``BRIDGE_FIT`` (:mod:`interlingua.settings`)."""
        return cls(**settings_of(Artifact.BRIDGE_FIT, config))

    def __post_init__(self) -> None:
        if self.d_inter <= 0:
            raise ValueError(f"interlingua.d_inter must be positive, got {self.d_inter}")
        if not 0.0 < self.holdout < 0.5:
            raise ValueError(f"bridge holdout must be in (0, 0.5), got {self.holdout}")
        if self.ridge <= 0:
            raise ValueError(f"bridge ridge must be positive, got {self.ridge}")


@dataclass
class AffineMap:
    """``x @ weight.T + bias``: ``weight (d_out, d_in)``, ``bias (d_out,)``."""

    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


class BridgeFit:
    """The fitted maps of every model and the measurements of the fit.

    Attributes:
        encoders: model key -> ``P_m`` (unit-RMS embeddings -> shared space).
        decoders: model key -> ``Q_m`` (shared space -> unit-RMS embeddings).
        metrics: shared-vocabulary sizes and held-out fit quality (JSON-ready).
    """

    def __init__(self, encoders: dict[str, AffineMap], decoders: dict[str, AffineMap], metrics: dict):
        self.encoders, self.decoders, self.metrics = encoders, decoders, metrics

    @property
    def d_inter(self) -> int:
        return next(iter(self.encoders.values())).weight.shape[0]

    def encode(self, key: str, unit_embeddings: Tensor) -> Tensor:
        return self.encoders[key](unit_embeddings)

    def decode(self, key: str, z: Tensor) -> Tensor:
        return self.decoders[key](z)

    # ---- files -------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for kind, maps in (("encoder", self.encoders), ("decoder", self.decoders)):
            for index, (key, affine) in enumerate(maps.items()):
                tensors[f"{kind}.{index}.weight"] = affine.weight.contiguous()
                tensors[f"{kind}.{index}.bias"] = affine.bias.contiguous()
        save_file(tensors, str(directory / BRIDGE_WEIGHTS_FILE))
        (directory / BRIDGE_METRICS_FILE).write_text(json.dumps(self.metrics, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "BridgeFit":
        """Raises: ValueError when the folder is incomplete or damaged."""
        try:
            metrics = json.loads((directory / BRIDGE_METRICS_FILE).read_text())
            tensors = load_file(str(directory / BRIDGE_WEIGHTS_FILE))
            keys = metrics["models"]
            maps = {
                kind: {key: AffineMap(tensors[f"{kind}.{i}.weight"], tensors[f"{kind}.{i}.bias"])
                       for i, key in enumerate(keys)}
                for kind in ("encoder", "decoder")
            }
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise ValueError(f"{directory}: incomplete or damaged bridge fit ({err})") from None
        return cls(maps["encoder"], maps["decoder"], metrics)


# ---- fitting ---------------------------------------------------------------------------------------
def unit_embeddings(lm) -> Tensor:
    """``(V, d)`` fp32 input embeddings of a FrozenLM as the model sees them, divided by their RMS."""
    with torch.no_grad():
        table = lm.embed(torch.arange(len(lm.tokenizer), device=lm.device).unsqueeze(0))[0].float().cpu()
    return table / lm.embedding_rms


def ridge_fit(inputs: Tensor, targets: Tensor, strength: float) -> AffineMap:
    """Affine ridge regression ``inputs (n, d_in) -> targets (n, d_out)``, solved in float64."""
    mean_x, mean_y = inputs.mean(0), targets.mean(0)
    centred = inputs - mean_x
    gram = (centred.T @ centred).double()  # (d_in, d_in): products in fp32 (fast), the solve in fp64
    gram += strength * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, (centred.T @ (targets - mean_y)).double()).float()  # (d_in, d_out)
    bias = mean_y - mean_x @ weight
    return AffineMap(weight.T.contiguous(), bias.contiguous())


def fit_bridge(lms: dict, settings: BridgeSettings) -> BridgeFit:
    """Fit every model's ``P_m`` and ``Q_m`` (module docstring) and measure them on held-out strings.

    Args:
        lms: model key -> FrozenLM (N >= 2), in config order.
        settings: the fit's settings.
    Raises:
        ValueError: fewer than two models, too few shared strings, or ``d_inter`` above the models'
            summed widths.
    """
    if len(lms) < 2:
        raise ValueError(f"a vocabulary bridge needs at least two models, got {len(lms)}")
    started = time.perf_counter()
    keys = list(lms)
    widths = {key: lm.hidden_size for key, lm in lms.items()}
    if settings.d_inter > sum(widths.values()):
        raise ValueError(
            f"interlingua.d_inter={settings.d_inter} exceeds the models' summed widths {sum(widths.values())}"
        )
    names = {key: id_bytes(lm.tokenizer) for key, lm in lms.items()}  # id -> bytes, non-special ids
    tables = {key: token_bytes(lms[key].tokenizer, names[key]) for key in keys}  # bytes -> id
    strings = shared_strings(tables=list(tables.values()))
    if len(strings) < 4 * settings.d_inter:
        raise ValueError(
            f"the models share only {len(strings)} token strings, too few to fit d_inter={settings.d_inter} "
            f"(need {4 * settings.d_inter}); lower interlingua.d_inter"
        )
    embeddings = {key: unit_embeddings(lm) for key, lm in lms.items()}  # (V_m, d_m)
    row_ids = {key: torch.tensor([tables[key][s] for s in strings]) for key in keys}  # (n,) per model
    rows = {key: embeddings[key][row_ids[key]] for key in keys}  # (n, d_m)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(strings), generator=generator)
    held = order[: max(int(settings.holdout * len(strings)), 1)]
    train = order[len(held):]

    side_by_side = torch.cat([rows[k][train] - rows[k][train].mean(0) for k in keys], dim=1)  # (n, Σd_m)
    _, vectors = torch.linalg.eigh((side_by_side.T @ side_by_side).double())  # ascending eigenvalues
    principal = vectors[:, -settings.d_inter:].flip(-1).float()  # (Σd_m, d_inter), largest first
    target = side_by_side @ principal  # (n_train, d_inter)
    target = target / target.pow(2).mean().sqrt()  # RMS 1

    encoders = {k: ridge_fit(rows[k][train], target, settings.ridge) for k in keys}
    decoders = {}
    for k in keys:
        inputs = [encoders[k](embeddings[k])] + [encoders[a](rows[a][train]) for a in keys if a != k]
        outputs = [embeddings[k]] + [rows[k][train] for a in keys if a != k]
        decoders[k] = ridge_fit(torch.cat(inputs), torch.cat(outputs), settings.ridge)
    fit = BridgeFit(encoders, decoders, {})
    fit.metrics = {
        "version": FIT_VERSION, "models": keys, "settings": asdict(settings),
        "vocabulary": {k: len(tables[k]) for k in keys}, "shared_strings": len(strings),
        "pair_shared_strings": {f"{a} & {b}": len(set(tables[a]) & set(tables[b]))
                                for i, a in enumerate(keys) for b in keys[i + 1:]},
        "held_out": len(held), **measure(fit, names, row_ids, held, embeddings),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return fit


def measure(fit: BridgeFit, names: dict, row_ids: dict, held: Tensor, embeddings: dict) -> dict:
    """Held-out fit quality per ordered pair (sender -> receiver) and per model (own round trip).

    ``shared_cosine``: cos(P_a x_a, P_b x_b); ``nn1``: P_a x_a's nearest P_b x_b among the held-out
    strings is the same string; ``decoded_cosine``: cos(Q_b P_a x_a, x_b); ``vocab_nn1``: the nearest key
    over the receiver's whole vocabulary, for the first VOCAB_PROBE held-out strings (what the vocabulary
    decoder at zero temperature picks) decodes
    to the same bytes. ``own``: the same for a = b (round trip over the model's own held-out strings).
    """
    keys = list(names)
    rows = {k: embeddings[k][row_ids[k]] for k in keys}
    probe = held[:VOCAB_PROBE]  # the whole-vocabulary search costs h x V x d_inter
    pairs, own = {}, {}
    for b in keys:
        key_ids = torch.tensor(sorted(names[b]))  # the receiver's non-special ids
        vocab_keys = F.normalize(fit.encode(b, embeddings[b][key_ids]), dim=-1)  # (V', d_inter)
        held_keys = F.normalize(fit.encode(b, rows[b][held]), dim=-1)
        target_bytes = [names[b][int(i)] for i in row_ids[b][probe]]
        for a in keys:
            sent = fit.encode(a, rows[a][held])  # (h, d_inter)
            picked = key_ids[_nearest(F.normalize(sent[: len(probe)], dim=-1), vocab_keys)]
            result = {
                "shared_cosine": F.cosine_similarity(sent, fit.encode(b, rows[b][held]), dim=-1).mean().item(),
                "nn1": (_nearest(F.normalize(sent, dim=-1), held_keys) == torch.arange(len(held)))
                .float().mean().item(),
                "decoded_cosine": F.cosine_similarity(fit.decode(b, sent), rows[b][held], dim=-1).mean().item(),
                "vocab_nn1": sum(names[b][int(p)] == t for p, t in zip(picked, target_bytes)) / len(probe),
            }
            (own.__setitem__(a, result) if a == b else pairs.__setitem__(f"{a} -> {b}", result))
    return {"pairs": pairs, "own": own}


def _nearest(queries: Tensor, keys: Tensor, chunk: int = 256) -> Tensor:
    """Index of the nearest (highest dot product) row of ``keys`` for each query row."""
    return torch.cat([(q @ keys.T).argmax(-1) for q in queries.split(chunk)])


# ---- cache -----------------------------------------------------------------------------------------
def bridge_cache_key(lms: dict, settings: BridgeSettings) -> str:
    """Hash of everything a fit depends on: each model's key, weights fingerprint and vocabulary, and
    the settings."""
    from interlingua.models.frozen_lm import lm_fingerprint

    digest = hashlib.sha256(json.dumps({"version": FIT_VERSION, **asdict(settings)}, sort_keys=True).encode())
    for key, lm in lms.items():
        vocabulary = json.dumps(sorted(lm.tokenizer.get_vocab().items()), ensure_ascii=False)
        digest.update(f"{key}:{lm_fingerprint(lm.model)}:{lm.embedding_rms:.8g}".encode())
        digest.update(hashlib.sha256(vocabulary.encode()).digest())
    return digest.hexdigest()[:20]


def load_or_fit_bridge(lms: dict, settings: BridgeSettings, cache_dir: Path | None = None) -> BridgeFit:
    """The cached fit for these models and settings, fitted (and cached atomically) when absent or damaged."""
    from interlingua.artifacts.files import replace_dir
    from interlingua.models.registry import cache_root

    root = Path(cache_dir) if cache_dir is not None else cache_root() / "bridge"
    folder = root / bridge_cache_key(lms, settings)
    if folder.is_dir():
        try:
            fit = BridgeFit.load(folder)
            if fit.metrics.get("models") == list(lms):
                log.info("vocabulary bridge: cached fit %s", folder)
                return fit
        except ValueError as err:
            log.warning("%s; fitting again", err)
    log.info("vocabulary bridge: fitting %s at d_inter=%d", " + ".join(lms), settings.d_inter)
    fit = fit_bridge(lms, settings)
    tmp = folder.with_name(folder.name + ".tmp")
    fit.save(tmp)
    replace_dir(tmp, folder)
    return fit
