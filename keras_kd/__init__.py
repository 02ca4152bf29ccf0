"""keras_kd: knowledge distillation for Keras 3 on TensorFlow.

`Distiller` trains a student from a frozen teacher inside `model.fit`; `keras_kd.losses` holds the
methods, `keras_kd.callbacks` the schedules, `keras_kd.teachers` the teacher signals,
`keras_kd.recipes` multi-run procedures and `keras_kd.export` TFLite deployment.
"""

__version__ = "0.1.0"

from keras_kd import (
    adapters,
    callbacks,
    datafree,
    datasets,
    export,
    losses,
    models,
    online,
    recipes,
    report,
    teachers,
    validation,
    weighting,
)
from keras_kd.distiller import Distiller
from keras_kd.losses import LogitMatchingDistillation, SoftTargetDistillation
from keras_kd.teachers import (
    cache_teacher_logits,
    cache_teacher_outputs,
    read_teacher_outputs,
    stream_teacher_outputs,
)
from keras_kd.weighting import FixedWeighting, PathWeighting, UncertaintyWeighting

__all__ = [
    "Distiller",
    "FixedWeighting",
    "LogitMatchingDistillation",
    "PathWeighting",
    "SoftTargetDistillation",
    "UncertaintyWeighting",
    "__version__",
    "adapters",
    "cache_teacher_logits",
    "cache_teacher_outputs",
    "read_teacher_outputs",
    "stream_teacher_outputs",
    "callbacks",
    "datafree",
    "datasets",
    "export",
    "losses",
    "models",
    "online",
    "recipes",
    "report",
    "teachers",
    "validation",
    "weighting",
]
