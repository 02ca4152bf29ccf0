r"""Several teachers on Fashion-MNIST: TA chain, ensemble of teachers, born-again generations.

A scaled-down version of the plain-CNN setting of Mirzadeh et al. 2020 (TAKD): a 10-conv-layer
teacher (8-16-32 channels, global average pooling), a 4-conv assistant (8-16) and a 2-conv
student (8-16), both with a flatten + dense head (3x3 convs + BN + ReLU, max pooling). For each
seed, on the same training subset and with the same number of epochs for every training step:

  teachers        three 10-conv teachers trained on the labels (different initialisations);
                  the "best single teacher" is the one with the best validation accuracy
                  (5,000 held-out training images), never chosen on the test set
  ensemble        the three teachers, probabilities averaged (accuracy at T = 1)
  scratch         the 2-conv student trained on the labels only
  kd              best teacher -> student (CE + soft targets, alpha = 0.5, T = 4)
  takd            best teacher -> 4-conv assistant -> student (`teacher_assistant_chain`, two
                  steps of the same budget, same loss settings)
  ensemble_kd     Ensemble(3 teachers, probabilities at T = 4) -> student
  ban_gen1/2      born-again (`born_again`): gen 0 = the scratch student, gen k+1 distilled from
                  gen k, same 2-conv architecture, same settings
  ban_ens_gen2    gen 2 distilled from Ensemble(gen 0, gen 1) (`ensemble_previous=True`)

All students are evaluated on the full 10,000-image test set. The direct kd / ensemble_kd rows
train on cached teacher logits (exact here: no augmentation); the chain and born-again recipes
call their teachers live. The script prints a Markdown table (mean +- std over seeds).

Usage:
  python benchmarks/multi_teacher.py                       # 3 seeds, 8 CPU-minutes
  python benchmarks/multi_teacher.py --seeds=0 --epochs=2  # quick look
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.datasets import read_idx  # noqa: E402
from keras_kd.recipes import born_again, teacher_assistant_chain  # noqa: E402
from keras_kd.teachers import Ensemble  # noqa: E402

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialisations, data order).")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs of every training step.")
_TRAIN = flags.DEFINE_integer("train_examples", 8000, "Training subset size.")
_VAL = flags.DEFINE_integer("val_examples", 5000, "Held-out training images (teacher choice).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Soft-target temperature.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "student_loss_weight of every distillation step.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the per-seed numbers.")

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion_mnist"
ROWS = (
    ("teacher_mean", "10-conv teacher (mean of the 3)"),
    ("teacher_best", "best single teacher (by validation)"),
    ("ensemble", "ensemble of the 3 teachers"),
    ("assistant", "4-conv assistant (distilled from best teacher)"),
    ("scratch", "2-conv student, scratch (= born-again gen 0)"),
    ("kd", "2-conv student, KD from best teacher"),
    ("takd", "2-conv student, TA chain teacher -> assistant -> student"),
    ("ensemble_kd", "2-conv student, KD from the ensemble of 3 teachers"),
    ("ban_gen1", "born-again gen 1 (from gen 0)"),
    ("ban_gen2", "born-again gen 2 (from gen 1)"),
    ("ban_ens_gen2", "born-again gen 2 (from ensemble of gens 0, 1)"),
)


def load_data():
    x = read_idx(DATA_DIR / "train-images-idx3-ubyte.gz")
    y = read_idx(DATA_DIR / "train-labels-idx1-ubyte.gz").astype("int64")
    x_test = read_idx(DATA_DIR / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(DATA_DIR / "t10k-labels-idx1-ubyte.gz").astype("int64")
    order = np.random.default_rng(0).permutation(len(x))  # one fixed subset for all seeds
    train, val = order[: _TRAIN.value], order[_TRAIN.value : _TRAIN.value + _VAL.value]

    def prep(images):
        return (images.astype("float32") / 255.0)[..., None]

    return (prep(x[train]), y[train]), (prep(x[val]), y[val]), (prep(x_test), y_test)


def plain_cnn(channels: list, name: str, flatten: bool) -> keras.Model:
    """3x3 conv + BN + ReLU per int entry, "pool" = 2x2 max pooling; Flatten or GAP + Dense."""
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for c in channels:
        if c == "pool":
            h = keras.layers.MaxPooling2D()(h)
        else:
            h = keras.layers.Conv2D(c, 3, padding="same", use_bias=False)(h)
            h = keras.layers.BatchNormalization(momentum=0.9)(h)
            h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h) if flatten else keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)


def teacher_cnn(name):  # 10 conv layers
    return plain_cnn([8, 8, "pool", 16, 16, 16, "pool", 32, 32, 32, 32, 32], name, flatten=False)


def assistant_cnn(name):  # 4 conv layers
    return plain_cnn([8, 8, "pool", 16, 16, "pool"], name, flatten=True)


def student_cnn(name="student"):  # 2 conv layers
    return plain_cnn([8, "pool", 16, "pool"], name, flatten=True)


def accuracy(model, x, y) -> float:
    logits = model.predict(x, batch_size=1000, verbose=0)
    return float((logits.argmax(-1) == y).mean())


def kd_settings() -> dict:
    return {
        "distillation_losses": keras_kd.SoftTargetDistillation(_TEMPERATURE.value),
        "student_loss_weight": _ALPHA.value,
    }


def compile_settings() -> dict:
    return {
        "optimizer": "adam",
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }


def run_seed(seed: int, data) -> dict:
    (x, y), (x_val, y_val), (x_test, y_test) = data
    epochs, batch = _EPOCHS.value, _BATCH.value
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(batch)
    results = {}

    def fit_scratch(model):
        model.compile(**compile_settings())
        model.fit(train_ds, epochs=epochs, verbose=0)
        return model

    def seeded(build, offset, name):
        keras.utils.set_random_seed(1000 * seed + offset)
        return build(name)

    teachers = [fit_scratch(seeded(teacher_cnn, i, f"teacher_{i}")) for i in range(3)]
    val_accs = [accuracy(t, x_val, y_val) for t in teachers]
    test_accs = [accuracy(t, x_test, y_test) for t in teachers]
    best = teachers[int(np.argmax(val_accs))]
    results["teacher_mean"] = float(np.mean(test_accs))
    results["teacher_best"] = test_accs[int(np.argmax(val_accs))]
    results["ensemble"] = accuracy(Ensemble(teachers, temperature=1.0), x_test, y_test)

    def distil_cached(teacher, student):
        cached = keras_kd.cache_teacher_logits(teacher, x, y)
        cached = cached.shuffle(len(x), seed=seed).batch(batch)
        distiller = keras_kd.Distiller(None, student, **kd_settings())
        distiller.compile(**compile_settings())
        distiller.fit(cached, epochs=epochs, verbose=0)
        return accuracy(student, x_test, y_test)

    scratch = fit_scratch(seeded(student_cnn, 10, "scratch"))
    results["scratch"] = accuracy(scratch, x_test, y_test)
    results["kd"] = distil_cached(best, seeded(student_cnn, 10, "kd_student"))
    ensemble = Ensemble(teachers, temperature=_TEMPERATURE.value)
    results["ensemble_kd"] = distil_cached(ensemble, seeded(student_cnn, 10, "ens_student"))

    chain = teacher_assistant_chain(
        best,
        [seeded(assistant_cnn, 20, "assistant")],
        seeded(student_cnn, 10, "takd_student"),
        train_ds,
        epochs=epochs,
        distiller_kwargs=kd_settings(),
        compile_kwargs=compile_settings(),
        verbose=0,
    )
    results["assistant"] = accuracy(chain.models[0], x_test, y_test)
    results["takd"] = accuracy(chain.models[1], x_test, y_test)

    counter = iter(range(30, 40))
    ban = born_again(
        lambda: seeded(student_cnn, next(counter), "generation"),
        scratch,
        2,
        train_ds,
        epochs=epochs,
        distiller_kwargs=kd_settings(),
        compile_kwargs=compile_settings(),
        verbose=0,
    )
    results["ban_gen1"] = accuracy(ban.models[1], x_test, y_test)
    results["ban_gen2"] = accuracy(ban.models[2], x_test, y_test)
    counter = iter(range(40, 50))
    ban_ens = born_again(
        lambda: seeded(student_cnn, next(counter), "generation"),
        scratch,
        2,
        train_ds,
        epochs=epochs,
        ensemble_previous=True,
        distiller_kwargs=kd_settings(),
        compile_kwargs=compile_settings(),
        verbose=0,
    )
    results["ban_ens_gen2"] = accuracy(ban_ens.models[2], x_test, y_test)
    return results


def main(argv):
    del argv
    data = load_data()
    per_seed = []
    start = time.time()
    for seed in [int(s) for s in _SEEDS.value]:
        t0 = time.time()
        per_seed.append(run_seed(seed, data))
        print(f"seed {seed}: {time.time() - t0:.0f} s {json.dumps(per_seed[-1])}", flush=True)
    print(
        f"\ntotal {time.time() - start:.0f} s; {_TRAIN.value} training images, "
        f"{_EPOCHS.value} epochs per step, seeds {_SEEDS.value}\n"
    )
    print("| model | test accuracy (mean ± std) |")
    print("|---|---:|")
    for key, label in ROWS:
        values = [100 * r[key] for r in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {label} | {statistics.mean(values):.2f} ± {std:.2f} |")
    if _OUTPUT.value:
        Path(_OUTPUT.value).write_text(json.dumps(per_seed, indent=1))


if __name__ == "__main__":
    app.run(main)
