"""Teacher signals: cached outputs (and, later, ensembles and specialists)."""

from keras_kd.teachers.cached import cache_teacher_logits, cache_teacher_outputs

__all__ = ["cache_teacher_logits", "cache_teacher_outputs"]
