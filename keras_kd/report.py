"""Reports of a scratch-vs-distilled run: Markdown tables and a test-accuracy plot.

With several seeds (`scratch_vs_distilled(..., num_seeds=3)`) the report adds the mean and the
sample standard deviation of both students' test errors, and says in one sentence whether the
gain from distillation is larger than the seed-to-seed spread or within it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_kd.recipes.scratch_vs_distilled import ScratchVsDistilledResult

TABLE_HEADER = ("model", "params", "file size (KiB)", "test accuracy", "test errors")
SEED_TABLE_HEADER = (
    "model",
    "seeds",
    "test errors, mean ± std",
    "test accuracy, mean ± std",
    "test errors per seed",
)


def format_table(result: ScratchVsDistilledResult) -> str:
    """The Markdown table: one row per model (teacher, scratch student, distilled student).

    With several seeds, the students are those of the first seed (the saved files).

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


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (`ddof=1`; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def format_seed_table(result: ScratchVsDistilledResult) -> str:
    """Both students over all seeds: mean ± std of test errors and accuracy, and each seed.

    The last row is the per-seed difference (scratch errors - distilled errors).

    Returns:
        A Markdown table with the columns of `SEED_TABLE_HEADER`.
    """
    runs = result.seed_runs
    lines = [
        "| " + " | ".join(SEED_TABLE_HEADER) + " |",
        "|---|---:|---:|---:|---|",
    ]
    for kind in ("scratch", "distilled"):
        summaries = [getattr(run, kind) for run in runs]
        errors = mean_std([s.test_errors for s in summaries])
        accuracy = mean_std([s.test_accuracy for s in summaries])
        lines.append(
            f"| {summaries[0].name} | {len(runs)} | {errors[0]:.1f} ± {errors[1]:.1f} | "
            f"{accuracy[0]:.4f} ± {accuracy[1]:.4f} | "
            f"{', '.join(str(s.test_errors) for s in summaries)} |"
        )
    gain = mean_std(result.error_reductions)
    lines.append(
        f"| fewer errors when distilled | {len(runs)} | {gain[0]:.1f} ± {gain[1]:.1f} | — | "
        f"{', '.join(str(g) for g in result.error_reductions)} |"
    )
    return "\n".join(lines)


def spread_sentence(result: ScratchVsDistilledResult) -> str:
    """Whether the distillation gain is larger than the seed-to-seed spread, in words.

    "Within the spread" means the mean gain is at most the larger of the two students'
    standard deviations of test errors across seeds.
    """
    runs = result.seed_runs
    if len(runs) == 1:
        return (
            "Only one seed was run, so the seed-to-seed spread is not measured: the same student "
            "can differ by tens of test errors from one seed to the next, and a small difference "
            "may be noise. Repeat over several seeds (`num_seeds`) to measure it."
        )
    gain, gain_std = mean_std(result.error_reductions)
    spread = max(
        mean_std([run.scratch.test_errors for run in runs])[1],
        mean_std([run.distilled.test_errors for run in runs])[1],
    )
    direction = "fewer" if gain >= 0 else "more"
    seeds = ", ".join(str(s) for s in result.seeds)
    text = (
        f"Over {len(runs)} seeds ({seeds}) the distilled student makes {abs(gain):.1f} ± "
        f"{gain_std:.1f} {direction} test errors than the scratch student (mean ± sample "
        "standard deviation of the per-seed differences)."
    )
    if min(result.error_reductions) < 0 < max(result.error_reductions):
        text += " The sign of the difference changes from seed to seed."
    word = "gain" if gain >= 0 else "loss"
    if abs(gain) <= spread:
        effect = "helps" if gain >= 0 else "hurts"
        text += (
            f" The {word} is within the seed-to-seed spread (either student's test errors vary "
            f"with a standard deviation of up to {spread:.1f} between seeds), so these runs do "
            f"not show that distillation {effect}."
        )
    else:
        text += (
            f" The {word} is larger than the seed-to-seed spread (a standard deviation of at "
            f"most {spread:.1f} test errors for either student)."
        )
    return text


def format_report(result: ScratchVsDistilledResult, title: str = "Scratch vs. distilled") -> str:
    """The full Markdown report: title, tables, the comparison in words, the settings."""
    settings = "\n".join(f"- {key}: {value}" for key, value in result.settings.items())
    delta = result.error_reduction
    seed = f", seed {result.seed_runs[0].seed}" if len(result.seed_runs) > 1 else ""
    verdict = (
        f"The distilled student makes {delta} fewer test errors than the scratch student"
        if delta >= 0
        else f"The distilled student makes {-delta} more test errors than the scratch student"
    )
    seeds = (
        f"## Over {len(result.seed_runs)} seeds\n\n{format_seed_table(result)}\n\n"
        if len(result.seed_runs) > 1
        else ""
    )
    return (
        f"# {title}\n\n"
        f"{format_table(result)}\n\n"
        f"{verdict} (out of {result.num_test_examples:,} test examples{seed}). Both students "
        "start from the same initial weights and train on the same batches for the same number "
        "of epochs; only the loss differs.\n\n"
        f"{seeds}{spread_sentence(result)}\n\n"
        f"## Settings\n\n{settings}\n\n"
        "![test accuracy after each epoch](report.png)\n"
    )


def _accuracy_panel(ax, result: ScratchVsDistilledResult) -> None:
    from matplotlib.ticker import MaxNLocator

    runs = result.seed_runs
    for kind, style, color in (("scratch", "o-", "C0"), ("distilled", "s-", "C1")):
        curves = [getattr(run, kind).history.get("val_accuracy", []) for run in runs]
        length = min(len(c) for c in curves)
        if not length:
            continue
        values = np.array([c[:length] for c in curves], dtype=np.float64)
        epochs = np.arange(1, length + 1)
        name = getattr(result, kind).name
        if len(runs) == 1:
            ax.plot(epochs, values[0], style, color=color, markersize=4, label=name)
        else:
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1)
            ax.plot(epochs, mean, style, color=color, markersize=4,
                    label=f"{name}, mean ± std of {len(runs)} seeds")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.axhline(
        result.teacher.test_accuracy,
        color="grey",
        linestyle="--",
        label=f"teacher, final ({result.teacher.test_accuracy:.4f})",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (after each epoch)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _errors_panel(ax, result: ScratchVsDistilledResult) -> None:
    runs = result.seed_runs
    scratch = [run.scratch.test_errors for run in runs]
    distilled = [run.distilled.test_errors for run in runs]
    for a, b in zip(scratch, distilled):  # one grey line per seed: the pairs are matched
        ax.plot([0, 1], [a, b], color="grey", alpha=0.5, linewidth=1)
    for x, values, color in ((0, scratch, "C0"), (1, distilled, "C1")):
        mean, std = mean_std(values)
        ax.scatter([x] * len(values), values, color=color, s=18, zorder=3)
        ax.errorbar(x + 0.12, mean, yerr=std, fmt="D", color=color, capsize=4, zorder=3)
        ax.annotate(f"{mean:.1f} ± {std:.1f}", (x + 0.18, mean), va="center", fontsize=8)
    ax.set_xticks([0, 1], ["scratch", "distilled"])
    ax.set_xlim(-0.4, 1.8)
    ax.set_ylabel(f"test errors (of {result.num_test_examples:,})")
    ax.set_title(f"After the last epoch, {len(runs)} seeds (mean ± std)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")


def plot_history(
    result: ScratchVsDistilledResult,
    path: str | os.PathLike,
    title: str = "Scratch vs. distilled",
) -> Path:
    """Plots both students' test accuracy after each epoch, and the teacher's final accuracy.

    With several seeds, each student's curve is the mean over seeds with a ± std band, and a
    second panel shows every seed's final test errors (paired by seed) with mean ± std.
    Uses matplotlib's Agg canvas directly, so it never needs a display nor changes the global
    backend.

    Args:
        result: what `scratch_vs_distilled` returned.
        path: the PNG file to write.
        title: the plot's title; name the dataset in it.

    Returns:
        `path` as a `Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    several = len(result.seed_runs) > 1
    fig = Figure(figsize=(10.0, 4.0) if several else (6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    if several:
        axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        _accuracy_panel(axes[0], result)
        _errors_panel(axes[1], result)
        fig.suptitle(title)
    else:
        ax = fig.add_subplot(1, 1, 1)
        _accuracy_panel(ax, result)
        ax.set_title(title)
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
        title: heading of the Markdown report and title of the plot; name the dataset in it.

    Returns:
        `(report_md_path, report_png_path)`.

    Example:
        >>> result = keras_kd.recipes.scratch_vs_distilled(teacher, make_student, train, test)
        >>> keras_kd.report.write_report(result, "out/", title="MNIST: scratch vs. distilled")
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_history(result, out / "report.png", title)
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
