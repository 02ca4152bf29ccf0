"""keras_kd.report: the Markdown table parses back to the result's numbers; the PNG is real."""

import matplotlib.image
import pytest

from keras_kd import report
from keras_kd.recipes.scratch_vs_distilled import ModelSummary, ScratchVsDistilledResult


def _summary(name, params, size, errors, val_accuracy):
    return ModelSummary(
        name=name,
        params=params,
        file_size=size,
        test_accuracy=1 - errors / 10000,
        test_errors=errors,
        path=None,
        history={"val_accuracy": val_accuracy},
    )


def _result(scratch_errors=230, distilled_errors=207):
    return ScratchVsDistilledResult(
        teacher=_summary("teacher", 1_630_000, 6_600_000, 80, []),
        scratch=_summary(
            "student (scratch)", 101_770, 420_000, scratch_errors, [0.93, 0.95, 0.977]
        ),
        distilled=_summary(
            "student (distilled)", 101_770, 420_000, distilled_errors, [0.92, 0.96, 0.979]
        ),
        settings={"temperature": 4.0, "epochs": 3},
        num_test_examples=10000,
    )


def test_write_report_table_round_trips(tmp_path):
    md, png = report.write_report(_result(), tmp_path / "out", title="MNIST")
    assert md == tmp_path / "out" / "report.md" and png == tmp_path / "out" / "report.png"
    rows = report.read_table(md)
    assert [r["model"] for r in rows] == ["teacher", "student (scratch)", "student (distilled)"]
    assert [int(r["test errors"]) for r in rows] == [80, 230, 207]
    assert [int(r["params"].replace(",", "")) for r in rows] == [1_630_000, 101_770, 101_770]
    assert float(rows[1]["test accuracy"]) == pytest.approx(0.977)
    assert float(rows[0]["file size (KiB)"]) == pytest.approx(6_600_000 / 1024, abs=0.05)
    text = md.read_text()
    assert text.startswith("# MNIST")
    assert "makes 23 fewer test errors" in text and "- temperature: 4.0" in text


def test_report_states_when_distillation_loses(tmp_path):
    md, _ = report.write_report(_result(scratch_errors=200, distilled_errors=215), tmp_path)
    assert "makes 15 more test errors" in md.read_text()


def test_plot_is_a_png_image(tmp_path):
    png = report.plot_history(_result(), tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (400, 640)


def test_read_table_rejects_a_file_without_the_table(tmp_path):
    (tmp_path / "x.md").write_text("# nothing\n| a | b |\n|---|---|\n")
    with pytest.raises(ValueError, match="no table"):
        report.read_table(tmp_path / "x.md")
