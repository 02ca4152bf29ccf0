r"""Cost of feature losses: KD + three feature losses vs KD alone, and vs keras.distillation.

Everything is measured in ONE process: each measurement is one whole `fit` epoch of several
seconds (never single steps); every run gets a warm-up epoch, then all runs of all
configurations are timed `--repeats` times in alternating order; medians of wall-clock and
process-CPU time are reported. Ratios compare runs of the same configuration.

Configurations (28x28x1 Fashion-MNIST inputs, batch 128):
  tiny    teacher CNN 32-64-128 + Dense 128 (0.9 M params), student CNN 8-16-32 + Dense 32
          (57 k params): the models of `benchmarks/feature_methods.py` (RESULTS.md).
  medium  teacher CNN 2x32-2x64-2x128 + Dense 128 (1.1 M), student CNN 2x16-2x32-2x64 +
          Dense 64 (0.27 M): two convs per stage, as in the ResNet/WRN students of the papers.
  twin    teacher = the tiny student's architecture (other weights), so every tap has the
          student's shape: feature losses without any adapter. This isolates what the
          Distiller itself adds (extra extractor outputs, loss terms, trackers).

Runs per configuration:
  kd          keras_kd.Distiller, SoftTargetDistillation(T = 4)
  kd_3feat    + HintDistillation(relu2; auto adapter = 1x1 conv) + AttentionTransfer(relu2)
              + OverhaulDistillation(pre-ReLU relu3; adapter 1x1 conv + BN, as in the paper)
              (twin: + Hint(relu2) + Hint(relu3) + AttentionTransfer(relu2), adapter=None)
  kd_3feat_bn tiny only: as kd_3feat with HintDistillation(batch_norm=True) (the old default)
  kd_1feat    like for like with keras_feat: KD + one AttentionTransfer(relu3 -> relu3), the
              same taps and the same kind of loss (attention maps) as keras_feat
  keras       keras.distillation.Distiller, LogitsDistillation(T = 4)
  keras_feat  + one FeatureDistillation(relu3 -> relu3) with an attention-map MSE (the
              layers' channel counts differ, so plain "mse" cannot be used); it runs the
              student twice per step (keras/src/distillation/distiller.py)

Usage:
  python benchmarks/feature_throughput.py --single_thread   # ~6 min; CPU ratios on a busy box
  python benchmarks/feature_throughput.py                   # default TF threading
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
from _feature_models import (  # noqa: E402
    forward_macs,
    medium_student_model,
    medium_teacher_model,
    student_model,
    teacher_model,
    twin_teacher_model,
)
from _timing import interleaved_medians, time_run  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import losses as kd_losses  # noqa: E402
from keras_kd.datasets import read_idx  # noqa: E402

_EXAMPLES = flags.DEFINE_integer("examples", 6400, "Examples per timed epoch (tiny, twin).")
_MEDIUM_EXAMPLES = flags.DEFINE_integer(
    "medium_examples", 2560, "Examples per timed epoch of the medium configuration.")
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


def _three_features(teacher: keras.Model, hint_bn: bool = False):
    return [
        kd_losses.HintDistillation("t_relu2", "s_relu2", batch_norm=hint_bn),
        kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
        kd_losses.OverhaulDistillation("t_relu3", "s_relu3", teacher=teacher),
    ]


def _three_identity_features(teacher: keras.Model):
    del teacher
    return [
        kd_losses.HintDistillation("t_relu2", "s_relu2", adapter=None),
        kd_losses.HintDistillation("t_relu3", "s_relu3", adapter=None),
        kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
    ]


def _adapter_macs(distiller: keras_kd.Distiller) -> int:
    """Forward MACs per example of the 1x1-conv adapters (at the teacher tap's H x W)."""
    total = 0
    for loss in distiller.distillation_losses:
        adapter = getattr(loss, "adapter", None)
        if adapter is not None:
            h, w, c_out = adapter.target_shape
            total += h * w * int(adapter.conv.kernel.shape[2]) * c_out
    return total


def main(argv):
    del argv
    if _SINGLE_THREAD.value:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    batch = _BATCH_SIZE.value
    x = read_idx(_DATA_DIR / "train-images-idx3-ubyte.gz")[..., None].astype("float32") / 255
    y = read_idx(_DATA_DIR / "train-labels-idx1-ubyte.gz").astype("int64")

    def dataset(examples: int) -> tf.data.Dataset:
        n = (examples // batch) * batch
        return (tf.data.Dataset.from_tensor_slices((x[:n], y[:n]))
                .batch(batch, drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE))

    configs = {
        "tiny": (teacher_model(), student_model(), _three_features, _EXAMPLES.value),
        "medium": (medium_teacher_model(), medium_student_model(), _three_features,
                   _MEDIUM_EXAMPLES.value),
        "twin": (twin_teacher_model(), student_model(), _three_identity_features,
                 _EXAMPLES.value),
    }
    runs, steps, macs = {}, {}, {}
    for config, (teacher, student, features, examples) in configs.items():
        data = dataset(examples)
        steps[config] = examples // batch

        def ours(feature_losses, teacher=teacher, student=student):
            losses = [kd_losses.SoftTargetDistillation(_T), *feature_losses]
            distiller = keras_kd.Distiller(teacher, student, losses, student_loss_weight=_ALPHA)
            distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])
            return distiller

        runs[f"{config}/kd"] = _fit_epoch(ours([]), data)
        with_features = ours(features(teacher))
        runs[f"{config}/kd_3feat"] = _fit_epoch(with_features, data)
        if config != "twin":
            one_feature = [kd_losses.AttentionTransfer("t_relu3", "s_relu3")]
            runs[f"{config}/kd_1feat"] = _fit_epoch(ours(one_feature), data)
        if config == "tiny":
            runs[f"{config}/kd_3feat_bn"] = _fit_epoch(ours(_three_features(teacher, True)), data)
        if _KERAS.value and config != "twin":
            def theirs(feature_loss: bool, teacher=teacher, student=student):
                losses = [keras.distillation.LogitsDistillation(temperature=_T)]
                if feature_loss:
                    losses.append(keras.distillation.FeatureDistillation(
                        loss=_attention_mse, teacher_layer_name="t_relu3",
                        student_layer_name="s_relu3"))
                distiller = keras.distillation.Distiller(
                    teacher, student, distillation_losses=losses, student_loss_weight=_ALPHA)
                distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])
                return distiller

            runs[f"{config}/keras"] = _fit_epoch(theirs(False), data)
            runs[f"{config}/keras_feat"] = _fit_epoch(theirs(True), data)
        for name in [n for n in runs if n.startswith(f"{config}/")]:
            wall, _ = time_run(runs[name])  # warm-up (also builds the adapters)
            print(f"warm-up {name:<24s} {wall:6.2f} s", flush=True)
        macs[config] = (forward_macs(student), forward_macs(teacher),
                        _adapter_macs(with_features), student.count_params(),
                        teacher.count_params())

    t = interleaved_medians(runs, _REPEATS.value)
    print(f"\nmedians of {_REPEATS.value} interleaved epochs; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, tf {tf.__version__}, keras {keras.__version__}, "
          f"single_thread={_SINGLE_THREAD.value}, load average {os.getloadavg()}\n")
    print("| config | params student / teacher | fwd MMAC/example student / teacher / "
          "adapters | steps/epoch |")
    print("|---|---|---|---:|")
    for config, (s_mac, t_mac, a_mac, s_par, t_par) in macs.items():
        print(f"| {config} | {s_par:,} / {t_par:,} | {s_mac / 1e6:.2f} / {t_mac / 1e6:.2f} / "
              f"{a_mac / 1e6:.2f} ({100 * a_mac / s_mac:.0f}% of student) | {steps[config]} |")
    print("\n| run | CPU s / epoch | wall s / epoch | CPU ms / step |")
    print("|---|---:|---:|---:|")
    for name in runs:
        config = name.split("/")[0]
        print(f"| {name} | {t[name]['cpu']:.2f} | {t[name]['wall']:.2f} | "
              f"{1000 * t[name]['cpu'] / steps[config]:.1f} |")

    def ratio(a: str, b: str) -> str:
        if a not in t or b not in t:
            return "n/a"
        return f"{t[a]['cpu'] / t[b]['cpu']:.3f} | {t[a]['wall'] / t[b]['wall']:.3f}"

    print("\n| ratio | CPU | wall | target |")
    print("|---|---:|---:|---:|")
    for config in configs:
        print(f"| {config}: KD + 3 feature losses / KD | "
              f"{ratio(f'{config}/kd_3feat', f'{config}/kd')} | <= 1.15 |")
        if config == "tiny":
            print(f"| tiny: KD + 3 feature losses, Hint adapter with BN / KD | "
                  f"{ratio('tiny/kd_3feat_bn', 'tiny/kd')} | |")
        if _KERAS.value and config != "twin":
            print(f"| {config}: KD + 3 features / keras.distillation KD + 1 feature | "
                  f"{ratio(f'{config}/kd_3feat', f'{config}/keras_feat')} | |")
            print(f"| {config}: KD + 1 feature / keras.distillation KD + 1 feature | "
                  f"{ratio(f'{config}/kd_1feat', f'{config}/keras_feat')} | <= 1/1.4 |")
            print(f"| {config}: keras.distillation KD + 1 feature / keras.distillation KD | "
                  f"{ratio(f'{config}/keras_feat', f'{config}/keras')} | |")
            print(f"| {config}: keras_kd KD / keras.distillation KD | "
                  f"{ratio(f'{config}/kd', f'{config}/keras')} | |")


if __name__ == "__main__":
    app.run(main)
