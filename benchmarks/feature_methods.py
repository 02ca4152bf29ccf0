r"""Feature distillation on Fashion-MNIST: one student, same budget, every method, 3 seeds.

One teacher (CNN 32-64-128 + Dense 128, BN + separate ReLU layers) is trained once and cached
on disk under `--cache_dir`. Each method then trains the same student architecture (CNN 8-16-32
+ Dense 32) from the same initialisation per seed, on the same training subset, for the same
number of epochs and batches, and is evaluated on the full 10,000-image test set. The script
prints a Markdown table of test accuracy (mean +- std over seeds) with the command of each row.

Objectives (alpha = student_loss_weight = 0.5 for every Distiller row; KD uses T = 4):
  scratch            cross-entropy only (plain `student.fit`)
  kd                 CE + soft targets (Hinton et al. 2015)
  fitnets            stage 1 (1 epoch): hint relu2 only, student up to relu2 + adapter;
                     stage 2: CE + KD for the whole student (Romero et al. 2015)
  at                 CE + attention transfer on relu2 and relu3, weight 1000 (beta = 1000)
  fsp                CE + FSP matrices (relu1, relu2) and (relu2, relu3)
  rkd                CE + RKD distance (25) + angle (50) on the Dense embeddings
  overhaul           CE + Overhaul on pre-ReLU relu3 (margin from the teacher's bn3), 1e-3 scale
  kd_hints_fixed     CE + KD + hints on relu2 and relu3, fixed weights 1, 1, 1
  kd_hints_adaptive  same losses, weights learned by UncertaintyWeighting (Kendall et al. 2018)

Usage:
  python benchmarks/feature_methods.py                       # all rows, 3 seeds
  python benchmarks/feature_methods.py --methods=kd,at --seeds=0
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from _feature_models import student_model, teacher_model  # noqa: E402
from _results import run_missing  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import losses as kd_losses  # noqa: E402
from keras_kd.datasets import read_idx  # noqa: E402
from keras_kd.weighting import UncertaintyWeighting  # noqa: E402

METHODS = (
    "scratch", "kd", "fitnets", "at", "fsp", "rkd", "overhaul", "kd_hints_fixed",
    "kd_hints_adaptive",
)

_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Rows to run, among {METHODS}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (student init and data order).")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Student epochs (every method).")
_TRAIN = flags.DEFINE_integer("train_examples", 6400, "Student training subset size.")
_TEACHER_TRAIN = flags.DEFINE_integer("teacher_examples", 20000, "Teacher training subset.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 6, "Teacher epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_HINT_EPOCHS = flags.DEFINE_integer("hint_epochs", 1, "FitNets stage-1 epochs (of --epochs).")
_CACHE = flags.DEFINE_string("cache_dir", "/tmp/keras_kd_feature_bench", "Teacher + results.")

_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion_mnist"
_ALPHA = 0.5
_T = 4.0


def _log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def _data():
    x = read_idx(_DATA_DIR / "train-images-idx3-ubyte.gz").astype("float32")[..., None] / 255.0
    y = read_idx(_DATA_DIR / "train-labels-idx1-ubyte.gz").astype("int64")
    x_test = read_idx(_DATA_DIR / "t10k-images-idx3-ubyte.gz").astype("float32")[..., None] / 255
    y_test = read_idx(_DATA_DIR / "t10k-labels-idx1-ubyte.gz").astype("int64")
    return x, y, x_test, y_test


def _teacher(x, y, x_test, y_test) -> tuple[keras.Model, float]:
    cache = Path(_CACHE.value)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"teacher_v2_{_TEACHER_TRAIN.value}_{_TEACHER_EPOCHS.value}.keras"
    if path.exists():
        teacher = keras.models.load_model(path)
        _log(f"loaded cached teacher {path}")
    else:
        keras.utils.set_random_seed(1000)
        teacher = teacher_model()
        teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"])
        n = _TEACHER_TRAIN.value
        start = time.time()
        teacher.fit(x[:n], y[:n], batch_size=_BATCH.value, epochs=_TEACHER_EPOCHS.value,
                    verbose=0)
        teacher.save(path)
        _log(f"trained teacher in {time.time() - start:.0f} s -> {path}")
    teacher.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    accuracy = teacher.evaluate(x_test, y_test, batch_size=512, verbose=0)[1]
    return teacher, float(accuracy)


def _distiller(method: str, teacher: keras.Model, student: keras.Model):
    """Returns `(distiller, callbacks)` for one method."""
    kd = kd_losses.SoftTargetDistillation(_T)
    callbacks = []
    if method == "kd":
        losses, weights = [kd], [1.0]
    elif method == "fitnets":
        hint = kd_losses.HintDistillation("t_relu2", "s_relu2", batch_norm=True)
        losses, weights = [kd, hint], [1.0, 0.0]  # stage 2 = KD only, as in the paper
        callbacks.append(keras_kd.callbacks.HintStage(hint, _HINT_EPOCHS.value))
    elif method == "at":
        losses = [kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
                  kd_losses.AttentionTransfer("t_relu3", "s_relu3")]
        weights = [1000.0, 1000.0]
    elif method == "fsp":
        losses = [kd_losses.FSPDistillation(("t_relu1", "t_relu2"), ("s_relu1", "s_relu2")),
                  kd_losses.FSPDistillation(("t_relu2", "t_relu3"), ("s_relu2", "s_relu3"))]
        weights = [1.0, 1.0]
    elif method == "rkd":
        losses, weights = [kd_losses.RelationalDistillation("t_embed", "s_embed")], [1.0]
    elif method == "overhaul":
        losses = [kd_losses.OverhaulDistillation("t_relu3", "s_relu3", teacher=teacher)]
        weights = [2e-3]  # (1 - alpha) * 2e-3 = the paper's 1e-3
    elif method in ("kd_hints_fixed", "kd_hints_adaptive"):
        losses = [kd, kd_losses.HintDistillation("t_relu2", "s_relu2", batch_norm=True),
                  kd_losses.HintDistillation("t_relu3", "s_relu3", batch_norm=True)]
        weights = [1.0, 1.0, 1.0] if method == "kd_hints_fixed" else UncertaintyWeighting(3)
    else:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    distiller = keras_kd.Distiller(teacher, student, losses, distillation_loss_weights=weights,
                                   student_loss_weight=_ALPHA)
    return distiller, callbacks


def run(method: str, seed: int, teacher, data) -> dict:
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    student = student_model()
    n = _TRAIN.value
    order = np.random.default_rng(seed).permutation(n)
    x_train, y_train = x[:n][order], y[:n][order]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(1e-3)
    start = time.time()
    extra = {}
    if method == "scratch":
        student.compile(optimizer, loss, metrics=["accuracy"])
        student.fit(x_train, y_train, batch_size=_BATCH.value, epochs=_EPOCHS.value, verbose=0)
    else:
        distiller, callbacks = _distiller(method, teacher, student)
        distiller.compile(optimizer, loss=loss, metrics=["accuracy"])
        history = distiller.fit(x_train, y_train, batch_size=_BATCH.value, epochs=_EPOCHS.value,
                                callbacks=callbacks, verbose=0)
        # Training logs are prefixed: the Distiller's own "accuracy" log is the last epoch's
        # *training* accuracy and must never shadow the test accuracy below.
        extra = {f"train_{k}": float(v[-1]) for k, v in history.history.items()}
        student.compile(loss=loss, metrics=["accuracy"])
    accuracy = float(student.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])
    return {"method": method, "seed": seed, "accuracy": accuracy,
            "seconds": time.time() - start, **extra}


def main(argv):
    del argv
    for method in _METHODS.value:
        if method not in METHODS:
            raise app.UsageError(f"--methods: unknown {method!r}; valid: {METHODS}")
    seeds = [int(s) for s in _SEEDS.value]
    data = _data()
    teacher, teacher_accuracy = _teacher(*data)
    _log(f"teacher test accuracy {teacher_accuracy:.4f}")
    results_path = Path(_CACHE.value) / (
        f"results_e{_EPOCHS.value}_n{_TRAIN.value}_t{_TEACHER_TRAIN.value}"
        f"x{_TEACHER_EPOCHS.value}_v3.jsonl"
    )
    pairs = [(method, seed) for method in _METHODS.value for seed in seeds]
    done = run_missing(results_path, pairs, lambda m, s: run(m, s, teacher, data), _log)

    argv0 = "python benchmarks/feature_methods.py"
    common = (f"--epochs={_EPOCHS.value} --train_examples={_TRAIN.value} "
              f"--seeds={','.join(map(str, seeds))}")
    print(f"\nTeacher (CNN 32-64-128 + Dense 128, {teacher.count_params():,} params): "
          f"{100 * teacher_accuracy:.2f}% test accuracy; student CNN 8-16-32 + Dense 32 "
          f"({student_model().count_params():,} params).")
    print(f"Fashion-MNIST, first {_TRAIN.value} training images, {_EPOCHS.value} epochs, "
          f"batch {_BATCH.value}, Adam 1e-3, full 10k test set; mean +- std over seeds {seeds}.\n")
    print("| method | test accuracy (%) | per seed | s / run | command |")
    print("|---|---:|---|---:|---|")
    for method in _METHODS.value:
        rows = [done[(method, s)] for s in seeds if (method, s) in done]
        accs = [100 * r["accuracy"] for r in rows]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        seconds = statistics.mean(r["seconds"] for r in rows)
        print(f"| {method} | {statistics.mean(accs):.2f} +- {std:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} | {seconds:.0f} | "
              f"`{argv0} --methods={method} {common}` |")
    adaptive = [done[("kd_hints_adaptive", s)] for s in seeds
                if ("kd_hints_adaptive", s) in done]
    if adaptive:
        print("\nLearned path weights exp(-s_i) at the last epoch (kd_hints_adaptive):")
        for r in adaptive:
            weights = {k: round(v, 3) for k, v in r.items() if k.endswith("_weight")}
            print(f"  seed {r['seed']}: {weights}")
    print(f"\n{sys.version.split()[0]}, keras {keras.__version__}, results in {results_path}")


if __name__ == "__main__":
    app.run(main)
