"""`markdown_table` and the plot of the deployment report; its argument checks (the full report
runs in benchmarks/)."""

from __future__ import annotations

import keras
import matplotlib.image
import pytest

from keras_kd.export import deployment_report, markdown_table
from keras_kd.export.report import _plot


def test_markdown_table_rows_and_formats():
    rows = [
        {"variant": "teacher float32", "accuracy": 99.123, "size_kib": 1000.0,
         "gzip_kib": 900.0, "latency_ms": 0.5},
        {"variant": "student int8", "accuracy": 98.5, "delta": -0.25, "agreement": 99.5,
         "max_abs_diff": 0.123, "size_kib": 30.04, "size_ratio": 0.2601, "gzip_kib": 20.0,
         "latency_ms": 0.01234, "integer_only": True},
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| variant | accuracy (%)")
    assert "| size (KiB) |" in lines[0] and "| gzip size (KiB) |" in lines[0]
    assert "KB" not in lines[0].replace("KiB", "")
    assert lines[2] == "| teacher float32 | 99.12 | — | — | — | 1000.0 | — | 900.0 | 0.500 | — |"
    assert lines[3] == (
        "| student int8 | 98.50 | -0.25 | 99.50 | 0.123 | 30.0 | 0.260 | 20.0 | 0.012 | yes |"
    )


def test_plot_labels_every_variant_in_a_legend_with_readable_kib_ticks(tmp_path):
    # Variants a few KiB apart with near-equal accuracy: text next to the points would overlap.
    rows = [
        {"variant": "teacher float32", "accuracy": 99.1, "size_kib": 6371.5},
        {"variant": "student float32", "accuracy": 98.4, "size_kib": 797.5},
        {"variant": "student float16", "accuracy": 98.4, "size_kib": 400.6},
        {"variant": "student dynamic", "accuracy": 98.3, "size_kib": 205.2},
        {"variant": "student int8", "accuracy": 98.3, "size_kib": 208.5},
        {"variant": "student QAT int8 (KD from teacher, 1 ep)", "accuracy": 98.4,
         "size_kib": 201.8},
    ]
    fig = _plot(rows, tmp_path / "deployment.png", "Deployment (mnist)")
    ax = fig.axes[0]
    assert len(ax.texts) == 0  # no labels drawn next to the points
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[4] == "student int8: 208.5 KiB, 98.30%" and len(legend) == len(rows)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [
        label.get_text()
        for label, x in zip(ax.get_xticklabels(), ax.get_xticks())
        if low <= x <= high
    ]
    assert ticks == ["200", "500", "1,000", "2,000", "5,000"]
    assert "KiB" in ax.get_xlabel() and "log" in ax.get_xlabel()
    assert ax.get_title() == "Deployment (mnist)"
    assert matplotlib.image.imread(tmp_path / "deployment.png").shape[:2] == (720, 960)


def test_an_unwritable_output_dir_is_refused_before_any_conversion(tmp_path):
    (tmp_path / "a_file").write_text("")
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x, y = [[0.0] * 4], [0]
    with pytest.raises(ValueError, match="output_dir must be a directory where files can be"):
        deployment_report(student, x, y, x, y, tmp_path / "a_file" / "deploy")
    with pytest.raises(ValueError, match="verbose must be one of"):
        deployment_report(student, x, y, x, y, tmp_path / "deploy", verbose=5)
    assert not (tmp_path / "deploy").exists()
