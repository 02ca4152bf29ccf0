r"""Cost of feature losses: KD + three feature losses vs KD alone, and vs keras.distillation.

Same teacher and student as `benchmarks/feature_methods.py` (CNN 32-64-128 + Dense 128 teacher,
CNN 8-16-32 + Dense 32 student, 28x28x1 inputs), same batches. Each measurement is one whole
`fit` epoch of several seconds (never single steps), repeated `--repeats` times in alternating
order after a warm-up epoch; medians of wall-clock and process-CPU time are reported.

Runs:
  keras_kd_kd          keras_kd.Distiller, soft targets (T = 4)
  keras_kd_kd_3feat    + HintDistillation(relu2, 1x1 conv + BN regressor 16 -> 64 channels)
                       + AttentionTransfer(relu2) + OverhaulDistillation(pre-ReLU relu3,
                       connector 32 -> 128 channels): each model still runs forward once
  keras_kd             keras.distillation.Distiller, LogitsDistillation(T = 4)
  keras_kd_feat        + one FeatureDistillation(relu3 -> relu3) with an attention-map MSE
                       (the layers' channel counts differ, so plain "mse" cannot be used);
                       it runs the student twice per step (once for `y_pred`, once in its
                       feature extractor, keras/src/distillation/distiller.py)

Usage:
  python benchmarks/feature_throughput.py            # ~3 min on 2 quiet cores
  python benchmarks/feature_throughput.py --single_thread   # CPU-time ratios on a busy machine
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from _feature_models import student_model, teacher_model  # noqa: E402
from _timing import interleaved_medians, time_run  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import losses as kd_losses  # noqa: E402
from keras_kd.datasets import read_idx  # noqa: E402

_EXAMPLES = flags.DEFINE_integer("examples", 6400, "Examples per timed epoch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs per run (median reported).")
_KERAS = flags.DEFINE_bool("keras_distiller", True, "Also time keras.distillation.Distiller.")
_SINGLE_THREAD = flags.DEFINE_bool(
    "single_thread", False,
    "Run TensorFlow on one intra-op and one inter-op thread, so process CPU time measures the "
    "work done (no idle spinning) even on a machine shared with other jobs.",
)

_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion_mnist"
_T = 4.0
_ALPHA = 0.5


def _attention_mse(teacher_features, student_features):
    """MSE of the channel-mean squared activations (works across channel counts)."""
    t = keras.ops.mean(keras.ops.square(teacher_features), axis=-1)
    s = keras.ops.mean(keras.ops.square(student_features), axis=-1)
    return keras.ops.mean(keras.ops.square(t - s))


def _hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit_epoch(model: keras.Model, dataset: tf.data.Dataset):
    return lambda: model.fit(dataset, epochs=1, verbose=0)


def main(argv):
    del argv
    if _SINGLE_THREAD.value:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    batch = _BATCH_SIZE.value
    n = (_EXAMPLES.value // batch) * batch
    x = read_idx(_DATA_DIR / "train-images-idx3-ubyte.gz")[:n, ..., None].astype("float32") / 255
    y = read_idx(_DATA_DIR / "train-labels-idx1-ubyte.gz")[:n].astype("int64")
    dataset = (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
               .cache().prefetch(tf.data.AUTOTUNE))
    teacher, student = teacher_model(), student_model()

    def ours(feature_losses: bool):
        losses = [kd_losses.SoftTargetDistillation(_T)]
        if feature_losses:
            losses += [
                kd_losses.HintDistillation("t_relu2", "s_relu2"),
                kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
                kd_losses.OverhaulDistillation("t_relu3", "s_relu3", teacher=teacher),
            ]
        distiller = keras_kd.Distiller(teacher, student, losses, student_loss_weight=_ALPHA)
        distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])
        return distiller

    runs = {
        "keras_kd_kd": _fit_epoch(ours(False), dataset),
        "keras_kd_kd_3feat": _fit_epoch(ours(True), dataset),
    }
    if _KERAS.value:
        def theirs(feature_loss: bool):
            losses = [keras.distillation.LogitsDistillation(temperature=_T)]
            if feature_loss:
                losses.append(keras.distillation.FeatureDistillation(
                    loss=_attention_mse, teacher_layer_name="t_relu3",
                    student_layer_name="s_relu3"))
            distiller = keras.distillation.Distiller(
                teacher, student, distillation_losses=losses, student_loss_weight=_ALPHA)
            distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])
            return distiller

        runs["keras"] = _fit_epoch(theirs(False), dataset)
        runs["keras_feat"] = _fit_epoch(theirs(True), dataset)

    for name, run in runs.items():
        wall, _ = time_run(run)
        print(f"warm-up {name:<20s} {wall:6.2f} s", flush=True)
    t = interleaved_medians(runs, _REPEATS.value)

    def ratio(a: str, b: str) -> str:
        return f"{t[a]['wall'] / t[b]['wall']:.3f} (CPU {t[a]['cpu'] / t[b]['cpu']:.3f})"

    steps = n // batch
    print(f"\n{steps} steps of batch {batch} per epoch; medians of {_REPEATS.value} epochs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, tf {tf.__version__}, keras {keras.__version__}, "
          f"single_thread={_SINGLE_THREAD.value}\n")
    print("| run | wall s / epoch | ms / step |")
    print("|---|---:|---:|")
    for name in runs:
        print(f"| {name} | {t[name]['wall']:.2f} | {1000 * t[name]['wall'] / steps:.1f} |")
    print("\n| ratio | wall (CPU) | target |")
    print("|---|---:|---:|")
    print(f"| keras_kd KD + 3 feature losses / keras_kd KD | "
          f"{ratio('keras_kd_kd_3feat', 'keras_kd_kd')} | <= 1.15 |")
    if _KERAS.value:
        print(f"| keras_kd KD + 3 feature losses / keras.distillation KD + 1 feature | "
              f"{ratio('keras_kd_kd_3feat', 'keras_feat')} | |")
        print(f"| keras.distillation KD + 1 feature / keras.distillation KD | "
              f"{ratio('keras_feat', 'keras')} | |")
        print(f"| keras_kd KD / keras.distillation KD | {ratio('keras_kd_kd', 'keras')} | |")


if __name__ == "__main__":
    app.run(main)
