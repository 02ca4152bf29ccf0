"""Reports of a scratch-vs-distilled run: a Markdown table and a validation-accuracy plot."""

from __future__ import annotations

import os
from pathlib import Path

from keras_kd.recipes.scratch_vs_distilled import ScratchVsDistilledResult

TABLE_HEADER = ("model", "params", "file size (KiB)", "test accuracy", "test errors")


def format_table(result: ScratchVsDistilledResult) -> str:
    """The Markdown table: one row per model (teacher, scratch student, distilled student).

    Args:
        result: what `keras_kd.recipes.scratch_vs_distilled` returned.

    Returns:
        A Markdown table with the columns of `TABLE_HEADER`.
    """
    lines = [
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in result.summaries:
        lines.append(
            f"| {s.name} | {s.params:,} | {s.file_size / 1024:.1f} | {s.test_accuracy:.4f} | "
            f"{s.test_errors} |"
        )
    return "\n".join(lines)


def format_report(result: ScratchVsDistilledResult, title: str = "Scratch vs. distilled") -> str:
    """The full Markdown report: title, table, the comparison in one sentence, the settings."""
    settings = "\n".join(f"- {key}: {value}" for key, value in result.settings.items())
    delta = result.error_reduction
    verdict = (
        f"The distilled student makes {delta} fewer test errors than the scratch student"
        if delta >= 0
        else f"The distilled student makes {-delta} more test errors than the scratch student"
    )
    return (
        f"# {title}\n\n"
        f"{format_table(result)}\n\n"
        f"{verdict} (out of {result.num_test_examples} test examples). Both students start from "
        "the same initial weights and train on the same batches for the same number of epochs; "
        "only the loss differs.\n\n"
        f"## Settings\n\n{settings}\n\n![validation accuracy](report.png)\n"
    )


def plot_history(result: ScratchVsDistilledResult, path: str | os.PathLike) -> Path:
    """Plots per-epoch validation accuracy of both students and the teacher's final accuracy.

    Uses matplotlib's Agg canvas directly, so it never needs a display nor changes the global
    backend.

    Args:
        result: what `scratch_vs_distilled` returned.
        path: the PNG file to write.

    Returns:
        `path` as a `Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for summary, style in ((result.scratch, "o-"), (result.distilled, "s-")):
        values = summary.history.get("val_accuracy", [])
        ax.plot(range(1, len(values) + 1), values, style, label=summary.name)
    ax.axhline(
        result.teacher.test_accuracy,
        color="grey",
        linestyle="--",
        label=f"teacher ({result.teacher.test_accuracy:.4f})",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title("Student trained from scratch vs. distilled")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(
    result: ScratchVsDistilledResult,
    output_dir: str | os.PathLike,
    title: str = "Scratch vs. distilled",
) -> tuple[Path, Path]:
    """Writes `report.md` and `report.png` into `output_dir`.

    Args:
        result: what `keras_kd.recipes.scratch_vs_distilled` returned.
        output_dir: directory to write into (created if needed).
        title: heading of the Markdown report.

    Returns:
        `(report_md_path, report_png_path)`.

    Example:
        >>> result = keras_kd.recipes.scratch_vs_distilled(teacher, make_student, train, test)
        >>> keras_kd.report.write_report(result, "out/")
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_history(result, out / "report.png")
    md = out / "report.md"
    md.write_text(format_report(result, title))
    return md, png


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Parses the model table of a `report.md` back into one dict per row (string values).

    Raises:
        ValueError: if the file holds no table with the `TABLE_HEADER` columns.
    """
    rows, header = [], None
    for line in Path(path).read_text().splitlines():
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if tuple(cells) == TABLE_HEADER:
                header = cells
        elif not set("".join(cells)) <= set("-:"):
            rows.append(dict(zip(header, cells)))
    if header is None:
        raise ValueError(f"{path} holds no table with columns {TABLE_HEADER}.")
    return rows
