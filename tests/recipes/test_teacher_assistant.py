"""`keras_kd.recipes.teacher_assistant_chain`: step wiring, per-step settings, resuming."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.recipes import teacher_assistant_chain

NUM_FEATURES, NUM_CLASSES = 8, 3


def _mlp(width, name):
    inputs = keras.Input((NUM_FEATURES,))
    h = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h), name=name)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, NUM_FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _models():
    return _mlp(32, "teacher"), [_mlp(16, "assistant_1"), _mlp(8, "assistant_2")], _mlp(4, "s")


class RecordTeacher(keras.callbacks.Callback):
    """Records the Distiller's teacher, its weights and settings when the step starts."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_train_begin(self, logs=None):
        self.log.append(
            {
                "teacher": self.model.teacher,
                "weights": [w.copy() for w in self.model.teacher.get_weights()],
                "alpha": float(keras.ops.convert_to_numpy(self.model.student_loss_weight)),
                "temperature": float(
                    keras.ops.convert_to_numpy(self.model.distillation_losses[0].temperature)
                ),
            }
        )


class Interrupt(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        raise KeyboardInterrupt("simulated interruption")


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_three_step_chain_each_teacher_is_the_previous_result():
    teacher, assistants, student = _models()
    initial = [[w.copy() for w in m.get_weights()] for m in (*assistants, student)]
    log = []
    result = teacher_assistant_chain(
        teacher,
        assistants,
        student,
        _data(),
        epochs=[1, 2, 3],
        distiller_kwargs=[
            {"student_loss_weight": 0.1},
            {"student_loss_weight": 0.5},
            {
                "student_loss_weight": 0.9,
                "distillation_losses": keras_kd.SoftTargetDistillation(2.0),
            },
        ],
        callbacks=[[RecordTeacher(log)] for _ in range(3)],
        verbose=0,
    )
    assert result.models == [*assistants, student] and result.resumed_steps == 0
    assert log[0]["teacher"] is teacher
    for k in (1, 2):
        # The step's teacher is the very object trained at the previous step, with its
        # trained weights (which differ from its initial ones).
        assert log[k]["teacher"] is result.models[k - 1]
        _assert_same_weights(log[k]["weights"], result.models[k - 1].get_weights())
        assert not np.allclose(log[k]["weights"][0], initial[k - 1][0])
    assert [len(h["loss"]) for h in result.histories] == [1, 2, 3]
    assert [e["alpha"] for e in log] == pytest.approx([0.1, 0.5, 0.9])
    assert [e["temperature"] for e in log] == pytest.approx([4.0, 4.0, 2.0])
    assert not np.allclose(student.get_weights()[0], initial[2][0])


def test_interrupted_chain_resumes_from_the_last_finished_step(tmp_path):
    work_dir = tmp_path / "takd"
    teacher, assistants, student = _models()
    with pytest.raises(KeyboardInterrupt):
        teacher_assistant_chain(
            teacher,
            assistants,
            student,
            _data(),
            work_dir=work_dir,
            callbacks=[[], [], [Interrupt()]],
            verbose=0,
        )
    manifest = json.loads((work_dir / "manifest.json").read_text())
    assert [s["model"] for s in manifest["steps"]] == ["step_0.keras", "step_1.keras"]
    trained = [[w.copy() for w in m.get_weights()] for m in assistants]

    # A new process: fresh models, same work_dir. Steps 0 and 1 are loaded, step 2 is trained.
    keras.utils.set_random_seed(99)
    _, fresh_assistants, fresh_student = _models()
    log = []
    result = teacher_assistant_chain(
        teacher,
        fresh_assistants,
        fresh_student,
        _data(),
        work_dir=work_dir,
        callbacks=[[RecordTeacher(log)] for _ in range(3)],
        verbose=0,
    )
    assert result.resumed_steps == 2 and len(log) == 1
    for model, weights in zip(fresh_assistants, trained):
        _assert_same_weights(model.get_weights(), weights)
    assert log[0]["teacher"] is fresh_assistants[1]
    assert result.histories[:2] == [s["history"] for s in manifest["steps"]]
    assert (work_dir / "step_2.keras").exists()
    loaded = keras.saving.load_model(work_dir / "step_2.keras")
    _assert_same_weights(loaded.get_weights(), fresh_student.get_weights())


def test_arguments_are_checked():
    teacher, assistants, student = _models()
    with pytest.raises(ValueError, match="epochs must be one value for every step or a list of 3"):
        teacher_assistant_chain(teacher, assistants, student, _data(), epochs=[1, 2])
    with pytest.raises(ValueError, match="callbacks must be None or a list of 3 lists"):
        teacher_assistant_chain(teacher, assistants, student, _data(), callbacks=[Interrupt()])
    with pytest.raises(ValueError, match="distinct model objects"):
        teacher_assistant_chain(teacher, [assistants[0], assistants[0]], student, _data())


def test_work_dir_of_another_run_is_refused(tmp_path):
    teacher, assistants, student = _models()
    teacher_assistant_chain(teacher, [], student, _data(), work_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match="run of 1 steps, not a 'teacher_assistant_chain' run"):
        teacher_assistant_chain(teacher, assistants, student, _data(), work_dir=tmp_path)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (
            {"distiller_kwargs": [{}, {}, {"student_loss_weight": 1.5}]},
            ValueError,
            r"distiller_kwargs\[2\]\['student_loss_weight'\] must be a real number in \[0, 1\]",
        ),
        ({"distiller_kwargs": {"temprature": 4.0}}, ValueError, "unknown key 'temprature'"),
        ({"distiller_kwargs": {"teacher": None}}, ValueError, "must not contain 'teacher'"),
        (
            {"distiller_kwargs": [{}, {"distillation_losses": "no_such_loss"}, {}]},
            ValueError,
            "Unknown distillation loss 'no_such_loss'",
        ),
        (
            {"distiller_kwargs": {"distillation_loss_weights": [1.0, 0.5]}},
            ValueError,
            r"distillation_loss_weights'\] must be a sequence of 1 non-negative",
        ),
        (
            {"compile_kwargs": [{}, {}, {"optimiser": "sgd"}]},
            ValueError,
            r"compile_kwargs\[2\] has an unknown key 'optimiser'",
        ),
        ({"verbos": 0}, ValueError, "fit_kwargs has an unknown key 'verbos'"),
        ({"x": np.zeros((4, NUM_FEATURES))}, ValueError, "fit_kwargs must not contain 'x'"),
        ({"dataset": None}, TypeError, "dataset must be"),
    ],
)
def test_a_bad_setting_of_any_step_fails_before_the_first_step_trains(tmp_path, bad, error, match):
    teacher, assistants, student = _models()
    log = []
    arguments = dict(
        dataset=_data(),
        callbacks=[[RecordTeacher(log)], [RecordTeacher(log)], [RecordTeacher(log)]],
        work_dir=tmp_path / "work",
        verbose=0,
    )
    arguments.update(bad)
    dataset = arguments.pop("dataset")
    with pytest.raises(error, match=match):
        teacher_assistant_chain(teacher, assistants, student, dataset, **arguments)
    assert log == []  # no step started
    assert not (tmp_path / "work").exists()


def test_unwritable_work_dir_is_refused_before_training(tmp_path):
    teacher, assistants, student = _models()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="work_dir must be a directory where files can be"):
        teacher_assistant_chain(
            teacher, assistants, student, _data(), work_dir=tmp_path / "a_file" / "work"
        )
