"""Run and measure `.tflite` files with the LiteRT interpreter (`ai_edge_litert`).

`tf.lite.Interpreter` is deprecated; `ai_edge_litert.interpreter.Interpreter` is the runtime that
ships on devices, so accuracy and latency are measured with it. It is imported when first used.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.distiller import Distiller

_INTEGER_DTYPES = (np.int8, np.int32)


def _interpreter(path, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter  # lazy: only needed to run files

    num_threads = validation.positive_int("num_threads", num_threads)
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if scale == 0:  # an integer input that is not quantized (e.g. token ids): taken as it is
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * np.float32(scale)


def _run(interpreter, x: np.ndarray) -> np.ndarray:
    (inp,) = interpreter.get_input_details()
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        (inp,) = interpreter.get_input_details()
    interpreter.set_tensor(inp["index"], _quantize_input(x, inp))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    return _dequantize_output(interpreter.get_tensor(out["index"]), out)


def tflite_predict(
    path: str | os.PathLike, x, batch_size: int = 256, num_threads: int = 1
) -> np.ndarray:
    """Runs a `.tflite` file on `x` and returns float32 outputs (int8 I/O handled).

    Args:
        path: the `.tflite` file (one input, first output returned).
        x: inputs `(n, ...)`: floats, quantized with the input's scale / zero point for int8
            I/O, or integer ids for an integer input that is not quantized (token ids).
        batch_size: examples per interpreter call (the input is resized to it). A file with a
            fixed batch size (`to_tflite(..., batch_size=k)`) is run `k` at a time instead, the
            last chunk padded with copies of its last example, whose outputs are dropped.
        num_threads: interpreter threads.

    Returns:
        `(n, ...)` float32 outputs, dequantized for int8 I/O: `scale * (q - zero_point)`.
    """
    batch_size = validation.positive_int("batch_size", batch_size)
    interpreter = _interpreter(path, num_threads)
    x = np.asarray(x)
    fixed = int(interpreter.get_input_details()[0]["shape_signature"][0])
    if fixed > 0:  # the batch dimension cannot be resized
        batch_size = fixed
    outputs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        missing = batch_size - len(chunk) if fixed > 0 else 0
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)])
        outputs.append(_run(interpreter, padded)[: len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


def float_compute_tensors(path: str | os.PathLike) -> list[str]:
    """Names of the tensors that are neither int8 nor int32, the model's inputs/outputs excluded.

    An empty list means the whole compute path of a full-integer file is integer: with float I/O
    only the input (before its QUANTIZE op) and output (after DEQUANTIZE) tensors are float.

    Args:
        path: the `.tflite` file.

    Returns:
        A list of `"name: dtype"` strings.
    """
    interpreter = _interpreter(path, 1)
    io = {d["index"] for d in interpreter.get_input_details()}
    io |= {d["index"] for d in interpreter.get_output_details()}
    return [
        f"{d['name']}: {np.dtype(d['dtype']).name}"
        for d in interpreter.get_tensor_details()
        if d["index"] not in io and d["dtype"] not in _INTEGER_DTYPES
    ]


@dataclasses.dataclass(frozen=True)
class TFLiteEvaluation:
    """What `evaluate_tflite` measured.

    Attributes:
        path: the evaluated file.
        size_bytes: file size.
        num_examples: examples evaluated.
        accuracy: top-1 accuracy against the labels (None without labels).
        reference_accuracy: top-1 accuracy of `reference_model` (None without one or labels).
        agreement: fraction of examples whose top-1 class equals the reference model's.
        max_abs_diff: max |output - reference output| over all examples and classes.
        latency_ms: median single-example latency in milliseconds.
        num_threads: interpreter threads used for the latency.
        io_dtype: the input tensor dtype of the file ("float32" or "int8").
    """

    path: str
    size_bytes: int
    num_examples: int
    accuracy: float | None
    reference_accuracy: float | None
    agreement: float | None
    max_abs_diff: float | None
    latency_ms: float
    num_threads: int
    io_dtype: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_arrays(data, labels, input_rank: int):
    if isinstance(data, tf.data.Dataset):
        if labels is not None:
            raise ValueError("Pass labels only with array data, not with a tf.data.Dataset.")
        xs, ys = [], []
        for element in data.as_numpy_iterator():
            x, y = element[:2] if isinstance(element, tuple) else (element, None)
            x = np.asarray(x)
            batched = x.ndim == input_rank
            xs.append(x if batched else x[None])
            if y is not None:
                ys.append(np.asarray(y) if batched else np.asarray(y)[None])
        if not xs:
            raise ValueError("evaluate_tflite got an empty dataset.")
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys) if ys else None
    if isinstance(data, (tuple, list)):
        if labels is not None:
            raise ValueError("Pass labels either inside data=(x, y) or as labels=, not both.")
        data, labels = data[0], data[1]
    return np.asarray(data, dtype=np.float32), None if labels is None else np.asarray(labels)


def _top1(values: np.ndarray) -> np.ndarray:
    return np.argmax(values.reshape(len(values), -1), axis=-1)


def _labels_as_ids(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim > 1 and labels.shape[-1] > 1:
        return np.argmax(labels, axis=-1)
    return labels.reshape(len(labels)).astype(np.int64)


def median_latency_ms(
    path: str | os.PathLike,
    example,
    num_threads: int = 1,
    repeats: int = 15,
    min_block_seconds: float = 0.2,
) -> float:
    """Median single-example latency: `repeats` timed blocks of back-to-back batch-1 calls.

    Each block runs for at least `min_block_seconds` (so CPU-scheduler slices average out) and
    yields a per-call time; the median over blocks is returned.

    Args:
        path: the `.tflite` file.
        example: one input of the model's shape, without the batch axis.
        num_threads: interpreter threads.
        repeats: number of timed blocks.
        min_block_seconds: minimum duration of each block.

    Returns:
        Milliseconds per single-example `invoke()`.
    """
    repeats = validation.positive_int("repeats", repeats)
    min_block_seconds = validation.non_negative("min_block_seconds", min_block_seconds)
    interpreter = _interpreter(path, num_threads)
    x = np.asarray(example, dtype=np.float32)[None]
    _run(interpreter, x)  # allocate + warm up
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < min_block_seconds / 4 or calls < 3:
        interpreter.invoke()
        calls += 1
    per_block = max(1, int(calls * 4))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_block):
            interpreter.invoke()
        times.append((time.perf_counter() - t0) / per_block)
    return float(np.median(times) * 1000.0)


def _reference_outputs(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    if isinstance(model, Distiller):
        model = model.student
    outputs = [
        np.asarray(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    first = outputs[0]
    if isinstance(first, (list, tuple)):
        raise ValueError("reference_model must have a single output.")
    return np.concatenate(outputs).astype(np.float32)


def evaluate_tflite(
    path: str | os.PathLike,
    data,
    labels=None,
    reference_model: keras.Model | None = None,
    num_threads: int = 1,
    batch_size: int = 256,
    latency_repeats: int = 15,
) -> TFLiteEvaluation:
    """Runs a `.tflite` file with LiteRT and compares it with the labels and the Keras model.

    Args:
        path: the `.tflite` file.
        data: inputs `x` (with `labels=`), a tuple `(x, y)` of arrays, or a finite
            `tf.data.Dataset` of `(x, y)` (batched or not).
        labels: class ids `(n,)` or one-hot `(n, classes)`, when `data` is an array.
        reference_model: the Keras model (Keras 3, tf_keras or a `Distiller`, whose student is
            used) the file was converted from; enables `agreement` and `max_abs_diff`.
        num_threads: interpreter threads, for the outputs and the latency.
        batch_size: examples per interpreter call for the accuracy pass.
        latency_repeats: timed blocks for the median latency (see `median_latency_ms`).

    Returns:
        A `TFLiteEvaluation`. `max_abs_diff` compares dequantized outputs for int8 files.

    Raises:
        ValueError: on inconsistent `data` / `labels` or an empty dataset.

    Example:
        >>> report = evaluate_tflite("student_int8.tflite", (x_test, y_test),
        ...                          reference_model=student)
        >>> report.accuracy, report.agreement, report.latency_ms
    """
    num_threads = validation.positive_int("num_threads", num_threads)
    batch_size = validation.positive_int("batch_size", batch_size)
    latency_repeats = validation.positive_int("latency_repeats", latency_repeats)
    details = _interpreter(path, 1).get_input_details()[0]
    io_dtype = np.dtype(details["dtype"]).name
    x, y = _as_arrays(data, labels, len(details["shape_signature"]))
    if len(x) == 0:
        raise ValueError("evaluate_tflite got no examples.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"Got {len(x)} inputs but {len(y)} labels.")
    outputs = tflite_predict(path, x, batch_size, num_threads)
    predicted = _top1(outputs)
    accuracy = reference_accuracy = agreement = max_abs_diff = None
    if y is not None:
        accuracy = float(np.mean(predicted == _labels_as_ids(y)))
    if reference_model is not None:
        reference = _reference_outputs(reference_model, x, batch_size)
        if reference.shape != outputs.shape:
            raise ValueError(
                f"reference_model outputs shape {reference.shape}, the file {outputs.shape}."
            )
        agreement = float(np.mean(predicted == _top1(reference)))
        max_abs_diff = float(np.max(np.abs(outputs - reference)))
        if y is not None:
            reference_accuracy = float(np.mean(_top1(reference) == _labels_as_ids(y)))
    return TFLiteEvaluation(
        path=str(path),
        size_bytes=Path(path).stat().st_size,
        num_examples=len(x),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        agreement=agreement,
        max_abs_diff=max_abs_diff,
        latency_ms=median_latency_ms(path, x[0], num_threads, latency_repeats),
        num_threads=num_threads,
        io_dtype=io_dtype,
    )


__all__ = [
    "TFLiteEvaluation",
    "evaluate_tflite",
    "float_compute_tensors",
    "median_latency_ms",
    "tflite_predict",
]
