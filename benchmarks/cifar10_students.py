r"""CIFAR-10 students of the ResNet-20 teacher: every method, the same budget, 3 seeds.

The teacher is `benchmarks/weights/cifar10_resnet20.keras` (trained by `cifar10_teacher.py`).
Every row trains the same student (by default the 2-layer plain CNN of Mirzadeh et al. 2020,
13 k parameters, `keras_kd.models.plain_cnn(2)`; `--student=cnn4` is their 4-layer one, 38 k,
also every row, and `--student=resnet8` a ResNet-8, 79 k, every row but ONE and Rocket)
from the same initial weights per seed, on all 50,000 training images in the same order per
seed, for `--epochs` epochs (batch 128, Adam with a cosine decay of the learning rate from 1e-3
to 0, no augmentation), and is evaluated on the 10,000 test images. Two-model rows (TA chain,
born-again, the online methods) give each training step the same budget. Label-loss weight
alpha = 0.5 unless a row says otherwise; KD uses T = 4.

Rows whose teacher signal is only the teacher's logits train on logits cached once (exact: the
inputs are not augmented); rows with feature losses run the teacher live in bfloat16
(`teacher_precision="bfloat16"`, 1.9x faster on these CPUs). They tap the teacher's stage1 /
stage2 against the student's s1 / s2 = relu_0 / relu_1 (cnn2) or relu_1 / relu_3 (cnn4), the
last ReLU of each of its two stages, or stage1 / stage2 (resnet8, the same shapes as the
teacher's).

  scratch     cross-entropy only
  kd          CE + soft targets, T = 4 (Hinton et al. 2015)
  fitnets     stage 1 (1 epoch): hint teacher stage2 -> student s2 (1x1 conv adapter);
              stage 2: CE + KD (Romero et al. 2015)
  at          CE + attention transfer stage1 -> s1, stage2 -> s2, beta = 1000
  fsp         CE + FSP matrix of (stage1, stage2) vs (s1, s2)
  rkd         CE + RKD distance (25) + angle (50) on teacher pool vs student flatten
              (the ResNet-8: pool)
  overhaul    CE + Overhaul on the pre-ReLU stage2 / s2, margin from the teacher's last
              stage-2 BN (as the paper's code does for ResNets), weight 2e-3
  adaptive    CE + KD + logit MSE + AT + hint (Chennupati et al.'s paths), the path weights
              learned by UncertaintyWeighting (Kendall et al. 2018)
  takd        teacher -> assistant (plain CNN, 4-layer; 6-layer for cnn4; ResNet-14 for
              resnet8) -> student
              (`teacher_assistant_chain`)
  ensemble    KD from `Ensemble([ResNet-20, ResNet-8 a, ResNet-8 b])` (probabilities at T = 4);
              the two ResNet-8 are trained by this script (`--ensemble_epochs`, augmented)
  ban         born-again generation 1: KD from the scratch student of the same seed
  dml         `MutualLearning` of two students (T = 1): peer 0
  one         `NativeEnsemble`: the student's first stage shared, 3 branches (its second
              stage + FC), T = 3; branch 0 alone (the student's architecture); plain CNNs
  rocket      `RocketLaunching`: the light net (the student) and a booster (deeper head) share
              the student's first stage; logit MSE lambda = 0.03, gradient block: the light
              net; plain CNNs
  dkd         CE + DKD (alpha 1, beta 8, T = 4), warm-up over the first epoch (Zhao et al. 2022)
  dist        CE + DIST (beta = gamma = 2, T = 4) (Huang et al. 2022)
  kd_ls       CE + KD on z-scored logits, T = 2, alpha = 0.1 / 9.1 (Sun et al. 2024's
              configuration: CE weight 0.1, KD weight 9)
  dkd_ls      CE + DKD on z-scored logits, T = 2
  (--dkd_beta, --ls_temperature and --kd_ls_alpha change these rows' values, for ablations)

Usage:
  nice python benchmarks/cifar10_students.py > runs/cifar10_students.log 2>&1 &
  python benchmarks/cifar10_students.py --methods=scratch,kd --seeds=0 --epochs=1  # quick look
  python benchmarks/cifar10_students.py --student=cnn4 --methods=scratch,kd --epochs=5
  python benchmarks/cifar10_students.py --student=cnn4 --methods=dkd --epochs=5 --dkd_beta=0.5
  python benchmarks/cifar10_students.py --teacher_stats  # how soft the teacher's targets are
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
import tensorflow as tf  # noqa: E402
from _cifar import DEFAULT_NPZ, TEACHER_PATH, arrays, train_dataset  # noqa: E402
from _results import run_missing  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import losses as kd_losses  # noqa: E402
from keras_kd.models import plain_cnn, resnet_cifar  # noqa: E402
from keras_kd.online import MutualLearning, NativeEnsemble, RocketLaunching  # noqa: E402
from keras_kd.recipes import teacher_assistant_chain  # noqa: E402
from keras_kd.teachers import Ensemble  # noqa: E402
from keras_kd.weighting import UncertaintyWeighting  # noqa: E402

METHODS = (
    "scratch", "kd", "fitnets", "at", "fsp", "rkd", "overhaul", "adaptive", "takd", "ensemble",
    "ban", "dml", "one", "rocket", "dkd", "dist", "kd_ls", "dkd_ls",
)
# Rows that need no pre-trained teacher (they can run before it is trained).
TEACHERLESS = {"scratch", "ban", "dml", "one", "rocket"}
# Published counterparts (relative comparison only: other data, architectures and budgets).
# TAKD = Mirzadeh et al. 2020 Table 1, CIFAR-10 plain CNNs (for the 2-layer student only).
PUBLISHED_TAKD = {"scratch": "TAKD NOKD 70.16", "kd": "TAKD BLKD 72.57", "takd": "TAKD 73.51"}
# C100 = CIFAR-100 resnet32x4 -> resnet8x4 (student alone 72.50) from the CRD / DKD / DIST / LS
# authors' READMEs, unless the string names other networks.
PUBLISHED_C100 = {
    "scratch": "C100 72.50",
    "kd": "C100 73.33",
    "fitnets": "C100 73.50",
    "at": "C100 73.44",
    "fsp": "C100 72.62",
    "rkd": "C100 71.90",
    "overhaul": "C100 WRN-28-4 -> 16-2: 72.68 -> 75.92",
    "dml": "C100 ResNet-32: 68.99 alone -> 71.19",
    "dkd": "C100 76.32",
    "dist": "C100 76.31",
    "kd_ls": "C100 76.62",
    "dkd_ls": "C100 77.01",
}


def published(method: str) -> str:
    """The published counterparts of a row for `--student` (TAKD's are for the 2-layer one)."""
    takd = PUBLISHED_TAKD.get(method) if _STUDENT.value == "cnn2" else None
    return "; ".join(p for p in (takd, PUBLISHED_C100.get(method)) if p) or "—"


_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Rows to run, among {METHODS}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (student init and data order).")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Student epochs (every training step of a row).")
_TRAIN = flags.DEFINE_integer("train_examples", 50000, "Training images (the first n).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam's initial learning rate (cosine to 0).")
_ENSEMBLE_EPOCHS = flags.DEFINE_integer("ensemble_epochs", 8, "Epochs of each ResNet-8.")
_NPZ = flags.DEFINE_string("cifar_npz", DEFAULT_NPZ, "Path of cifar10_jpeg_yoongikim.npz.")
_TEACHER = flags.DEFINE_string("teacher", TEACHER_PATH, "The trained teacher (.keras).")
_OUT = flags.DEFINE_string("output_dir", "runs/cifar10_students", "Results and extra teachers.")
_STUDENT = flags.DEFINE_enum(
    "student", "cnn2", ["cnn2", "cnn4", "resnet8"],
    "cnn2: TAKD's 2-layer plain CNN; cnn4: its 4-layer one (both: every row); resnet8: "
    "ResNet-8 (every row but one and rocket).")

# Ablation flags of the modern logit rows. A value other than the default writes its own results
# file (suffix _<flag><value>) and appears in the printed command of the rows it changes.
_DKD_BETA = flags.DEFINE_float(
    "dkd_beta", 8.0, "DKD's non-target weight beta in dkd and dkd_ls (the paper's CIFAR-100 8).")
_LS_T = flags.DEFINE_float(
    "ls_temperature", 2.0, "Temperature of the z-scored logits in kd_ls, dkd_ls (Sun et al.: 2).")
_KD_LS_ALPHA = flags.DEFINE_float(
    "kd_ls_alpha", 0.1 / 9.1, "kd_ls's hard-label weight (Sun et al.: CE 0.1, KD 9 -> 0.1 / 9.1).")
ABLATIONS = {"dkd_beta": ("dkd", "dkd_ls"), "ls_temperature": ("kd_ls", "dkd_ls"),
             "kd_ls_alpha": ("kd_ls",)}
_TEACHER_STATS = flags.DEFINE_bool(
    "teacher_stats", False, "Only print how soft the teacher's targets are on the training "
    "images (raw logits at T = 4, z-scored at --ls_temperature) and exit.")
_CURVES = flags.DEFINE_bool(
    "curves", False, "Record each student's test and training-subset accuracy after every epoch "
    "(test_curve / train_curve in the results; two extra evaluations per epoch).")

ALPHA = 0.5
T = 4.0
L = keras.layers


def _log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


class Data:
    def __init__(self):
        (x, y), (x_test, y_test) = arrays(_NPZ.value)
        n = _TRAIN.value
        self.x = x[:n].astype("float32") / 255.0
        self.y = y[:n]
        self.x_test = x_test.astype("float32") / 255.0
        self.y_test = y_test
        self.steps = int(np.ceil(len(self.x) / _BATCH.value))

    def train(self, seed: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((self.x, self.y)).shuffle(len(self.x), seed=seed)
        return ds.batch(_BATCH.value).prefetch(tf.data.AUTOTUNE)

    def cached(self, teacher) -> tf.data.Dataset:
        return keras_kd.cache_teacher_logits(teacher, self.x, self.y, batch_size=500)

    def batches(self, cached: tf.data.Dataset, seed: int) -> tf.data.Dataset:
        ds = cached.shuffle(len(self.x), seed=seed).batch(_BATCH.value)
        return ds.prefetch(tf.data.AUTOTUNE)

    def accuracy(self, model, train: bool = False) -> float:
        """Test accuracy, or with `train` the accuracy on the first 10,000 training images."""
        x, y = (self.x[:10000], self.y[:10000]) if train else (self.x_test, self.y_test)
        logits = model.predict(x, batch_size=1000, verbose=0)
        return float((np.argmax(logits, -1) == y).mean())


def teacher_softness(teacher: keras.Model, data: Data) -> str:
    """How soft the teacher's targets are on the training images, as KD, DKD and LS see them.

    Per softening: the mean probability of the true class `p_t` (KD weighs its non-target term
    by `1 - p_t`, where DKD uses a constant beta) and the mean entropy, against the uniform
    distribution's `log(classes)`.
    """
    logits = teacher.predict(data.x, batch_size=500, verbose=0).astype("float64")
    lines = [f"teacher on {len(data.x):,} training images: per-example logit std "
             f"(ddof 1) mean {logits.std(axis=1, ddof=1).mean():.2f}, "
             f"accuracy {(logits.argmax(1) == data.y).mean():.4f}"]
    z_scored = np.asarray(kd_losses.functional.standardize_logits(logits), "float64")
    for name, z, t in (("raw", logits, T), ("z-scored", z_scored, _LS_T.value)):
        a = z / t
        a -= a.max(1, keepdims=True)
        log_p = a - np.log(np.exp(a).sum(1, keepdims=True))
        p = np.exp(log_p)
        p_t = p[np.arange(len(data.y)), data.y].mean()
        entropy = -(p * log_p).sum(1).mean()
        lines.append(f"{name} logits at T = {t:g}: mean p_t {p_t:.3f} (1 - p_t {1 - p_t:.3f}), "
                     f"mean entropy {entropy:.3f} nats (uniform: {np.log(z.shape[1]):.3f})")
    return "\n".join(lines)


class Curves(keras.callbacks.Callback):
    """After each epoch, the watched student's test and training-subset accuracy."""

    def __init__(self, data: Data, student: keras.Model):
        super().__init__()
        self.data, self.student = data, student
        self.test, self.train = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.test.append(self.data.accuracy(self.student))
        self.train.append(self.data.accuracy(self.student, train=True))


def optimizer(epochs: int, steps: int):
    schedule = keras.optimizers.schedules.CosineDecay(_LR.value, epochs * steps)
    return keras.optimizers.Adam(schedule)


def compile_kwargs(epochs: int, steps: int) -> dict:
    return {
        "optimizer": optimizer(epochs, steps),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }


STUDENTS = {
    "cnn2": lambda name: plain_cnn(2, name=name),
    "cnn4": lambda name: plain_cnn(4, name=name),
    "resnet8": lambda name: resnet_cifar(8, name=name),
}
# Per student: the layers tapped against the teacher's `stage1` (32x32x16) and `stage2`
# (16x16x32), the embedding RKD compares with the teacher's `pool`, the TA chain's assistant
# (TAKD's 10 -> 4 -> 2 and, for the 4-layer student, 10 -> 6 -> 4 with the ResNet-20 in the
# 10-layer CNN's place; ResNet-20 -> 14 -> 8 for the ResNet) and, for the plain CNNs, the conv
# widths of the student's two stages, from which ONE's trunk and branches and Rocket's shared
# block and light head are built (`ONLINE_STAGED`: not built for the ResNet).
ARCHITECTURE = {
    "cnn2": {"stage1": "relu_0", "stage2": "relu_1", "embedding": "flatten",
             "assistant": lambda name: plain_cnn(4, name=name), "stages": ((16,), (16,))},
    "cnn4": {"stage1": "relu_1", "stage2": "relu_3", "embedding": "flatten",
             "assistant": lambda name: plain_cnn(6, name=name),
             "stages": ((16, 16), (32, 32))},
    "resnet8": {"stage1": "stage1", "stage2": "stage2", "embedding": "pool",
                "assistant": lambda name: resnet_cifar(14, name=name)},
}
ONLINE_STAGED = {"one", "rocket"}


def student(seed: int, offset: int = 0, name: str = "student") -> keras.Model:
    keras.utils.set_random_seed(1000 * seed + offset)
    return STUDENTS[_STUDENT.value](name)


# ------------------------------------------------------------------------- online models
def conv_stage(h, widths: tuple[int, ...], name: str):
    """Conv-BN-ReLU per width (layers `{name}_conv`..., or `{name}{j}_conv`... for several
    widths), then 2x2 max-pooling."""
    for j, filters in enumerate(widths):
        tag = name if len(widths) == 1 else f"{name}{j}"
        h = L.Conv2D(filters, 3, padding="same", name=f"{tag}_conv")(h)
        h = L.BatchNormalization(name=f"{tag}_bn")(h)
        h = L.ReLU(name=f"{tag}_relu")(h)
    return L.MaxPooling2D(2)(h)


def one_models(seed: int):
    """Trunk = the student's first stage; 3 branches = its second stage + FC."""
    first, second = ARCHITECTURE[_STUDENT.value]["stages"]
    keras.utils.set_random_seed(1000 * seed + 40)
    inputs = keras.Input((32, 32, 3))
    trunk = keras.Model(inputs, conv_stage(inputs, first, "trunk"), name="trunk")
    branches = []
    for i in range(3):
        b_in = keras.Input(trunk.output.shape[1:])
        h = L.Flatten()(conv_stage(b_in, second, f"branch{i}"))
        branches.append(keras.Model(b_in, L.Dense(10)(h), name=f"branch_{i}"))
    return trunk, branches


def rocket_models(seed: int):
    """Light = the student; booster = its first stage (shared) + two stages of 32 and 64."""
    first, second = ARCHITECTURE[_STUDENT.value]["stages"]
    keras.utils.set_random_seed(1000 * seed + 50)
    inputs = keras.Input((32, 32, 3))
    shared = conv_stage(inputs, first, "shared")
    light = L.Dense(10, name="light_logits")(L.Flatten()(conv_stage(shared, second, "light")))
    h = conv_stage(shared, (32,) * len(second), "booster_a")
    h = conv_stage(h, (64,) * len(second), "booster_b")
    booster = L.Dense(10, name="booster_logits")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, light, name="light"), keras.Model(inputs, booster, name="booster")


# ----------------------------------------------------------------------------- the rows
def distiller_row(method: str, teacher: keras.Model, s: keras.Model):
    """`(teacher or None for cached logits, losses, weights, alpha, callbacks)`."""
    kd = kd_losses.SoftTargetDistillation(T)
    cached = {
        "kd": ([kd], [1.0], ALPHA, []),
        "dkd": ([kd_losses.DecoupledKD(1.0, _DKD_BETA.value, T)], [1.0], ALPHA, "dkd"),
        "dist": ([kd_losses.DISTDistillation(2.0, 2.0, T)], [1.0], ALPHA, []),
        # Sun et al.'s resnet32x4 -> resnet8x4 config: T = 2, CE weight 0.1, KD weight 9.
        "kd_ls": ([kd_losses.SoftTargetDistillation(_LS_T.value, logit_standardization=True)],
                  [1.0], _KD_LS_ALPHA.value, []),
        "dkd_ls": ([kd_losses.DecoupledKD(1.0, _DKD_BETA.value, _LS_T.value,
                                          logit_standardization=True)], [1.0], ALPHA, "dkd"),
    }
    if method in cached:
        losses, weights, alpha, callbacks = cached[method]
        if callbacks == "dkd":
            callbacks = [keras_kd.callbacks.DKDWarmup(losses[0], 1)]
        return None, losses, weights, alpha, callbacks
    callbacks = []
    s1, s2 = ARCHITECTURE[_STUDENT.value]["stage1"], ARCHITECTURE[_STUDENT.value]["stage2"]
    if method == "fitnets":
        hint = kd_losses.HintDistillation("stage2", s2)
        losses, weights = [kd, hint], [1.0, 0.0]
        callbacks.append(keras_kd.callbacks.HintStage(hint, 1))
    elif method == "at":
        losses = [kd_losses.AttentionTransfer("stage1", s1),
                  kd_losses.AttentionTransfer("stage2", s2)]
        weights = [1000.0, 1000.0]
    elif method == "fsp":
        losses, weights = [kd_losses.FSPDistillation(("stage1", "stage2"), (s1, s2))], [1.0]
    elif method == "rkd":
        embedding = ARCHITECTURE[_STUDENT.value]["embedding"]
        losses, weights = [kd_losses.RelationalDistillation("pool", embedding)], [1.0]
    elif method == "overhaul":
        losses = [kd_losses.OverhaulDistillation(
            "stage2", s2, teacher=teacher, teacher_batch_norm="stage2_block2_b_bn")]
        weights = [2e-3]  # (1 - alpha) * 2e-3 = the paper's 1e-3
    elif method == "adaptive":
        losses = [kd, kd_losses.LogitMatchingDistillation(),
                  kd_losses.AttentionTransfer("stage2", s2),
                  kd_losses.HintDistillation("stage2", s2)]
        weights = UncertaintyWeighting(4)
    else:
        raise ValueError(f"unknown method {method!r}")
    return teacher, losses, weights, ALPHA, callbacks


class Runner:
    def __init__(self, data: Data, teacher: keras.Model):
        self.data, self.teacher = data, teacher
        self.epochs, self.steps = _EPOCHS.value, data.steps
        self.out = Path(_OUT.value)
        self.out.mkdir(parents=True, exist_ok=True)
        self._cache = {}
        self._scratch = {}
        self.curves = {}  # per seed and run name: `Curves` of the runs that pass `watch`

    def fit(self, model, train, callbacks=None, watch=None):
        """Compiles and fits `model`; with `watch=(key, student)` and `--curves` records that
        student's per-epoch accuracies in `self.curves[key]`."""
        callbacks = list(callbacks or [])
        if watch is not None and _CURVES.value:
            self.curves[watch[0]] = Curves(self.data, watch[1])
            callbacks.append(self.curves[watch[0]])
        model.compile(**compile_kwargs(self.epochs, self.steps))
        model.fit(train, epochs=self.epochs, verbose=0, callbacks=callbacks)
        return model

    def cached(self, key, teacher, seed):
        """Teacher logits computed once per `key` (teacher), shuffled per seed."""
        if key not in self._cache:
            self._cache[key] = self.data.cached(teacher)
        return self.data.batches(self._cache[key], seed)

    def scratch(self, seed):
        if seed not in self._scratch:
            s = student(seed)
            self._scratch[seed] = self.fit(s, self.data.train(seed), watch=(("scratch", seed), s))
        return self._scratch[seed]

    def ensemble_teachers(self):
        members = [self.teacher]
        for i in range(2):
            path = self.out / f"resnet8_{i}_e{_ENSEMBLE_EPOCHS.value}.keras"
            if not path.exists():
                keras.utils.set_random_seed(500 + i)
                model = resnet_cifar(8, weight_decay=2.5e-4, name=f"resnet8_{i}")
                steps = self.data.steps
                schedule = keras.optimizers.schedules.CosineDecay(
                    0.0, max(1, (_ENSEMBLE_EPOCHS.value - 1) * steps), warmup_target=0.1,
                    warmup_steps=steps)
                model.compile(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                x_u8 = (self.data.x * 255).round().astype("uint8")
                model.fit(train_dataset(x_u8, self.data.y, _BATCH.value, 500 + i),
                          epochs=_ENSEMBLE_EPOCHS.value, verbose=0)
                model.save(path)
            members.append(keras.models.load_model(path))
        return members

    def run(self, method: str, seed: int) -> dict:
        data, teacher = self.data, self.teacher
        extra = {}
        if method == "scratch":
            model = self.scratch(seed)
        elif method in ("kd", "dkd", "dist", "kd_ls", "dkd_ls", "fitnets", "at", "fsp", "rkd",
                        "overhaul", "adaptive"):
            model = student(seed)
            t, losses, weights, alpha, callbacks = distiller_row(method, teacher, model)
            if t is None:
                train = self.cached("teacher", teacher, seed)
                distiller = keras_kd.Distiller(None, model, losses, weights, alpha)
            else:
                train = data.train(seed)
                distiller = keras_kd.Distiller(t, model, losses, weights, alpha,
                                               teacher_precision="bfloat16")
            history = self.fit(distiller, train, callbacks=callbacks,
                               watch=((method, seed), model)).history.history
            extra = {k: float(v[-1]) for k, v in history.items() if k.endswith("_weight")}
        elif method == "ensemble":
            if "members" not in self._cache:
                members = self.ensemble_teachers()
                self._cache["members"] = (members, [data.accuracy(m) for m in members])
            members, accuracies = self._cache["members"]
            extra = {f"member_{i}": a for i, a in enumerate(accuracies)}
            model = student(seed)
            train = self.cached("ensemble", Ensemble(members, temperature=T), seed)
            self.fit(keras_kd.Distiller(None, model, kd_losses.SoftTargetDistillation(T),
                                        student_loss_weight=ALPHA), train)
        elif method == "takd":
            keras.utils.set_random_seed(1000 * seed + 20)
            assistant = ARCHITECTURE[_STUDENT.value]["assistant"]("assistant")
            chain = teacher_assistant_chain(
                teacher, [assistant], student(seed), data.train(seed), epochs=self.epochs,
                distiller_kwargs={"distillation_losses": kd_losses.SoftTargetDistillation(T),
                                  "student_loss_weight": ALPHA},
                compile_kwargs=compile_kwargs(self.epochs, self.steps), verbose=0)
            extra = {"assistant": data.accuracy(chain.models[0])}
            model = chain.models[1]
        elif method == "ban":
            gen0 = self.scratch(seed)
            model = student(seed, 30, "generation_1")
            self.fit(keras_kd.Distiller(None, model, kd_losses.SoftTargetDistillation(T),
                                        student_loss_weight=ALPHA),
                     self.cached(f"ban_{seed}", gen0, seed))
        elif method == "dml":
            peers = [student(seed), student(seed, 60, "peer_1")]
            self.fit(MutualLearning(peers, temperature=1.0), data.train(seed))
            extra = {"peer_1": data.accuracy(peers[1])}
            model = peers[0]
        elif method == "one":
            trunk, branches = one_models(seed)
            one = self.fit(NativeEnsemble(trunk, branches, temperature=3.0), data.train(seed))
            extra = {"ensemble": data.accuracy(one.ensemble_model())}
            model = one.branch_model(0)
        elif method == "rocket":
            light, booster = rocket_models(seed)
            self.fit(RocketLaunching(light, booster, hint_weight=0.03), data.train(seed))
            extra = {"booster": data.accuracy(booster)}
            model = light
        else:
            raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
        curves = self.curves.get((method, seed))
        if curves is not None:  # per epoch: test accuracy, accuracy on 10k training images
            extra.update(test_curve=curves.test, train_curve=curves.train)
        return {"method": method, "seed": seed, "accuracy": data.accuracy(model), **extra}


def main(argv):
    del argv
    for method in _METHODS.value:
        if method not in METHODS:
            raise app.UsageError(f"--methods: unknown {method!r}; valid: {METHODS}")
        if method in ONLINE_STAGED and "stages" not in ARCHITECTURE[_STUDENT.value]:
            staged = [name for name, arch in ARCHITECTURE.items() if "stages" in arch]
            raise app.UsageError(
                f"--methods={method} builds its models from the plain CNN's stages, known for "
                f"--student={'/'.join(staged)}; with --student={_STUDENT.value} leave out "
                f"{sorted(ONLINE_STAGED)}.")
    seeds = [int(s) for s in _SEEDS.value]
    data = Data()
    teacher = teacher_accuracy = None
    if _TEACHER_STATS.value or set(_METHODS.value) - TEACHERLESS:
        teacher = keras.models.load_model(_TEACHER.value)
        teacher_accuracy = data.accuracy(teacher)
        _log(f"teacher {_TEACHER.value}: test accuracy {teacher_accuracy:.4f}")
    if _TEACHER_STATS.value:
        print(teacher_softness(teacher, data))
        return
    runner = Runner(data, teacher)
    prefix = "results" if _STUDENT.value == "cnn2" else f"results_{_STUDENT.value}"
    changed = {name: flags.FLAGS[name].value for name in ABLATIONS
               if flags.FLAGS[name].value != flags.FLAGS[name].default}
    suffix = "".join(f"_{name}{value:g}" for name, value in changed.items())
    results_path = runner.out / (
        f"{prefix}_e{_EPOCHS.value}_n{_TRAIN.value}_b{_BATCH.value}{suffix}.jsonl")
    def timed(method, seed):
        start, cpu = time.perf_counter(), time.process_time()
        result = runner.run(method, seed)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu
        return result

    def ablation_flags(method):
        return "".join(f" --{name}={value:g}" for name, value in changed.items()
                       if method in ABLATIONS[name])

    pairs = [(method, seed) for seed in seeds for method in _METHODS.value]
    done = run_missing(results_path, pairs, timed, _log)

    argv0 = "python benchmarks/cifar10_students.py"
    common = (f"--student={_STUDENT.value} --epochs={_EPOCHS.value} "
              f"--train_examples={_TRAIN.value} --seeds={','.join(map(str, seeds))}")
    if teacher is not None:
        print(f"\nTeacher ResNet-20 ({teacher.count_params():,} params): "
              f"{100 * teacher_accuracy:.2f}% test accuracy.")
    print(f"Student {_STUDENT.value} "
          f"({STUDENTS[_STUDENT.value]('s').count_params():,} params). CIFAR-10 (lossy JPEG copy), "
          f"{len(data.x):,} training images, {_EPOCHS.value} epochs, batch {_BATCH.value}; "
          f"mean +- std over seeds {seeds}.\n")
    print("| method | test accuracy (%) | per seed | published (reference) | command |")
    print("|---|---:|---|---|---|")
    for method in _METHODS.value:
        rows = [done[(method, s)] for s in seeds if (method, s) in done]
        if not rows:
            continue
        accs = [100 * r["accuracy"] for r in rows]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {method} | {statistics.mean(accs):.2f} ± {std:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} | {published(method)} | "
              f"`{argv0} --methods={method} {common}{ablation_flags(method)}` |")
    print(f"\n{sys.version.split()[0]}, keras {keras.__version__}, results in {results_path}")


if __name__ == "__main__":
    app.run(main)
