"""An append-only store of small named tensor groups, in safetensors shards.

    store = TensorStore.open(root, "teacher", {"model": ..., "temperature": 1.0, "top_k": 256})
    store.get(key)                      # {"ids": Tensor, ...} or None
    store.put(key, {"ids": ids, ...})   # buffered; written as one shard every `flush_every` entries
    store.flush()                       # at the end of a run (also on close)

Everything that changes the stored values and is not part of an entry's key goes into ``settings`` (the
config's part of it declared in :mod:`interlingua.settings`: ``TEACHER_CACHE``, ``ANCHOR_CACHE``);
the folder is named by their hash, so a change of any of them starts a fresh, empty store and a
stale entry can never be read. Shards are written to a temporary name and renamed, so a crash leaves
either a whole shard or none; a shard that does not open (e.g. damaged disk) is skipped with a
warning and its entries are recomputed. Each process writes its own shards (the name carries the
pid and a random part), so several training processes can fill one store at once. Values are stored
as safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from interlingua.settings import settings_hash

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
SHARD_GLOB = "shard-*.safetensors"
SEPARATOR = "/"  # tensor names in a shard are "<entry key>/<field>"


cache_settings_hash = settings_hash
"""Stable 16-hex-digit hash of a JSON-serialisable settings dict (:func:`interlingua.settings.settings_hash`)."""


class TensorStore:
    """Entries ``key -> {field: Tensor}`` under one folder; see the module docstring.

    Args:
        directory: the store's folder (created if missing).
        settings: what the folder's values depend on; written to ``settings.json``.
        flush_every: buffered entries that trigger a shard write.
    Raises:
        ValueError: the folder holds a ``settings.json`` for other settings.
    """

    def __init__(self, directory: Path, settings: dict, flush_every: int = 512):
        self.directory = Path(directory)
        self.settings = settings
        self.flush_every = flush_every
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self._pending: dict[str, dict[str, Tensor]] = {}
        self._index: dict[str, tuple[Path, list[str]]] = {}  # entry key -> (shard, its fields)
        self._handles: dict[Path, object] = {}
        self.hits = self.misses = 0
        for shard in sorted(self.directory.glob(SHARD_GLOB)):
            self._add_shard(shard)

    @classmethod
    def open(cls, root: Path, kind: str, settings: dict, flush_every: int = 512) -> "TensorStore":
        """The store for ``settings`` under ``root/kind/<settings hash>``."""
        return cls(Path(root) / kind / cache_settings_hash(settings), settings, flush_every)

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._index

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The entry stored under ``key`` (CPU tensors), or None; counts hits and misses."""
        if key in self._pending:
            self.hits += 1
            return self._pending[key]
        found = self._index.get(key)
        if found is None:
            self.misses += 1
            return None
        shard, fields = found
        handle = self._handles[shard]
        self.hits += 1
        return {field: handle.get_tensor(f"{key}{SEPARATOR}{field}") for field in fields}

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        """Buffer an entry (copied to CPU, contiguous); writes a shard when the buffer is full."""
        if SEPARATOR in key:
            raise ValueError(f"cache keys may not contain {SEPARATOR!r}: {key!r}")
        self._pending[key] = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered entries as one new shard (atomically)."""
        if not self._pending:
            return
        flat = {f"{key}{SEPARATOR}{name}": t for key, entry in self._pending.items() for name, t in entry.items()}
        final = self.directory / f"shard-{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
        temporary = final.with_suffix(".tmp")
        save_file(flat, str(temporary), metadata={"settings_hash": cache_settings_hash(self.settings)})
        os.replace(temporary, final)
        self._pending.clear()
        self._add_shard(final)

    def stats(self) -> dict:
        return {"entries": len(self), "hits": self.hits, "misses": self.misses, "directory": str(self.directory)}

    def _check_settings(self) -> None:
        path = self.directory / SETTINGS_FILE
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except json.JSONDecodeError:
                stored = None
            if stored != json.loads(json.dumps(self.settings)):
                raise ValueError(
                    f"cache folder {self.directory} holds entries for other settings ({path}); "
                    "delete the folder to rebuild it"
                )
            return
        temporary = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_text(json.dumps(self.settings, indent=2, sort_keys=True))
        os.replace(temporary, path)

    def _add_shard(self, shard: Path) -> None:
        try:
            handle = safe_open(str(shard), framework="pt", device="cpu")
            names = list(handle.keys())
        except Exception as err:  # a damaged shard costs a recomputation, never a wrong value
            log.warning("skipping unreadable cache shard %s (%s); its entries will be recomputed", shard, err)
            return
        self._handles[shard] = handle
        for name in names:
            key, _, field = name.partition(SEPARATOR)
            if key not in self._index or self._index[key][0] != shard:
                self._index[key] = (shard, [])
            self._index[key][1].append(field)


