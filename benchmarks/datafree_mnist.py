r"""Data-free distillation on real MNIST: Lopes et al. metadata, DAFL, DeepInversion, bounds.

Rows (`--rows`), each run for every seed of `--seeds` (teachers too: seed s trains teacher s,
records its metadata, builds its transfer set and distils student s):

- Hinton nets, inputs in [0, 1] (Lopes et al.'s MNIST setting):
  `teacher_hinton` 784-1200-1200-10 (Dense + ReLU layers, no dropout here), `student_real_mlp`
  784-800-800-10 trained on the labels (upper bound), `noise_hinton` the student distilled on
  Gaussian noise N(0.1307, 0.3081^2) (lower bound), `lopes_top_layer`, `lopes_all_layers`,
  `lopes_spectral_all_layers`, `lopes_spectral_layer_pairs`: metadata recorded over the 60,000
  training images (`keras_kd.datafree.ActivationMetadata`, saved to a `.npz` whose size is
  reported), a transfer set reconstructed from it alone, the student distilled on it.
- LeNet-5 nets, inputs padded to 32x32 and standardised ((x - 0.1307) / 0.3081), as DAFL:
  `teacher_lenet5`, `student_real_lenet5_half` (upper bound), `noise_lenet5` (N(0, 1) inputs,
  DAFL's "normal distribution" row), `dafl` (`keras_kd.datafree.DAFL`), `teacher_lenet5_bn`
  (BatchNorm after every conv and the 84-unit layer) and `deepinversion` (its inversion, the
  LeNet-5-half student distilled on it).

Every transfer-set student is distilled with `keras_kd.Distiller` on cached teacher logits,
soft targets only (`student_loss_weight=0`), T = 8 (the temperature of Lopes et al.'s code),
Adam 1e-3, batch 128. Budgets are sized for a shared 2-core CPU (see the flags); the papers
run far longer (Lopes: 1000 steps per batch; DAFL: 24,000 iterations of 512 with a 128-wide
generator; DeepInversion: 2000 steps per batch).

Usage:
  python benchmarks/datafree_mnist.py --rows=teacher_hinton,lopes_top_layer --seeds=0,1,2 \
      --output_dir=/tmp/datafree_mnist
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from _datafree_common import PeakMemory, Results, accuracy, mean_std, train_classifier
from absl import app, flags

import keras_kd
from keras_kd import datafree, datasets

HINTON_ROWS = ("teacher_hinton", "student_real_mlp", "noise_hinton", "lopes_top_layer",
               "lopes_all_layers", "lopes_spectral_all_layers", "lopes_spectral_layer_pairs")
LENET_ROWS = ("teacher_lenet5", "student_real_lenet5_half", "noise_lenet5", "dafl",
              "teacher_lenet5_bn", "deepinversion")
ALL_ROWS = HINTON_ROWS + LENET_ROWS

# Published MNIST accuracies (%). DAFL, Chen et al. ICCV 2019, Table 1 (LeNet-5 column and
# HintonNet column); "Meta data" is Lopes et al. 2017 as quoted there.
PUBLISHED = {
    "teacher_hinton": "98.39 (DAFL T.1, HintonNet)",
    "student_real_mlp": "98.11 (DAFL T.1, HintonNet-half)",
    "noise_hinton": "87.58 (DAFL T.1)",
    "lopes_top_layer": "— (best Lopes variant: 91.24, DAFL T.1)",
    "lopes_all_layers": "— (best Lopes variant: 91.24, DAFL T.1)",
    "lopes_spectral_all_layers": "— (best Lopes variant: 91.24, DAFL T.1)",
    "lopes_spectral_layer_pairs": "— (best Lopes variant: 91.24, DAFL T.1)",
    "teacher_lenet5": "98.91 (DAFL T.1)",
    "student_real_lenet5_half": "98.65 (DAFL T.1)",
    "noise_lenet5": "88.01 (DAFL T.1)",
    "dafl": "98.20 (DAFL T.1)",
    "teacher_lenet5_bn": "— (no BN LeNet in the papers)",
    "deepinversion": "— (no MNIST result in Yin et al. 2020)",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

_ROWS = flags.DEFINE_list("rows", list(ALL_ROWS), f"Rows to run, among {ALL_ROWS}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/datafree_mnist", "Models, files, JSON.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 3, "Epochs of every teacher.")
_STUDENT_EPOCHS = flags.DEFINE_integer("student_epochs", 3, "Epochs of the real-data students.")
_TRANSFER_SIZE = flags.DEFINE_integer("transfer_size", 6144, "Synthetic examples per row.")
_INVERSION_BATCH = flags.DEFINE_integer("inversion_batch", 256, "Inputs optimised together.")
_LOPES_STEPS = flags.DEFINE_integer("lopes_steps", 300, "Adam steps per batch (paper: 1000).")
_LOPES_LR = flags.DEFINE_float("lopes_lr", 0.07, "Lopes reconstruction learning rate.")
_DI_STEPS = flags.DEFINE_integer("di_steps", 300, "DeepInversion steps per batch (paper 2000).")
_DI_LR = flags.DEFINE_float("di_lr", 0.05, "DeepInversion learning rate (paper: 0.05).")
_DISTILL_EPOCHS = flags.DEFINE_integer("distill_epochs", 20, "Epochs on a transfer set.")
_TEMPERATURE = flags.DEFINE_float("temperature", 8.0, "Soft-target temperature.")
_DAFL_STEPS = flags.DEFINE_integer("dafl_steps", 400, "DAFL iterations (paper: 24,000).")
_DAFL_BATCH = flags.DEFINE_integer("dafl_batch", 256, "DAFL batch (paper: 512).")
_DAFL_WIDTH = flags.DEFINE_integer("dafl_width", 64, "DAFL generator width (paper: 128).")


# ---------------------------------------------------------------------- models
def hinton_net(units, name):
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, u in enumerate(units):
        x = keras.layers.Dense(u, name=f"fc{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def lenet5(half=False, batch_norm=False, name="lenet5"):
    c1, c2, c3, f1 = (3, 8, 60, 42) if half else (6, 16, 120, 84)
    inputs = keras.Input((32, 32, 1), name="image")
    x = inputs
    for i, (filters, pool) in enumerate(((c1, True), (c2, True), (c3, False))):
        x = keras.layers.Conv2D(filters, 5, name=f"conv{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="features")(x)
    x = keras.layers.Dense(f1, name="fc1")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn_fc1")(x)
    x = keras.layers.ReLU(name="relu_fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


# ---------------------------------------------------------------------- data
class Data:
    def __init__(self, data_dir):
        x, self.y_train = datasets.load_arrays("mnist", "train", data_dir=data_dir)
        xt, self.y_test = datasets.load_arrays("mnist", "test", data_dir=data_dir)
        self.x_train, self.x_test = x, xt

        def lenet_inputs(a):
            return ((np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))) - MNIST_MEAN) / MNIST_STD
                    ).astype(np.float32)

        self.x_train32, self.x_test32 = lenet_inputs(x), lenet_inputs(xt)


# ---------------------------------------------------------------------- steps
def teacher(kind: str, seed: int, data: Data, out: Path) -> keras.Model:
    path = out / "teachers" / f"{kind}_seed{seed}.keras"
    if path.exists():
        return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    if kind == "hinton":
        model, x = hinton_net((1200, 1200), "teacher_hinton"), data.x_train
    else:
        model = lenet5(batch_norm=kind == "lenet5_bn", name=f"teacher_{kind}")
        x = data.x_train32
    train_classifier(model, x, data.y_train, _TEACHER_EPOCHS.value, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def distil_on(teacher_model, student, x_transfer, seed: int) -> keras.Model:
    """Soft targets only, on the transfer set, teacher logits cached once."""
    keras.utils.set_random_seed(seed)
    cached = keras_kd.cache_teacher_logits(teacher_model, x_transfer)
    distiller = keras_kd.Distiller(
        None, student, keras_kd.SoftTargetDistillation(temperature=_TEMPERATURE.value),
        student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(1e-3))
    ds = cached.shuffle(len(x_transfer), seed=seed).batch(128)
    distiller.fit(ds, epochs=_DISTILL_EPOCHS.value, verbose=0)
    return student


def run_row(row: str, seed: int, data: Data, out: Path) -> dict:
    size, batch = _TRANSFER_SIZE.value, _INVERSION_BATCH.value
    result: dict = {}
    if row in HINTON_ROWS:
        x_test = data.x_test
    else:
        x_test = data.x_test32
    if row == "teacher_hinton":
        return {"accuracy": accuracy(teacher("hinton", seed, data, out), x_test, data.y_test)}
    if row == "teacher_lenet5":
        return {"accuracy": accuracy(teacher("lenet5", seed, data, out), x_test, data.y_test)}
    if row == "teacher_lenet5_bn":
        model = teacher("lenet5_bn", seed, data, out)
        return {"accuracy": accuracy(model, x_test, data.y_test)}
    if row == "student_real_mlp":
        keras.utils.set_random_seed(seed)
        student = train_classifier(hinton_net((800, 800), "student"), data.x_train,
                                   data.y_train, _STUDENT_EPOCHS.value, seed)
        return {"accuracy": accuracy(student, x_test, data.y_test)}
    if row == "student_real_lenet5_half":
        keras.utils.set_random_seed(seed)
        student = train_classifier(lenet5(half=True, name="student"), data.x_train32,
                                   data.y_train, _STUDENT_EPOCHS.value, seed)
        return {"accuracy": accuracy(student, x_test, data.y_test)}
    if row == "dafl":
        t = teacher("lenet5", seed, data, out)
        keras.utils.set_random_seed(seed)
        student = lenet5(half=True, name="student")
        generator = datafree.dafl_generator(100, (32, 32, 1), width=_DAFL_WIDTH.value)
        model = datafree.DAFL(t, student, generator, feature_layer="features")
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      generator_optimizer=keras.optimizers.Adam(0.2))
        with PeakMemory() as mem:
            model.fit(model.latent_dataset(_DAFL_BATCH.value, seed=seed),
                      steps_per_epoch=_DAFL_STEPS.value, epochs=1, verbose=0)
        return {"accuracy": accuracy(student, x_test, data.y_test),
                "construction_seconds": mem.seconds, "peak_rss_mb": mem.peak_mb,
                "rss_increase_mb": mem.peak_mb - mem.start_mb,
                "note": "generator and student trained together (one fit)"}
    # Rows with a transfer set built first, then distilled.
    if row in HINTON_ROWS:
        t = teacher("hinton", seed, data, out)
        keras.utils.set_random_seed(seed)
        student = hinton_net((800, 800), "student")
    elif row == "noise_lenet5":
        t = teacher("lenet5", seed, data, out)
        keras.utils.set_random_seed(seed)
        student = lenet5(half=True, name="student")
    else:  # deepinversion
        t = teacher("lenet5_bn", seed, data, out)
        keras.utils.set_random_seed(seed)
        student = lenet5(half=True, name="student")
    if row.startswith("lopes_"):
        kind = row[len("lopes_"):]
        meta_path = out / "metadata" / f"{kind}_seed{seed}.npz"
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        with PeakMemory() as record:
            meta = datafree.ActivationMetadata.record(t, data.x_train, data.y_train, kind=kind)
            result["metadata_bytes"] = meta.save(meta_path)
        result["record_seconds"] = record.seconds
        meta = datafree.ActivationMetadata.load(meta_path)
    with PeakMemory() as mem:
        if row == "noise_hinton":
            transfer = datafree.gaussian_noise_set((28, 28, 1), size, MNIST_MEAN, MNIST_STD, seed)
        elif row == "noise_lenet5":
            transfer = datafree.gaussian_noise_set((32, 32, 1), size, 0.0, 1.0, seed)
        elif row.startswith("lopes_"):
            transfer = datafree.reconstruct(
                t, meta, size, batch_size=batch, steps=_LOPES_STEPS.value,
                learning_rate=_LOPES_LR.value, initial_mean=0.15, initial_std=0.1, seed=seed,
                checkpoint_dir=out / "transfer" / f"{row}_seed{seed}", verbose=0)
        else:
            transfer = datafree.deep_inversion(
                t, size, batch_size=batch, steps=_DI_STEPS.value, learning_rate=_DI_LR.value,
                seed=seed, checkpoint_dir=out / "transfer" / f"{row}_seed{seed}", verbose=0)
    result.update(construction_seconds=mem.seconds, peak_rss_mb=mem.peak_mb,
                  rss_increase_mb=mem.peak_mb - mem.start_mb,
                  teacher_agreement=float(np.mean(np.argmax(
                      t.predict(transfer.x, batch_size=1000, verbose=0), -1) == transfer.y))
                  if not row.startswith("noise") else None)
    distil_on(t, student, transfer.x, seed)
    result["accuracy"] = accuracy(student, x_test, data.y_test)
    return result


def table(results: Results, rows, seeds) -> str:
    lines = ["| row | test accuracy % (ours, mean ± std) | published % | construction s "
             "| peak RSS MB (+ during construction) | metadata file |",
             "|---|---:|---|---:|---:|---:|"]
    for row in rows:
        runs = [results.get(row, s) for s in seeds]
        runs = [r for r in runs if r]
        acc = mean_std([100 * r["accuracy"] for r in runs])
        secs = mean_std([r["construction_seconds"] for r in runs if "construction_seconds" in r])
        mem = [r for r in runs if "peak_rss_mb" in r]
        mem_text = (f"{np.mean([r['peak_rss_mb'] for r in mem]):.0f} "
                    f"(+{np.mean([r['rss_increase_mb'] for r in mem]):.0f})") if mem else "—"
        size = [r["metadata_bytes"] for r in runs if "metadata_bytes" in r]
        size_text = f"{size[0] / 1024:.0f} KiB" if size else "—"
        lines.append(f"| {row} (n={len(runs)}) | {acc} | {PUBLISHED[row]} | {secs} | "
                     f"{mem_text} | {size_text} |")
    return "\n".join(lines)


def main(argv):
    del argv
    rows = list(_ROWS.value)
    unknown = sorted(set(rows) - set(ALL_ROWS))
    if unknown:
        raise ValueError(f"--rows has unknown rows {unknown}; choose among {ALL_ROWS}.")
    seeds = [int(s) for s in _SEEDS.value]
    out = Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json")
    data = Data(_DATA_DIR.value)
    for row in rows:
        for seed in seeds:
            if results.get(row, seed):
                continue
            start = time.perf_counter()
            value = run_row(row, seed, data, out)
            value["row_seconds"] = time.perf_counter() - start
            results.put(row, seed, value)
            print(f"{row} seed {seed}: {value}", flush=True)
    print(table(results, rows, seeds))


if __name__ == "__main__":
    app.run(main)
