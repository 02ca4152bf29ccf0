"""scratch_vs_distilled on real MNIST subsets: files, bookkeeping, learning, and a fair duel.

With `student_loss_weight=1` the distilled run optimises exactly the scratch loss, so both
students must end with the same weights: this proves they share initial weights, batches,
batch order and budget. A seeded run repeated in the same process gives the same weights bit
for bit, and every argument is checked before anything is built, trained or written.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

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


def test_custom_optimizer_and_callbacks_serve_both_students(mnist_small):
    """`optimizer=` / `callbacks=` factories: one fresh optimizer and callback list per student
    run, used for every step; with alpha = 1 the two SGD runs still end identical."""
    train, test = _subset(mnist_small[0], 500), _subset(mnist_small[1], 100)
    made, optimizers, epochs_seen = [], [], []

    def factory():
        made.append(models.mlp((16,), name=f"student_{len(made)}"))
        return made[-1]

    def sgd():
        optimizers.append(keras.optimizers.SGD(0.05, momentum=0.5))
        return optimizers[-1]

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_seen.append((id(self), epoch))

    result = scratch_vs_distilled(
        models.mlp((32,), name="teacher"), factory, train, test, student_loss_weight=1.0,
        epochs=2, batch_size=100, optimizer=sgd, callbacks=lambda: [Record()])
    assert len(optimizers) == 2 and optimizers[0] is not optimizers[1]
    assert made[0].optimizer is optimizers[0]
    assert [int(o.iterations.numpy()) for o in optimizers] == [10, 10]  # 2 epochs x 5 batches
    assert [e for _, e in epochs_seen] == [0, 1, 0, 1]
    assert len({i for i, _ in epochs_seen}) == 2  # a fresh callback per fit
    for a, b in zip(made[0].get_weights(), made[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert result.settings["student_optimizer"] == "optimizer="


def _invert(images):
    return 1.0 - images


def _trained_students(train, test, **kwargs):
    made = []

    def factory():
        made.append(models.mlp((16,), name=f"student_{len(made)}"))
        return made[-1]

    keras.utils.set_random_seed(7)
    teacher = models.mlp((32,), name="teacher")
    teacher.set_weights([np.random.default_rng(0).normal(0, 0.3, w.shape).astype(np.float32)
                         for w in teacher.get_weights()])
    result = scratch_vs_distilled(teacher, factory, train, test, temperature=4.0,
                                  student_loss_weight=0.3, epochs=2, batch_size=50, seed=5,
                                  optimizer=lambda: keras.optimizers.SGD(0.1), **kwargs)
    return made, result


def test_student_augment_trains_both_students_and_the_teacher_on_the_transformed_batch(
    mnist_small,
):
    """With `student_augment=f`, both students end exactly where they end without it on
    `f(x)`: the scratch student trained on f(x), and the teacher's soft targets taken on f(x)
    (live), not on x (cached logits of the untransformed images would differ)."""
    train, test = _subset(mnist_small[0], 300), _subset(mnist_small[1], 100)
    augmented, result = _trained_students(train, test, student_augment=_invert)
    reference, _ = _trained_students((_invert(train[0]), train[1]), test)
    plain, _ = _trained_students(train, test)
    for model, expected, other in zip(augmented, reference, plain):
        for a, b in zip(model.get_weights(), expected.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(),
                                                        other.get_weights())) > 1e-2
    assert result.settings["student_augment"] == "_invert"


def test_student_augment_gives_both_students_the_same_random_draws(mnist_small):
    """A random transform: with alpha = 1 the two students still end identical, so they saw
    the same transformed batches."""
    train, test = _subset(mnist_small[0], 300), _subset(mnist_small[1], 100)

    def noise(images):
        return images + tf.random.uniform(tf.shape(images), -0.3, 0.3)

    made, _ = _trained_students(train, test, student_augment=noise)
    unaugmented, _ = _trained_students(train, test)
    made_alpha_1 = []

    def factory():
        made_alpha_1.append(models.mlp((16,), name=f"s{len(made_alpha_1)}"))
        return made_alpha_1[-1]

    scratch_vs_distilled(models.mlp((32,), name="teacher"), factory, train, test,
                         student_loss_weight=1.0, epochs=2, batch_size=50, seed=5,
                         student_augment=noise, optimizer=lambda: keras.optimizers.SGD(0.1))
    for a, b in zip(made_alpha_1[0].get_weights(), made_alpha_1[1].get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # ... and the noise was applied (the scratch student differs from the unaugmented one).
    assert max(np.abs(a - b).max() for a, b in zip(made[0].get_weights(),
                                                    unaugmented[0].get_weights())) > 1e-3


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


def _subset(data, n):
    return data[0][:n], data[1][:n]


def _small_teacher():
    return models.cnn((4, 8), dense_units=16, dropout=0.5, name="teacher")


def _student_with_dropout():
    return models.mlp((16,), dropout=0.2, name="student")


def _weights(path):
    return keras.models.load_model(path).get_weights()


def test_seeded_runs_are_reproducible_bit_for_bit(tmp_path, mnist_small):
    train, test = _subset(mnist_small[0], 1000), _subset(mnist_small[1], 300)
    budget = dict(epochs=2, batch_size=64, teacher_epochs=1, seed=5)
    first = scratch_vs_distilled(
        _small_teacher, _student_with_dropout, train, test, num_seeds=2,
        output_dir=tmp_path / "a", **budget,
    )
    keras.utils.set_random_seed(999)  # other global random state in between must not matter
    np.random.default_rng(3).normal(size=100)
    second = scratch_vs_distilled(
        _small_teacher, _student_with_dropout, train, test, output_dir=tmp_path / "b", **budget
    )
    for name in ("teacher.keras", "student_scratch.keras", "student.keras"):
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert len(a) == len(b) > 0, name
        for x, y in zip(a, b):
            assert np.array_equal(x, y), name
    assert first.teacher.history == second.teacher.history
    assert first.seed_runs[0].scratch.history == second.seed_runs[0].scratch.history
    assert first.seed_runs[0].distilled.history == second.seed_runs[0].distilled.history

    # The second seed is a different run (weights and batch order), measured but not saved.
    assert first.seeds == [5, 6] and second.seeds == [5]
    assert first.settings["num_seeds"] == 2 and first.settings["deterministic ops"] is True
    assert first.seed_runs[1].scratch.history != first.seed_runs[0].scratch.history
    assert first.seed_runs[1].scratch.path is None
    assert first.seed_runs[1].distilled.file_size == first.distilled.file_size
    assert first.error_reductions == [
        run.scratch.test_errors - run.distilled.test_errors for run in first.seed_runs
    ]


def _unwritable(tmp_path):
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "out"  # a directory cannot be made under a regular file


BAD_ARGUMENTS = [
    ({"temperature": -1.0}, ValueError, "temperature must be a finite real number > 0"),
    ({"temperature": "4"}, TypeError, "temperature must be a finite real number > 0"),
    ({"student_loss_weight": 1.5}, ValueError, r"student_loss_weight must be a real number in"),
    ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
    ({"epochs": 2.0}, TypeError, "epochs must be a positive integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite real number > 0"),
    ({"teacher_epochs": -1}, ValueError, "teacher_epochs must be a non-negative integer"),
    ({"student_augment": "jitter"}, TypeError, "student_augment must be a batch-wise x -> x"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
    ({"num_seeds": 0}, ValueError, "num_seeds must be a positive integer"),
    ({"verbose": 3}, ValueError, "verbose must be one of"),
    ({"deterministic": "yes"}, TypeError, "deterministic must be True or False"),
    ({"teacher_augment": 3}, TypeError, "teacher_augment must be a batch-wise x -> x"),
    ({"optimizer": "sgd"}, TypeError, "optimizer must be a no-argument callable"),
    ({"callbacks": []}, TypeError, "callbacks must be a no-argument callable"),
    ({"student_factory": "mlp"}, TypeError, "student_factory must be a no-argument callable"),
    ({"teacher": "no_such_teacher.keras"}, ValueError, "which is not a file"),
    ({"teacher": 3}, TypeError, "teacher must be a keras.Model, a no-argument callable"),
    (
        {"teacher": _small_teacher, "teacher_epochs": 0},
        ValueError,
        "teacher_epochs must be a positive integer when teacher is a factory",
    ),
    ({"test_data": "32x32"}, ValueError, "inputs of one shape"),
    ({"output_dir": "unwritable"}, ValueError, "output_dir must be a directory where files can"),
]


@pytest.mark.parametrize(
    "bad, error, match", BAD_ARGUMENTS, ids=[next(iter(b)) + "=" + repr(b[next(iter(b))])[:20]
                                            for b, _, _ in BAD_ARGUMENTS]
)
def test_every_argument_is_checked_before_anything_runs(tmp_path, mnist_small, bad, error, match):
    train, test = _subset(mnist_small[0], 64), _subset(mnist_small[1], 64)
    built = []

    def factory():
        built.append(True)
        return models.mlp((8,), name="student")

    arguments = dict(
        teacher=models.mlp((8,), name="teacher"),
        student_factory=factory,
        train_data=train,
        test_data=test,
        epochs=1,
        output_dir=tmp_path / "out",
    )
    arguments.update(bad)
    if bad.get("test_data") == "32x32":
        arguments["test_data"] = (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64))
    if bad.get("output_dir") == "unwritable":
        arguments["output_dir"] = _unwritable(tmp_path)
    with pytest.raises(error, match=match):
        scratch_vs_distilled(**arguments)
    assert built == []  # no model was built, so nothing was trained
    assert not (tmp_path / "out").exists()  # and no folder was left behind
