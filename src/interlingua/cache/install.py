"""Attach the configured caches to a training system (``cache.*`` in the run config). The config keys a
cache's values depend on are ``TEACHER_CACHE`` / ``ANCHOR_CACHE`` of :mod:`interlingua.settings`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from interlingua.cache.anchor import AnchorCache
from interlingua.cache.store import TensorStore
from interlingua.cache.teacher import KDTeacher
from interlingua.config import AnchorKind, Config
from interlingua.settings import Artifact, settings_of

log = logging.getLogger(__name__)


def cache_dir(config: Config) -> Path:
    """``cache.dir``, else ``<interlingua cache root>/frozen``."""
    from interlingua.models.registry import cache_root

    return Path(config.cache.dir).expanduser() if config.cache.dir else cache_root() / "frozen"


def install_caches(system, config: Config, any_process: Optional[Callable[[bool], bool]] = None) -> list[TensorStore]:
    """Give ``system`` its KD teachers and anchor cache as ``config.cache`` asks.

    Args:
        system: an ``Interlingua``; ``system.teachers`` / ``system.anchor_cache`` are set.
        config: ``cache.*``, ``loss.kd_temperature``, ``loss.w_kd``, ``interlingua.anchor``.
        any_process: the teachers' collective hook where the frozen LLMs are sharded (see :class:`KDTeacher`).
    Returns:
        The stores opened (flush them at checkpoints and at the end).
    """
    root, stores = cache_dir(config), []
    teacher = settings_of(Artifact.TEACHER_CACHE, config)  # {"temperature": loss.kd_temperature, "top_k": …}
    if config.loss.w_kd:
        for key, lm in system.lms.items():
            store = None
            if config.cache.teacher:
                store = TensorStore.open(root, "teacher", KDTeacher.settings(lm, **teacher))
                stores.append(store)
                log.info("%s: KD teacher cache %s (%d entries)", key, store.directory, len(store))
            system.teachers[key] = KDTeacher(lm, teacher["temperature"], teacher["top_k"], store, any_process)
    if config.cache.anchor:
        kind = AnchorKind(settings_of(Artifact.ANCHOR_CACHE, config)["anchor"])
        store = TensorStore.open(root, "anchor", AnchorCache.settings(system.encoder, kind))
        stores.append(store)
        system.anchor_cache = AnchorCache(system.encoder, kind, store)
    return stores
