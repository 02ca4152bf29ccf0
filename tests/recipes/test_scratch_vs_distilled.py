"""scratch_vs_distilled on real MNIST subsets: files, bookkeeping, learning, and a fair duel.

With `student_loss_weight=1` the distilled run optimises exactly the scratch loss, so both
students must end with the same weights: this proves they share initial weights, batches,
batch order and budget.
"""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_kd import models
from keras_kd.datasets import SHIPPED_MNIST_DIR, read_idx
from keras_kd.recipes import ScratchVsDistilledResult, scratch_vs_distilled


@pytest.fixture(scope="module")
def mnist_small():
    def images(name, n):
        return read_idx(SHIPPED_MNIST_DIR / name)[:n, ..., None].astype(np.float32) / 255.0

    def labels(name, n):
        return read_idx(SHIPPED_MNIST_DIR / name)[:n].astype(np.int64)

    train = (images("train-images-idx3-ubyte.gz", 2000), labels("train-labels-idx1-ubyte.gz", 2000))
    test = (images("t10k-images-idx3-ubyte.gz", 1000), labels("t10k-labels-idx1-ubyte.gz", 1000))
    return train, test


def test_trains_teacher_and_both_students_and_saves_them(tmp_path, mnist_small):
    train, test = mnist_small
    result = scratch_vs_distilled(
        models.mlp((128,), name="teacher"),
        lambda: models.mlp((64,), name="student"),
        train,
        test,
        temperature=4.0,
        student_loss_weight=0.1,
        epochs=3,
        batch_size=32,
        teacher_epochs=3,
        output_dir=tmp_path,
    )
    assert isinstance(result, ScratchVsDistilledResult)
    assert [s.name for s in result.summaries] == [
        "teacher",
        "student (scratch)",
        "student (distilled)",
    ]
    for summary, filename in zip(
        result.summaries, ("teacher.keras", "student_scratch.keras", "student.keras")
    ):
        path = tmp_path / filename
        assert summary.path == str(path)
        assert summary.file_size == path.stat().st_size > 0
        # Weights only (float32), no optimizer slots: the compiled scratch student and the
        # Distiller-trained one are measured alike.
        assert 4 * summary.params < summary.file_size < 4 * summary.params * 1.5 + 50_000
        assert summary.test_errors == round((1 - summary.test_accuracy) * len(test[1]))
    assert result.teacher.params == 784 * 128 + 128 + 1290
    assert result.scratch.params == result.distilled.params == 784 * 64 + 64 + 650
    assert len(result.teacher.history["val_accuracy"]) == 3
    assert len(result.scratch.history["val_accuracy"]) == 3
    assert len(result.distilled.history["val_accuracy"]) == 3
    assert result.settings["temperature"] == 4.0 and result.settings["train_examples"] == 2000
    # It learned (chance is 0.1).
    assert result.teacher.test_accuracy > 0.8, result.teacher
    assert result.distilled.test_accuracy > 0.75, result.distilled
    # The saved distilled student is the one that was measured.
    loaded = keras.models.load_model(tmp_path / "student.keras")
    errors = int(np.sum(np.argmax(loaded.predict(test[0], verbose=0), -1) != test[1]))
    assert errors == result.distilled.test_errors
    assert result.error_reduction == result.scratch.test_errors - result.distilled.test_errors


def test_hard_loss_only_distillation_reproduces_scratch(tmp_path, mnist_small):
    train, test = mnist_small
    teacher = models.mlp((32,), name="teacher")
    teacher.save(tmp_path / "given_teacher.keras")
    made = []

    def factory():
        made.append(models.mlp((16,), name=f"student_{len(made)}"))
        return made[-1]

    result = scratch_vs_distilled(
        str(tmp_path / "given_teacher.keras"),
        factory,
        train,
        test,
        student_loss_weight=1.0,
        epochs=2,
        batch_size=100,
        seed=3,
    )
    assert len(made) == 2
    for a, b in zip(made[0].get_weights(), made[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert result.scratch.test_errors == result.distilled.test_errors
    assert result.teacher.history == {} and result.settings["teacher_epochs"] == 0
    assert result.settings["teacher_path"].endswith("given_teacher.keras")
    assert all(s.path is None for s in result.summaries)  # no output_dir: measured only
    assert not any(Path(tmp_path).glob("student*.keras"))


def test_invalid_arguments(mnist_small):
    train, test = mnist_small
    teacher = models.mlp((8,), name="teacher")
    student = models.mlp((8,), name="student")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        scratch_vs_distilled(teacher, lambda: student, train, test, epochs=0)
    with pytest.raises(ValueError, match="teacher_epochs"):
        scratch_vs_distilled(teacher, lambda: student, train, test, teacher_epochs=-1)
    with pytest.raises(TypeError, match="train_data must be an"):
        scratch_vs_distilled(teacher, lambda: student, train[0], test)
    with pytest.raises(ValueError, match="same non-zero number"):
        scratch_vs_distilled(teacher, lambda: student, (train[0], train[1][:10]), test)
    with pytest.raises(ValueError, match="new keras.Model on every call"):
        scratch_vs_distilled(
            teacher,
            lambda: student,
            (train[0][:64], train[1][:64]),
            (test[0][:64], test[1][:64]),
            epochs=1,
        )
