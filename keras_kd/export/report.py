"""`deployment_report`: every deployable variant of a student, measured, as a table and a plot."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import keras
import numpy as np

from keras_kd import validation
from keras_kd.distiller import Distiller
from keras_kd.export.litert_eval import evaluate_tflite, float_compute_tensors
from keras_kd.export.optimize import (
    _target_sparsity,
    kernel_sparsity,
    pruning_distillation,
    quantization_aware_distillation,
    teacher_logits_of,
)
from keras_kd.export.tflite import to_tflite
from keras_kd.validation import writable_dir

_COLUMNS = (
    ("variant", "variant"),
    ("accuracy", "accuracy (%)"),
    ("delta", "Δ vs float student (pts)"),
    ("agreement", "top-1 agreement with float student (%)"),
    ("max_abs_diff", "max abs logit diff"),
    ("size_kib", "size (KiB)"),
    ("size_ratio", "size / float student"),
    ("gzip_kib", "gzip size (KiB)"),
    ("latency_ms", "latency (ms)"),
    ("integer_only", "int8 compute path"),
)


def _gzip_kib(path: Path) -> float:
    return len(gzip.compress(path.read_bytes(), compresslevel=9)) / 1024.0


def _row(name, path, x_test, y_test, reference, num_threads, float_size=None, note=""):
    report = evaluate_tflite(path, (x_test, y_test), reference_model=reference,
                             num_threads=num_threads)
    size_kib = report.size_bytes / 1024.0
    integer = "int8" in name or "QAT" in name or "pruned" in name
    return {
        "variant": name + (f" ({note})" if note else ""),
        "file": Path(path).name,
        "accuracy": 100.0 * report.accuracy,
        "agreement": None if report.agreement is None else 100.0 * report.agreement,
        "max_abs_diff": report.max_abs_diff,
        "size_kib": size_kib,
        "size_ratio": None if float_size is None else report.size_bytes / float_size,
        "gzip_kib": _gzip_kib(Path(path)),
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
    if key in ("size_kib", "gzip_kib"):
        return f"{value:.1f}"
    if key == "size_ratio":
        return f"{value:.3f}"
    if key == "max_abs_diff":
        return f"{value:.3g}"
    if key == "latency_ms":
        return f"{value:.3f}"
    return str(value)


class _Phases:
    """Prints a numbered heading per variant and its one-line result (only when `verbose`)."""

    def __init__(self, total: int, verbose: int):
        self.total, self.done, self.verbose = total, 0, verbose

    def start(self, text: str) -> None:
        self.done += 1
        if self.verbose:
            print(f"\n[{self.done}/{self.total}] {text}", flush=True)

    def outcome(self, row: dict) -> dict:
        if self.verbose:
            agreement = row.get("agreement")
            agrees = "" if agreement is None else f", {agreement:.2f}% agreement with Keras"
            print(f"    {row['variant']}: accuracy {row['accuracy']:.2f}%, "
                  f"{row['size_kib']:.1f} KiB{agrees}, {row['latency_ms']:.3f} ms per example",
                  flush=True)
        return row


def markdown_table(rows: list[dict]) -> str:
    """The rows of `deployment_report` as a Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|" + "|".join("---" if key == "variant" else "---:" for key, _ in _COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format(k, row.get(k)) for k, _ in _COLUMNS) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path, title: str):
    """Accuracy against file size, one marker and one legend entry per variant: no text sits
    next to the points, so nothing overlaps however close the variants are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    fig = Figure(figsize=(8.0, 6.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = "s^vDPXo*<>h"
    for k, row in enumerate(rows):
        ax.scatter(
            row["size_kib"],
            row["accuracy"],
            marker=markers[k % len(markers)],
            s=60,
            color=f"C{k % 10}",
            alpha=0.85,
            label=f"{row['variant']}: {row['size_kib']:,.1f} KiB, {row['accuracy']:.2f}%",
            zorder=3,
        )
    ax.set_xscale("log")
    sizes = [row["size_kib"] for row in rows]
    ax.set_xlim(min(sizes) / 1.4, max(sizes) * 1.4)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(".tflite file size (KiB = 1024 bytes; log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.savefig(path)
    return fig


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
    verbose: int = 0,
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
        title: heading of the Markdown file and the plot; name the dataset in it.
        verbose: when non-zero, print a numbered heading and a one-line result per variant,
            and pass `verbose` to the QAT / pruning `fit` calls (Keras verbosity).

    Returns:
        One dict per variant (the table rows).

    Example:
        >>> rows = deployment_report(student, x_train, y_train, x_test, y_test, "deploy",
        ...                          teacher=teacher)
    """
    # Every argument is checked before the first file is written.
    qat_epochs = validation.positive_int("qat_epochs", qat_epochs)
    num_calibration_examples = validation.positive_int(
        "num_calibration_examples", num_calibration_examples
    )
    num_threads = validation.positive_int("num_threads", num_threads)
    learning_rate = validation.positive("learning_rate", learning_rate)
    if prune:
        _target_sparsity(target_sparsity)
        prune_epochs = validation.positive_int("prune_epochs", prune_epochs)
    verbose = validation.one_of("verbose", verbose, (0, 1, 2))
    if isinstance(student, Distiller):
        teacher = teacher if teacher is not None else student.teacher
        student = student.student
    out = writable_dir("output_dir", output_dir)
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    calibration = x_train[np.random.default_rng(0).permutation(len(x_train))[
        :num_calibration_examples]]
    rows = []
    phases = _Phases((teacher is not None) + 5 + bool(prune), verbose)
    if teacher is not None:
        phases.start("teacher float32: converting and measuring with LiteRT")
        path = to_tflite(teacher, out / "teacher_float32.tflite")
        rows.append(phases.outcome(_row("teacher float32", path, x_test, y_test, None,
                                        num_threads)))
    phases.start("student float32: converting and measuring with LiteRT")
    float_path = to_tflite(student, out / "student_float32.tflite")
    float_size = float_path.stat().st_size
    rows.append(phases.outcome(_row("student float32", float_path, x_test, y_test, student,
                                    num_threads, float_size)))
    for mode, what in (
        ("float16", "float16 weights"),
        ("dynamic", "int8 weights, float activations"),
        ("int8", f"full integer, int8 input/output, {len(calibration)} calibration examples"),
    ):
        phases.start(f"student {mode}: converting ({what}) and measuring with LiteRT")
        path = to_tflite(student, out / f"student_{mode}.tflite", mode,
                         representative_data=calibration, int8_io=mode == "int8")
        rows.append(phases.outcome(_row(f"student {mode}", path, x_test, y_test, student,
                                        num_threads, float_size)))
    soft = teacher_logits_of(teacher if teacher is not None else student, x_train)
    source = "KD from teacher" if teacher is not None else "self-distillation"
    phases.start(f"student QAT int8: {qat_epochs} epoch(s) of quantization-aware training "
                 f"({source}), then full-integer conversion")
    qat = quantization_aware_distillation(student, x_train, y_train, teacher_logits=soft,
                                          epochs=qat_epochs, learning_rate=learning_rate,
                                          verbose=verbose)
    path = to_tflite(qat, out / "student_qat_int8.tflite", "int8",
                     representative_data=calibration, int8_io=True)
    rows.append(phases.outcome(_row("student QAT int8", path, x_test, y_test, student,
                                    num_threads, float_size, f"{source}, {qat_epochs} ep")))
    if prune:
        phases.start(f"student pruned int8: {prune_epochs} epoch(s) of pruning to "
                     f"{100 * target_sparsity:.0f}% sparsity ({source}), then full-integer "
                     "conversion")
        pruned = pruning_distillation(student, x_train, y_train, teacher_logits=soft,
                                      target_sparsity=target_sparsity, epochs=prune_epochs,
                                      learning_rate=learning_rate, verbose=verbose)
        sparsity = kernel_sparsity(pruned)
        path = to_tflite(pruned, out / "student_pruned_int8.tflite", "int8",
                         representative_data=calibration, int8_io=True)
        rows.append(phases.outcome(_row("student pruned int8", path, x_test, y_test, student,
                                        num_threads, float_size,
                                        f"{100 * sparsity:.0f}% sparse, {source}")))
    float_accuracy = rows[1 if teacher is not None else 0]["accuracy"]
    for row in rows:
        if not row["variant"].startswith("teacher"):
            row["delta"] = row["accuracy"] - float_accuracy
    text = (
        f"# {title}\n\n{len(x_test):,} test examples; LiteRT (`ai_edge_litert`) with "
        f"{num_threads} thread(s); latency = median single-example `invoke()` time. "
        "Agreement and logit difference are against the float Keras student.\n\n"
        + markdown_table(rows) + "\n\nSizes are in KiB (1 KiB = 1024 bytes).\n"
        "\n![accuracy against file size](deployment.png)\n"
    )
    (out / "deployment.md").write_text(text)
    _plot(rows, out / "deployment.png", title)
    return rows


__all__ = ["deployment_report", "markdown_table"]
