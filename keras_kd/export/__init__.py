"""Deployment of distilled students: TFLite export, LiteRT evaluation, QAT / pruned distillation.

Importing this package imports neither tensorflow-model-optimization nor tf_keras nor
ai_edge_litert: each is imported by the function that needs it (tfmot would otherwise switch
`tf.keras` to tf_keras for the whole process).
"""

from keras_kd.export.litert_eval import (
    TFLiteEvaluation,
    evaluate_tflite,
    float_compute_tensors,
    median_latency_ms,
    tflite_predict,
)
from keras_kd.export.optimize import (
    calibrate_activation_ranges,
    distillation_loss_fn,
    kernel_sparsity,
    pack_targets,
    pruning_distillation,
    quantization_aware_distillation,
    teacher_logits_of,
)
from keras_kd.export.report import deployment_report, markdown_table
from keras_kd.export.tf_keras_bridge import (
    TRANSLATABLE_LAYERS,
    UntranslatableLayerError,
    to_tf_keras,
)
from keras_kd.export.tflite import QUANTIZATION_MODES, calibration_examples, to_tflite

__all__ = [
    "QUANTIZATION_MODES",
    "TFLiteEvaluation",
    "TRANSLATABLE_LAYERS",
    "UntranslatableLayerError",
    "calibrate_activation_ranges",
    "calibration_examples",
    "deployment_report",
    "distillation_loss_fn",
    "evaluate_tflite",
    "float_compute_tensors",
    "kernel_sparsity",
    "markdown_table",
    "median_latency_ms",
    "pack_targets",
    "pruning_distillation",
    "quantization_aware_distillation",
    "teacher_logits_of",
    "tflite_predict",
    "to_tf_keras",
    "to_tflite",
]
