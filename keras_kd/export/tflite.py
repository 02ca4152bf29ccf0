"""`to_tflite`: convert a trained student to a TensorFlow Lite (LiteRT) flatbuffer.

The route is SavedModel -> `tf.lite.TFLiteConverter.from_saved_model` with the supported op set
given explicitly (builtin ops only, never SELECT_TF_OPS, so the file runs on the plain LiteRT
runtime). `model.export(format="litert")` is not used because it enables SELECT_TF_OPS.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.distiller import Distiller

QUANTIZATION_MODES = ("none", "float16", "dynamic", "int8")
DEFAULT_CALIBRATION_EXAMPLES = 300


def _is_tf_keras_model(model) -> bool:
    return any(
        cls.__module__.startswith("tf_keras") and cls.__name__ == "Model"
        for cls in type(model).__mro__
    )


def _single_input_spec(model, batch_size: int | None = None) -> tf.TensorSpec:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs) != 1:
        raise ValueError(
            f"to_tflite supports built models with exactly one input; {model.name!r} has "
            f"{len(inputs or [])} defined inputs (build it with keras.Input(...))."
        )
    shape = (batch_size,) + tuple(inputs[0].shape[1:])
    return tf.TensorSpec(shape, tf.as_dtype(inputs[0].dtype), name="inputs")


def _save_tf_keras(model, directory: str, batch_size: int | None) -> None:
    spec = _single_input_spec(model, batch_size)

    @tf.function(input_signature=[spec])
    def serve(inputs):
        return model(inputs, training=False)

    tf.saved_model.save(model, directory, signatures={"serving_default": serve})


def calibration_examples(representative_data, input_shape, num_examples: int) -> np.ndarray:
    """Up to `num_examples` float32 inputs of shape `(n, *input_shape)` from arrays or a dataset.

    Args:
        representative_data: an array `(n, *input_shape)`, a tuple `(x, y[, w])` of arrays, or a
            `tf.data.Dataset` of `x` / `(x, ...)`, batched or not.
        input_shape: the model's input shape without the batch axis.
        num_examples: how many examples to take (from the start: shuffle beforehand if the data
            is ordered by class).

    Returns:
        A float32 NumPy array.
    """
    rank = len(input_shape)
    chunks, count = [], 0
    if isinstance(representative_data, tf.data.Dataset):
        source = representative_data.as_numpy_iterator()
    else:
        source = [representative_data]
    for element in source:
        x = element[0] if isinstance(element, (tuple, list)) else element
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == rank:
            x = x[None]
        if x.ndim != rank + 1 or tuple(x.shape[1:]) != tuple(input_shape):
            raise ValueError(
                f"representative_data must hold inputs of shape {tuple(input_shape)} (optionally "
                f"batched); got an element of shape {x.shape}."
            )
        chunks.append(x[: num_examples - count])
        count += len(chunks[-1])
        if count >= num_examples:
            break
    if count == 0:
        raise ValueError("representative_data is empty.")
    return np.concatenate(chunks)


def to_tflite(
    model,
    path: str | os.PathLike,
    quantization: str = "none",
    representative_data=None,
    int8_io: bool = False,
    num_calibration_examples: int = DEFAULT_CALIBRATION_EXAMPLES,
    batch_size: int | None = None,
) -> Path:
    """Converts a student to a `.tflite` file (float32, float16, dynamic-range or full-int8).

    Only the student is exported: a `keras_kd.Distiller` is replaced by its `.student` (the
    teacher and any adapters stay behind).

    Args:
        model: a Keras 3 model, a `keras_kd.Distiller`, or a tf_keras model (e.g. the result of
            `quantization_aware_distillation`). One input.
        path: where to write the `.tflite` file (parent directories are created).
        quantization: `"none"` (float32), `"float16"` (float16 weights, float compute),
            `"dynamic"` (int8 weights, float activations) or `"int8"` (full-integer: int8 weights
            and activations, int32 biases, calibrated on `representative_data`).
        representative_data: calibration inputs for `"int8"` (required) - a few hundred
            training examples as an array, `(x, y)` arrays, or a `tf.data.Dataset`.
        int8_io: for `"int8"` only: if True the file's input and output tensors are int8 (the
            caller quantizes inputs with the input's scale / zero point, as
            `evaluate_tflite` does); if False they stay float32 with quantize / dequantize ops at
            the two ends.
        num_calibration_examples: how many examples of `representative_data` to calibrate on.
        batch_size: `None` (default) for a file whose batch dimension is resized at run time,
            or a fixed batch size (e.g. 1). Recurrent layers (`GRU`, `LSTM`, `SimpleRNN`) need a
            fixed one: their loop's tensor lists convert to builtin ops only with static
            shapes. `tflite_predict` runs such a file in chunks of that size.

    Returns:
        The `Path` of the written file.

    Raises:
        ValueError: for an unknown `quantization`, `"int8"` without `representative_data`,
            `int8_io` with another mode, a model with several inputs, or a recurrent model
            converted without `batch_size`.
        TypeError: if `model` is not a Keras model.

    Example:
        >>> to_tflite(distiller, "student_int8.tflite", quantization="int8",
        ...           representative_data=x_train[:300], int8_io=True)

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018: `real = scale * (q - zero_point)`.
    """
    validation.one_of("quantization", quantization, QUANTIZATION_MODES)
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs representative_data: a few hundred training inputs "
            "(array, (x, y) arrays or tf.data.Dataset) to calibrate the activation ranges."
        )
    if int8_io and quantization != "int8":
        raise ValueError(f"int8_io=True needs quantization='int8', got {quantization!r}.")
    num_calibration_examples = validation.positive_int(
        "num_calibration_examples", num_calibration_examples
    )
    if batch_size is not None:
        batch_size = validation.positive_int("batch_size", batch_size)
    if isinstance(model, Distiller):
        model = model.student
    tf_keras_model = _is_tf_keras_model(model)
    if not (isinstance(model, keras.Model) or tf_keras_model):
        raise TypeError(f"model must be a Keras model or keras_kd.Distiller, got {type(model)!r}.")
    spec = _single_input_spec(model, batch_size)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keras_kd_savedmodel_") as saved_model_dir:
        if tf_keras_model:
            _save_tf_keras(model, saved_model_dir, batch_size)
        else:
            model.export(
                saved_model_dir, format="tf_saved_model", verbose=False,
                input_signature=None if batch_size is None else [spec],
            )
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            examples = calibration_examples(
                representative_data, spec.shape[1:], num_calibration_examples
            )

            step = batch_size or 1  # a file with a fixed batch size calibrates on such batches

            def representative_dataset():
                for i in range(0, len(examples) - step + 1, step):
                    yield [examples[i : i + step]]

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # tf.lite's ConverterError; anything else is re-raised
            if batch_size is None and "TensorListReserve" in str(error):
                raise ValueError(
                    f"{model.name!r} has a recurrent loop whose tensor lists convert to builtin "
                    "TFLite ops only with a fixed batch size: pass batch_size=1 (or the batch "
                    "size the file will run with)."
                ) from error
            raise
    path.write_bytes(flatbuffer)
    return path


__all__ = ["QUANTIZATION_MODES", "calibration_examples", "to_tflite"]
