"""Teacher signals: cached outputs, ensembles of teachers, generalist + specialists."""

from keras_kd.teachers import concentration, pseudo_labels, transform_ensemble  # noqa: F401
from keras_kd.teachers.cached import cache_teacher_logits, cache_teacher_outputs
from keras_kd.teachers.ensemble import Ensemble, cache_ensemble_logits
from keras_kd.teachers.specialists import Specialists
from keras_kd.teachers.streamed import read_teacher_outputs, stream_teacher_outputs

__all__ = [
    "Ensemble",
    "Specialists",
    "cache_ensemble_logits",
    "cache_teacher_logits",
    "cache_teacher_outputs",
    "read_teacher_outputs",
    "stream_teacher_outputs",
]
