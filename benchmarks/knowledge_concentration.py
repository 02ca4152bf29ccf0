r"""Knowledge concentration (Gao et al. 2017) on Fashion-MNIST: three specialists, one student.

Verticals (a partition of the 10 classes): tops {T-shirt 0, Pullover 2, Dress 3, Coat 4,
Shirt 6}, footwear {Sandal 5, Sneaker 7, Ankle boot 9}, others {Trouser 1, Bag 8}. Each
specialist (a CNN 32-64 + 128) is trained on its vertical's training images only, over its
vertical's classes. The student is a small CNN (8-16 + 32). Rows (`--rows`):

- `generalist_student`: the student trained on the labels only (the generalist-only baseline).
- `concentrated`: `keras_kd.Distiller` with the `VerticalSpecialists` teacher (logits cached
  once) and `ConcentrationDistillation` (each example taught by its vertical's specialist,
  T = 4), `student_loss_weight = 0.5`, no self-pacing.
- `concentrated_self_paced`: the same with self-paced weights: each specialist's easiest half
  of its batch examples at epoch 0, rising linearly to all of them by the last epoch
  (`SelfPacedSchedule(start=0.5, epochs=E - 1)`).
- `concentrated_self_paced_structured`: the same with the student's head replaced by
  `StructurallyConnected` branches (16 hidden units per vertical).

Usage:
  python benchmarks/knowledge_concentration.py --manual_dir=/work/shared/data/fashion_mnist \
      --output_dir=/tmp/knowledge_concentration
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from _datafree_common import Results, accuracy, mean_std, train_classifier
from absl import app, flags

import keras_kd
from keras_kd import datasets, models
from keras_kd.teachers.concentration import (
    ConcentrationDistillation,
    SelfPacedSchedule,
    StructurallyConnected,
    VerticalSpecialists,
)

VERTICALS = [[0, 2, 3, 4, 6], [5, 7, 9], [1, 8]]
ROWS = ("generalist_student", "concentrated", "concentrated_self_paced",
        "concentrated_self_paced_structured")

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows among {ROWS}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_SPECIALIST_EPOCHS = flags.DEFINE_integer("specialist_epochs", 3, "Epochs of each specialist.")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Student epochs.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Soft-target temperature.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/knowledge_concentration", "JSON, models.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Fashion-MNIST .gz files (first build).")


def student(structured: bool) -> keras.Model:
    base = models.cnn((8, 16), dense_units=32, name="student")
    if not structured:
        return base
    features = base.get_layer("dense").output
    head = StructurallyConnected(VERTICALS, units=16, name="structured_head")(features)
    return keras.Model(base.inputs, head, name="student_structured")


def specialists(seed, x, y, out: Path):
    found = []
    for k, subset in enumerate(VERTICALS):
        path = out / f"specialist{k}_seed{seed}.keras"
        if path.exists():
            found.append(keras.models.load_model(path))
            continue
        mask = np.isin(y, subset)
        position = {c: i for i, c in enumerate(subset)}  # outputs in the order of `subset`
        local = np.array([position[c] for c in y[mask]], np.int64)
        keras.utils.set_random_seed(seed * 10 + k)
        model = models.cnn((32, 64), dense_units=128, dropout=0.3, num_classes=len(subset),
                           name=f"specialist{k}")
        train_classifier(model, x[mask], local, _SPECIALIST_EPOCHS.value, seed * 10 + k)
        model.save(path)
        found.append(model)
    return found


def run_row(row, seed, data, out: Path) -> dict:
    x, y, x_test, y_test = data
    structured = row.endswith("structured")
    keras.utils.set_random_seed(seed)
    model = student(structured)
    result = {"params": int(model.count_params())}
    if row == "generalist_student":
        train_classifier(model, x, y, _EPOCHS.value, seed)
        result["accuracy"] = accuracy(model, x_test, y_test)
        return result
    specs = specialists(seed, x, y, out)
    teacher = VerticalSpecialists(specs, VERTICALS)
    owner = np.zeros(10, np.int64)
    for k, subset in enumerate(VERTICALS):
        owner[subset] = k
    within = []
    t_test = teacher.predict(x_test, batch_size=1000, verbose=0)
    for k, subset in enumerate(VERTICALS):
        mask = owner[y_test] == k
        sub = np.array(subset)
        within.append(float(np.mean(sub[np.argmax(t_test[mask][:, sub], 1)] == y_test[mask])))
    result["specialist_accuracy_within_vertical"] = within
    cached = keras_kd.cache_teacher_logits(teacher, x, y)
    self_paced = row != "concentrated"
    loss = ConcentrationDistillation(VERTICALS, temperature=_TEMPERATURE.value,
                                     self_paced=self_paced, pace=0.5 if self_paced else 1.0)
    distiller = keras_kd.Distiller(None, model, loss, student_loss_weight=0.5)
    distiller.compile(keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = ([SelfPacedSchedule(loss, epochs=max(1, _EPOCHS.value - 1), start=0.5)]
                 if self_paced else [])
    keras.utils.set_random_seed(seed)
    distiller.fit(cached.shuffle(len(x), seed=seed).batch(128), epochs=_EPOCHS.value,
                  verbose=0, callbacks=callbacks)
    result["accuracy"] = accuracy(model, x_test, y_test)
    return result


def main(argv):
    del argv
    rows = list(_ROWS.value)
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise ValueError(f"--rows has unknown rows {unknown}; choose among {ROWS}.")
    seeds = [int(s) for s in _SEEDS.value]
    out = Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json")
    kwargs = dict(data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
    x, y = datasets.load_arrays("fashion_mnist", "train", **kwargs)
    x_test, y_test = datasets.load_arrays("fashion_mnist", "test", **kwargs)
    data = (x, y, x_test, y_test)
    for row in rows:
        for seed in seeds:
            if results.get(row, seed):
                continue
            start = time.perf_counter()
            value = run_row(row, seed, data, out)
            value["row_seconds"] = time.perf_counter() - start
            results.put(row, seed, value)
            print(f"{row} seed {seed}: {value}", flush=True)
    print("| row | student params | test accuracy % (mean ± std) |")
    print("|---|---:|---:|")
    for row in rows:
        runs = [r for r in (results.get(row, s) for s in seeds) if r]
        acc = mean_std([100 * r["accuracy"] for r in runs])
        params = runs[0]["params"] if runs else "—"
        print(f"| {row} (n={len(runs)}) | {params:,} | {acc} |")


if __name__ == "__main__":
    app.run(main)
