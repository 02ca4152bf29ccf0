"""keras_kd.report: the Markdown tables parse back to the result's numbers; the PNGs are real;
the report says whether a gain over several seeds exceeds their spread."""

import matplotlib.image
import numpy as np
import pytest

from keras_kd import report
from keras_kd.recipes.scratch_vs_distilled import (
    ModelSummary,
    ScratchVsDistilledResult,
    SeedRun,
)


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
    assert "Only one seed was run, so the seed-to-seed spread is not measured" in text
    assert "## Over" not in text


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


def _seeded(scratch_errors, distilled_errors):
    """A result over several seeds with the given per-seed test errors (of 10000)."""
    runs = [
        SeedRun(
            seed,
            _summary("student (scratch)", 101_770, 420_000, a, [0.93, 0.95, 1 - a / 10000]),
            _summary("student (distilled)", 101_770, 420_000, b, [0.92, 0.96, 1 - b / 10000]),
        )
        for seed, (a, b) in enumerate(zip(scratch_errors, distilled_errors))
    ]
    return ScratchVsDistilledResult(
        teacher=_summary("teacher", 1_630_000, 6_600_000, 80, []),
        scratch=runs[0].scratch,
        distilled=runs[0].distilled,
        settings={"seed": 0, "num_seeds": len(runs)},
        num_test_examples=10000,
        seed_runs=runs,
    )


def test_several_seeds_give_mean_and_std_and_a_gain_beyond_the_spread(tmp_path):
    result = _seeded([177, 191, 190], [155, 149, 153])
    md, png = report.write_report(result, tmp_path, title="MNIST")
    text = md.read_text()
    gains = [22, 42, 37]
    mean, std = np.mean(gains), np.std(gains, ddof=1)
    assert result.error_reductions == gains
    assert "## Over 3 seeds" in text
    assert f"| student (scratch) | 3 | {np.mean([177, 191, 190]):.1f} ± " in text
    assert "| 177, 191, 190 |" in text and "| 155, 149, 153 |" in text
    assert f"| fewer errors when distilled | 3 | {mean:.1f} ± {std:.1f} |" in text
    assert f"makes {mean:.1f} ± {std:.1f} fewer test errors" in text
    assert "The gain is larger than the seed-to-seed spread" in text
    assert "within" not in text
    # The first table still holds the first seed's (saved) models.
    assert [int(r["test errors"]) for r in report.read_table(md)] == [80, 177, 155]
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (400, 1000)  # accuracy curves and the per-seed errors panel


def test_a_gain_within_the_spread_is_called_so():
    result = _seeded([180, 200, 215], [185, 190, 205])  # gains -5, 10, 10; spreads ~ 17.6, 10
    text = report.format_report(result)
    assert "makes 5.0 ± 8.7 fewer test errors" in text
    assert "The sign of the difference changes from seed to seed." in text
    assert "The gain is within the seed-to-seed spread" in text
    assert "so these runs do not show that distillation helps." in text


def test_a_loss_beyond_the_spread_is_called_a_loss():
    text = report.spread_sentence(_seeded([150, 152, 151], [190, 195, 200]))
    assert "makes 44.0 ± 4.6 more test errors" in text  # differences -40, -43, -49
    assert "The loss is larger than the seed-to-seed spread" in text


def test_mean_std_uses_the_sample_standard_deviation():
    assert report.mean_std([1, 2, 3]) == (2.0, 1.0)
    assert report.mean_std([7]) == (7.0, 0.0)
