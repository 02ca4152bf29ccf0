"""`deployment_report`: every deployable variant of a student, measured, as a table and a plot."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import keras
import numpy as np

from keras_kd.distiller import Distiller
from keras_kd.export.litert_eval import evaluate_tflite, float_compute_tensors
from keras_kd.export.optimize import (
    kernel_sparsity,
    pruning_distillation,
    quantization_aware_distillation,
    teacher_logits_of,
)
from keras_kd.export.tflite import to_tflite

_COLUMNS = (
    ("variant", "variant"),
    ("accuracy", "accuracy (%)"),
    ("delta", "Δ vs float student (pts)"),
    ("agreement", "top-1 agreement with float student (%)"),
    ("max_abs_diff", "max abs logit diff"),
    ("size_kb", "size (KB)"),
    ("size_ratio", "size / float student"),
    ("gzip_kb", "gzip size (KB)"),
    ("latency_ms", "latency (ms)"),
    ("integer_only", "int8 compute path"),
)


def _gzip_kb(path: Path) -> float:
    return len(gzip.compress(path.read_bytes(), compresslevel=9)) / 1024.0


def _row(name, path, x_test, y_test, reference, num_threads, float_size=None, note=""):
    report = evaluate_tflite(path, (x_test, y_test), reference_model=reference,
                             num_threads=num_threads)
    size_kb = report.size_bytes / 1024.0
    integer = "int8" in name or "QAT" in name or "pruned" in name
    return {
        "variant": name + (f" ({note})" if note else ""),
        "file": Path(path).name,
        "accuracy": 100.0 * report.accuracy,
        "agreement": None if report.agreement is None else 100.0 * report.agreement,
        "max_abs_diff": report.max_abs_diff,
        "size_kb": size_kb,
        "size_ratio": None if float_size is None else report.size_bytes / float_size,
        "gzip_kb": _gzip_kb(Path(path)),
        "latency_ms": report.latency_ms,
        "integer_only": (not float_compute_tensors(path)) if integer else None,
        "num_threads": report.num_threads,
    }


def _format(key, value) -> str:
    if value is None:
        return "—"
    if key == "integer_only":
        return "yes" if value else "no"
    if key in ("accuracy", "agreement"):
        return f"{value:.2f}"
    if key == "delta":
        return f"{value:+.2f}"
    if key in ("size_kb", "gzip_kb"):
        return f"{value:.1f}"
    if key == "size_ratio":
        return f"{value:.3f}"
    if key == "max_abs_diff":
        return f"{value:.3g}"
    if key == "latency_ms":
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The rows of `deployment_report` as a Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|" + "|".join("---" if key == "variant" else "---:" for key, _ in _COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format(k, row.get(k)) for k, _ in _COLUMNS) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        marker = "s" if row["variant"].startswith("teacher") else "o"
        ax.scatter(row["size_kb"], row["accuracy"], marker=marker)
        ax.annotate(row["variant"].split(" (")[0], (row["size_kb"], row["accuracy"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(".tflite size (KB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def deployment_report(
    student,
    x_train,
    y_train,
    x_test,
    y_test,
    output_dir: str | os.PathLike,
    teacher: keras.Model | None = None,
    qat_epochs: int = 1,
    prune: bool = True,
    target_sparsity: float = 0.5,
    prune_epochs: int = 1,
    num_calibration_examples: int = 300,
    num_threads: int = 1,
    learning_rate: float = 1e-4,
    title: str = "Deployment",
) -> list[dict]:
    """Exports every variant of a student, measures it with LiteRT and writes a report.

    Writes to `output_dir`: `student_{float32,float16,dynamic,int8}.tflite`,
    `student_qat_int8.tflite`, `student_pruned_int8.tflite` (if `prune`), `teacher_float32.tflite`
    (if `teacher`), `deployment.md` (the table) and `deployment.png` (accuracy vs size).

    The QAT and pruned variants are fine-tuned with the KD loss on `x_train` against the teacher's
    cached logits (or, without a teacher, the float student's own logits), then exported as full
    int8 with int8 I/O, like the post-training int8 variant. Calibration uses the first
    `num_calibration_examples` of a fixed random permutation of `x_train`.

    Args:
        student: the distilled Keras 3 student (logits output) or a `keras_kd.Distiller`.
        x_train, y_train: training data for calibration and fine-tuning (float inputs, class ids).
        x_test, y_test: evaluation data.
        output_dir: directory for the files.
        teacher: optional Keras 3 teacher, for the comparison row and the soft targets.
        qat_epochs: epochs of quantization-aware distillation.
        prune: whether to build the pruned variant.
        target_sparsity: its final sparsity.
        prune_epochs: epochs of pruning distillation.
        num_calibration_examples: representative examples for int8 conversion.
        num_threads: LiteRT threads for outputs and latency.
        learning_rate: Adam learning rate of the QAT / pruning fine-tuning.
        title: heading of the Markdown file and the plot.

    Returns:
        One dict per variant (the table rows).

    Example:
        >>> rows = deployment_report(student, x_train, y_train, x_test, y_test, "deploy",
        ...                          teacher=teacher)
    """
    if isinstance(student, Distiller):
        teacher = teacher if teacher is not None else student.teacher
        student = student.student
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    calibration = x_train[np.random.default_rng(0).permutation(len(x_train))[
        :num_calibration_examples]]
    rows = []
    if teacher is not None:
        path = to_tflite(teacher, out / "teacher_float32.tflite")
        rows.append(_row("teacher float32", path, x_test, y_test, None, num_threads))
    float_path = to_tflite(student, out / "student_float32.tflite")
    float_size = float_path.stat().st_size
    rows.append(_row("student float32", float_path, x_test, y_test, student, num_threads,
                     float_size))
    for mode in ("float16", "dynamic", "int8"):
        path = to_tflite(student, out / f"student_{mode}.tflite", mode,
                         representative_data=calibration, int8_io=mode == "int8")
        rows.append(_row(f"student {mode}", path, x_test, y_test, student, num_threads,
                         float_size))
    soft = teacher_logits_of(teacher if teacher is not None else student, x_train)
    source = "KD from teacher" if teacher is not None else "self-distillation"
    qat = quantization_aware_distillation(student, x_train, y_train, teacher_logits=soft,
                                          epochs=qat_epochs, learning_rate=learning_rate)
    path = to_tflite(qat, out / "student_qat_int8.tflite", "int8",
                     representative_data=calibration, int8_io=True)
    rows.append(_row("student QAT int8", path, x_test, y_test, student, num_threads, float_size,
                     f"{source}, {qat_epochs} ep"))
    if prune:
        pruned = pruning_distillation(student, x_train, y_train, teacher_logits=soft,
                                      target_sparsity=target_sparsity, epochs=prune_epochs,
                                      learning_rate=learning_rate)
        sparsity = kernel_sparsity(pruned)
        path = to_tflite(pruned, out / "student_pruned_int8.tflite", "int8",
                         representative_data=calibration, int8_io=True)
        rows.append(_row("student pruned int8", path, x_test, y_test, student, num_threads,
                         float_size, f"{100 * sparsity:.0f}% sparse, {source}"))
    float_accuracy = rows[1 if teacher is not None else 0]["accuracy"]
    for row in rows:
        if not row["variant"].startswith("teacher"):
            row["delta"] = row["accuracy"] - float_accuracy
    text = (
        f"# {title}\n\n{len(x_test)} test examples; LiteRT (`ai_edge_litert`) with "
        f"{num_threads} thread(s); latency = median single-example `invoke()` time. "
        "Agreement and logit difference are against the float Keras student.\n\n"
        + markdown_table(rows) + "\n"
    )
    (out / "deployment.md").write_text(text)
    _plot(rows, out / "deployment.png", title)
    return rows


__all__ = ["deployment_report", "markdown_table"]
