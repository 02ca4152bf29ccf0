r"""Data distillation (Radosavovic et al., CVPR 2018) on Fashion-MNIST: 1,000 labels + 59,000 not.

For each seed, a seeded permutation of the 60,000 training images gives 1,000 labelled ones and
59,000 unlabelled ones (their labels are only used to report the pseudo-labels' accuracy).
Rows (`--rows`):

- `labelled_only`: a small CNN trained on the 1,000 labelled images. It is also the teacher.
- `data_distillation`: the teacher averaged over label-preserving transforms
  (`keras_kd.teachers.transform_ensemble.TransformEnsemble`: identity, left-right flip, shifts
  of 2 px left/right/up/down, zoom 0.9 and 1.1) labels the 59,000 images; pseudo-labels are kept
  with per-class confidence thresholds matching the labelled set's class shares
  (`matched_thresholds`); the same CNN, from scratch, trains in one `fit` on labelled +
  pseudo-labelled data with `keras_kd.Distiller`: hard-label loss on the labelled examples only
  (per-term sample weights), soft loss (the ensemble's averaged probabilities, T = 1) on all,
  `student_loss_weight = 0.5`.
- `data_distillation_single`: the same with the identity transform only (no ensembling), to
  isolate the transforms' effect.

Usage:
  python benchmarks/data_distillation.py --manual_dir=/work/shared/data/fashion_mnist \
      --output_dir=/tmp/data_distillation
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from _datafree_common import PeakMemory, Results, accuracy, mean_std, train_classifier
from absl import app, flags

import keras_kd
from keras_kd import datasets, models
from keras_kd.teachers.pseudo_labels import data_distillation_set
from keras_kd.teachers.transform_ensemble import Flip, Scale, Shift, TransformEnsemble

ROWS = ("labelled_only", "data_distillation", "data_distillation_single")

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows among {ROWS}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_LABELLED = flags.DEFINE_integer("labelled", 1000, "Labelled training images.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 30, "Epochs on the labelled images.")
_STUDENT_EPOCHS = flags.DEFINE_integer("student_epochs", 4, "Epochs on labelled + unlabelled.")
_ALPHA = flags.DEFINE_float("student_loss_weight", 0.5, "Weight of the hard-label loss.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/data_distillation", "JSON and models.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Fashion-MNIST .gz files (first build).")


def cnn(name: str) -> keras.Model:
    return models.cnn((32, 64), dense_units=128, dropout=0.3, name=name)


def transforms(ensemble: bool) -> list:
    if not ensemble:
        return [keras.layers.Identity()]
    return [keras.layers.Identity(), Flip("horizontal"), Shift(0, 2), Shift(0, -2),
            Shift(2, 0), Shift(-2, 0), Scale(0.9), Scale(1.1)]


def split(seed: int, x, y, labelled: int):
    order = np.random.default_rng(seed).permutation(len(x))
    lab, unl = order[:labelled], order[labelled:]
    return x[lab], y[lab], x[unl], y[unl]


def teacher_for(seed, x_l, y_l, out: Path) -> keras.Model:
    path = out / f"teacher_seed{seed}.keras"
    if path.exists():
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    model = train_classifier(cnn("teacher"), x_l, y_l, _TEACHER_EPOCHS.value, seed,
                             batch_size=64)
    model.save(path)
    return model


def run_row(row, seed, data, out: Path) -> dict:
    x, y, x_test, y_test = data
    x_l, y_l, x_u, y_u = split(seed, x, y, _LABELLED.value)
    teacher = teacher_for(seed, x_l, y_l, out)
    if row == "labelled_only":
        return {"accuracy": accuracy(teacher, x_test, y_test)}
    ensemble = TransformEnsemble(teacher, transforms(row == "data_distillation"))
    with PeakMemory() as mem:
        dd = data_distillation_set(ensemble, x_l, y_l, x_u, threshold="match")
    kept = dd.selected
    result = {
        "construction_seconds": mem.seconds, "peak_rss_mb": mem.peak_mb,
        "rss_increase_mb": mem.peak_mb - mem.start_mb,
        "kept": int(kept.sum()),
        "pseudo_label_accuracy_kept": float(np.mean(dd.pseudo_labels[kept] == y_u[kept])),
        "pseudo_label_accuracy_all": float(np.mean(dd.pseudo_labels == y_u)),
        "thresholds": [float(t) for t in dd.thresholds],
    }
    keras.utils.set_random_seed(seed)
    student = cnn("student")
    distiller = keras_kd.Distiller(None, student, keras_kd.SoftTargetDistillation(1.0),
                                   student_loss_weight=_ALPHA.value)
    distiller.compile(keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = dd.num_labelled + dd.num_selected
    distiller.fit(dd.dataset.shuffle(n, seed=seed).batch(128), epochs=_STUDENT_EPOCHS.value,
                  verbose=0)
    result["accuracy"] = accuracy(student, x_test, y_test)
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
    print("| row | test accuracy % (mean ± std) | unlabelled kept | pseudo-label acc. of kept % "
          "| set construction s | peak RSS MB (+) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        runs = [r for r in (results.get(row, s) for s in seeds) if r]
        acc = mean_std([100 * r["accuracy"] for r in runs])
        if row == "labelled_only":
            print(f"| {row} (n={len(runs)}) | {acc} | — | — | — | — |")
            continue
        kept = mean_std([r["kept"] for r in runs])
        pl = mean_std([100 * r["pseudo_label_accuracy_kept"] for r in runs])
        secs = mean_std([r["construction_seconds"] for r in runs])
        mem = (f"{np.mean([r['peak_rss_mb'] for r in runs]):.0f} "
               f"(+{np.mean([r['rss_increase_mb'] for r in runs]):.0f})")
        print(f"| {row} (n={len(runs)}) | {acc} | {kept} | {pl} | {secs} | {mem} |")


if __name__ == "__main__":
    app.run(main)
