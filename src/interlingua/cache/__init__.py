"""Caches of frozen work (DESIGN §4.7, issue #5): what the frozen teacher and sentence encoder
compute for a training example never changes, so it is computed once and reused by later epochs and
later runs.

    store = TensorStore.open(root, "teacher", settings)   # a folder per settings hash
    teacher = KDTeacher(lm, temperature=1.0, top_k=256, store=store)
    loss = teacher.kd_loss(student_logits, texts, targets)
"""

from interlingua.cache.anchor import AnchorCache
from interlingua.cache.store import TensorStore, cache_settings_hash
from interlingua.cache.teacher import KDTeacher, TeacherTargets

__all__ = ["AnchorCache", "KDTeacher", "TeacherTargets", "TensorStore", "cache_settings_hash"]
