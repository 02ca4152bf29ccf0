"""examples/distill_mnist.py end to end on a tiny budget: real MNIST built offline, all files."""

import importlib.util
from pathlib import Path

import keras
import pytest
from absl import flags
from absl.testing import flagsaver

from keras_kd import report

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distill_mnist.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("distill_mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the flags once per session
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["distill_mnist"])
    return module


def test_main_writes_models_and_a_parsable_report(example, tmp_path):
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        output_dir=str(out),
        data_dir=str(tmp_path / "tfds"),  # built from the shipped MNIST files, offline
        train_examples=600,
        test_examples=300,
        epochs=1,
        teacher_epochs=1,
        batch_size=64,
        student_units=["16"],
    ):
        example.main(["distill_mnist"])
    for name in (
        "teacher.keras",
        "student.keras",
        "student_scratch.keras",
        "report.md",
        "report.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = report.read_table(out / "report.md")
    assert [r["model"] for r in rows] == ["teacher", "student (scratch)", "student (distilled)"]
    for row in rows:
        errors, accuracy = int(row["test errors"]), float(row["test accuracy"])
        assert 0 <= errors <= 300
        assert accuracy == pytest.approx(1 - errors / 300, abs=1e-4)
    student = keras.models.load_model(out / "student.keras")
    assert student.count_params() == int(rows[2]["params"].replace(",", ""))
    assert student.get_layer("dense_0").units == 16

    # A second run reuses the saved teacher through --teacher_path (no teacher training).
    with flagsaver.flagsaver(
        output_dir=str(tmp_path / "again"),
        data_dir=str(tmp_path / "tfds"),
        teacher_path=str(out / "teacher.keras"),
        train_examples=300,
        test_examples=300,
        epochs=1,
        student_units=["8"],
        temperature=8.0,
    ):
        example.main(["distill_mnist"])
    again = report.read_table(tmp_path / "again" / "report.md")
    assert again[0]["test errors"] == rows[0]["test errors"]  # the same teacher
    assert "teacher_path" in (tmp_path / "again" / "report.md").read_text()
