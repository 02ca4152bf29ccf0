"""DAFL (Chen et al., ICCV 2019): a generator trained against the frozen teacher, and a student.

`DAFL` is one `keras.Model` whose `train_step` makes both updates of the paper's alternating
scheme from one generated batch, driven by `fit` over batches of latent noise: the generator
descends its loss (the one-hot, activation and information-entropy terms read through the frozen
teacher), the student descends the KD loss on the same generated images (detached). This is
what the authors' code does in one iteration (`loss = L_G + L_KD; loss.backward();
optimizer_G.step(); optimizer_S.step()`, the images detached for the student): each optimizer
receives exactly the gradient of its own model's loss.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, Tap
from keras_kd.losses.functional import soft_target_kl
from keras_kd.objective import StepResult, TrainingModel, weighted_mean

_LN10 = math.log(10.0)


# ---------------------------------------------------------------------- the three losses
def one_hot_loss(teacher_logits):
    """Per-example cross-entropy of the teacher's output with its own arg-max (`L_oh`).

    Args:
        teacher_logits: `(batch, classes)` teacher logits on generated images.

    Returns:
        `(batch,)` float32 `-log softmax(t)[argmax t]`.

    Example:
        >>> one_hot_loss(teacher(generator(z)))

    Reference:
        Chen et al., "DAFL: Data-Free Learning of Student Networks", ICCV 2019, eq. (2).
        `L_oh = 1/n sum_i H_cross(y_T^i, t^i)`, `t^i = one-hot(argmax y_T^i)`.
    """
    t = ops.cast(teacher_logits, "float32")
    return -ops.max(ops.log_softmax(t, axis=-1), axis=-1)


def activation_loss(teacher_features):
    """Per-example negative mean absolute activation of the teacher's features (`L_a`).

    Args:
        teacher_features: `(batch, ...)` the teacher's features before its classifier.

    Returns:
        `(batch,)` float32 `-mean |f_T|` over the feature values.

    Reference:
        Chen et al. 2019, eq. (3) (code: `-features_T.abs().mean()`).
        `L_a = -1/n sum_i ||f_T^i||_1`.
    """
    f = ops.cast(teacher_features, "float32")
    f = ops.reshape(f, (ops.shape(f)[0], -1))
    return -ops.mean(ops.abs(f), axis=-1)


def information_entropy_loss(teacher_logits):
    """Negative entropy (base 10) of the teacher's mean prediction over the batch (`L_ie`).

    Args:
        teacher_logits: `(batch, classes)`.

    Returns:
        A float32 scalar `sum_k p_k log10 p_k`, `p = mean_i softmax(y_T^i)`; minimal (the
        classes balanced) at `-log10(classes)`. It is a property of the whole batch, not of
        any example.

    Reference:
        Chen et al. 2019, eq. (4), with the authors' code's base-10 logarithm (the weight 5 on
        MNIST was tuned with it). `L_ie = -H_info(1/n sum_i y_T^i)`.
    """
    p = ops.mean(ops.softmax(ops.cast(teacher_logits, "float32"), axis=-1), axis=0)
    return ops.sum(p * ops.log(ops.maximum(p, 1e-30))) / _LN10


# ---------------------------------------------------------------------- the generator
def dafl_generator(latent_dim: int = 100, image_shape=(32, 32, 1), width: int = 128,
                   name: str = "dafl_generator") -> keras.Model:
    """The DAFL generator of the authors' code, as a functional Keras model.

    `Dense(128 * (s/4)^2) -> reshape -> BN -> upsample x2 -> Conv 128 3x3 -> BN(eps 0.8) ->
    LeakyReLU(0.2) -> upsample x2 -> Conv 64 3x3 -> BN(eps 0.8) -> LeakyReLU(0.2) ->
    Conv C 3x3 -> tanh -> BN without scale and offset` (PyTorch's `BatchNorm2d(n, 0.8)` sets
    eps = 0.8; its momentum 0.1 is Keras's 0.9).

    Args:
        latent_dim: size of the noise vector (100 on MNIST).
        image_shape: `(s, s, C)` with `s` divisible by 4 (`(32, 32, 1)` for LeNet-5 MNIST).
        width: channels of the first two convolutions (128 in the authors' code; the third
            has `width // 2`). Smaller widths are cheaper and depart from the paper.
        name: model name.

    Returns:
        A `keras.Model` from `(batch, latent_dim)` noise to `(batch, s, s, C)` images,
        standardised per channel by its last BatchNormalization.

    Example:
        >>> generator = dafl_generator(100, (32, 32, 1))
    """
    latent_dim = validation.positive_int("latent_dim", latent_dim)
    width = validation.positive_int("width", width, hint="The authors' code uses 128.")
    if len(image_shape) != 3 or image_shape[0] % 4 or image_shape[1] % 4:
        raise ValueError(f"image_shape must be (height, width, channels) with height and width "
                         f"divisible by 4, got {image_shape!r}.")
    h, w, c = (int(d) for d in image_shape)
    z = keras.Input((latent_dim,), name="latent")
    x = keras.layers.Dense(width * (h // 4) * (w // 4), name="project")(z)
    x = keras.layers.Reshape((h // 4, w // 4, width))(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn0")(x)
    x = keras.layers.UpSampling2D(2, name="up1")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=0.8, name="bn1")(x)
    x = keras.layers.LeakyReLU(0.2, name="lrelu1")(x)
    x = keras.layers.UpSampling2D(2, name="up2")(x)
    x = keras.layers.Conv2D(max(1, width // 2), 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=0.8, name="bn2")(x)
    x = keras.layers.LeakyReLU(0.2, name="lrelu2")(x)
    x = keras.layers.Conv2D(c, 3, padding="same", name="conv3")(x)
    x = keras.layers.Activation("tanh", name="tanh")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=False, scale=False,
                                        name="bn_out")(x)
    return keras.Model(z, x, name=name)


# ---------------------------------------------------------------------- the model
def _input_shape(model: keras.Model, role: str) -> tuple:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs) != 1:
        raise ValueError(f"The {role} '{model.name}' must be a Functional or Sequential model "
                         "with one input (build it with keras.Input).")
    return tuple(inputs[0].shape[1:])


def _penultimate_layer(teacher: keras.Model) -> str:
    """The name of the layer whose output feeds the teacher's logits layer."""
    from keras_kd.datafree.metadata import _history, _logits_layer

    top = _logits_layer(teacher)
    if top is None:
        raise ValueError(f"Cannot find the layer computing the logits of '{teacher.name}': "
                         "pass feature_layer=<name of the layer giving the features>.")
    operation, _ = _history(top.input)
    if operation is None or not isinstance(operation, keras.layers.Layer):
        raise ValueError(f"The logits layer '{top.name}' of '{teacher.name}' reads the model "
                         "input directly: pass feature_layer=<name of a hidden layer>.")
    return operation.name


@keras.saving.register_keras_serializable(package="keras_kd")
class DAFL(TrainingModel):
    """Data-free learning: a generator and a student trained together against a frozen teacher.

    Each training step draws the batch of latent vectors `z` that `fit` gives it, generates
    `x = G(z)` (`training=True`), runs the teacher on `x` (`training=False`, outside any update)
    and the student on `stop_gradient(x)`, and makes two updates from that one batch:

    - the generator (`compile(generator_optimizer=...)`) descends
      `L_G = one_hot_weight * L_oh + activation_weight * L_a + information_entropy_weight * L_ie`;
    - the student (`compile(optimizer=...)`) descends
      `L_KD = T^2 * KL(softmax(t / T) || softmax(s / T))` (T = 1 in the authors' code).

    The teacher is never updated (its variables are not in `trainable_variables`, it runs
    in inference mode, so its BatchNorm statistics do not move either). Logged:
    `loss` (`L_G + L_KD`), `generator_loss`, `one_hot_loss`, `activation_loss`,
    `information_entropy_loss`, `kd_loss`, `student_loss`. Training metrics
    (`compile(metrics=["accuracy"])`) compare the student with the teacher's arg-max on the
    generated batch (agreement); in `evaluate` / `validation_data=(x_test, y_test)` they use
    the real labels, `student_loss` is the compiled label loss of the student on those real
    examples (0 in training, where DAFL sees no data), and the generator terms are measured on
    a fresh batch of noise. `dafl(x)` returns the student's logits; `dafl.generator.save(...)`
    and `dafl.student.save(...)` save each alone.

    Args:
        teacher: the trained teacher (Functional/Sequential, one input, logits output).
        student: the student, same input shape and classes.
        generator: maps `(batch, latent_dim)` noise to the teacher's input shape
            (e.g. `dafl_generator`).
        feature_layer: the teacher layer whose output is `f_T` for `L_a` (default: the layer
            feeding the logits layer; for LeNet-5 the authors use the 120-d conv3 features).
        one_hot_weight, activation_weight, information_entropy_weight: the loss weights
            (1, 0.1, 5 on MNIST; non-trainable variables, schedulable).
        temperature: `T` of the KD loss (1 in the authors' code); a non-trainable variable.
        seed: seed of the noise drawn in evaluation.
        name: model name.

    Raises:
        TypeError, ValueError: models that are not single-input graph models, shapes that do
            not fit (generator output vs teacher input, student vs teacher classes), shared
            variables, bad weights, before any step.

    Example:
        >>> dafl = keras_kd.datafree.DAFL(teacher, student, dafl_generator(100, (32, 32, 1)),
        ...                               feature_layer="features")
        >>> dafl.compile(optimizer=keras.optimizers.Adam(2e-3),
        ...              generator_optimizer=keras.optimizers.Adam(0.2),
        ...              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...              metrics=["accuracy"])
        >>> dafl.fit(dafl.latent_dataset(512, seed=0), steps_per_epoch=120, epochs=200,
        ...          validation_data=(x_test, y_test))
        >>> dafl.student.save("student.keras"); dafl.generator.save("generator.keras")

    Reference:
        Chen, Wang, Xu, Yang, Liu, Shi, Xu, Xu & Tian, "DAFL: Data-Free Learning of Student
        Networks", ICCV 2019 (huawei-noah/Data-Efficient-Model-Compression, DAFL-train.py).
        `L_G = L_oh + a L_a + b L_ie`, `L_S = KL(softmax(t(G(z))) || softmax(s(G(z))))`.
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        generator: keras.Model,
        *,
        feature_layer: str | None = None,
        one_hot_weight: float = 1.0,
        activation_weight: float = 0.1,
        information_entropy_weight: float = 5.0,
        temperature: float = 1.0,
        seed: int = 0,
        name: str = "dafl",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for role, model in (("teacher", teacher), ("student", student),
                            ("generator", generator)):
            if not isinstance(model, keras.Model):
                raise TypeError(f"{role} must be a keras.Model, got {type(model)!r}.")
        if len({id(teacher), id(student), id(generator)}) != 3:
            raise ValueError("teacher, student and generator must be three different models.")
        t_shape = _input_shape(teacher, "teacher")
        s_shape = _input_shape(student, "student")
        z_shape = _input_shape(generator, "generator")
        g_out = tuple(generator.outputs[0].shape[1:])
        if g_out != t_shape:
            raise ValueError(f"The generator makes inputs of shape {g_out} but the teacher "
                             f"takes {t_shape}: build the generator for the teacher's input "
                             "shape (e.g. dafl_generator(100, image_shape=...)).")
        if s_shape != t_shape:
            raise ValueError(f"The student takes inputs of shape {s_shape} but the teacher "
                             f"{t_shape}; DAFL feeds both the same generated images.")
        if len(z_shape) != 1:
            raise ValueError(f"The generator must take flat latent vectors (batch, dim), "
                             f"got inputs of shape {z_shape}.")
        for a, b in ((teacher, student), (teacher, generator), (student, generator)):
            shared = {id(v) for v in a.weights} & {id(v) for v in b.weights}
            if shared:
                raise ValueError(f"'{a.name}' and '{b.name}' share {len(shared)} variable(s); "
                                 "DAFL trains the generator and the student apart and keeps "
                                 "the teacher frozen: give each model its own layers.")
        if feature_layer is None:
            feature_layer = _penultimate_layer(teacher)
        elif not isinstance(feature_layer, str):
            raise TypeError(f"feature_layer must be a layer name (str) or None, got "
                            f"{feature_layer!r}.")
        self.feature_tap = Tap(layer=feature_layer)
        self._teacher_features = FeatureExtractor(teacher, (LOGITS, self.feature_tap), "teacher")
        self._student_features = FeatureExtractor(student, (LOGITS,), "student")
        t_classes = self._teacher_features.shapes()[LOGITS][-1]
        s_classes = self._student_features.shapes()[LOGITS][-1]
        if t_classes != s_classes:
            raise ValueError(f"The teacher predicts {t_classes} classes but the student "
                             f"{s_classes}; both must predict the same classes.")
        self.teacher = teacher
        self.student = student
        self.generator = generator
        self.latent_dim = int(z_shape[0])
        values = {}
        for key, value in (("one_hot_weight", one_hot_weight),
                           ("activation_weight", activation_weight),
                           ("information_entropy_weight", information_entropy_weight)):
            values[key] = validation.non_negative(key, value, hint="The paper's MNIST values "
                                                  "are 1, 0.1 and 5.")
        temperature = validation.positive("temperature", temperature,
                                          hint="The authors' code uses 1.")
        self.seed = validation.non_negative_int("seed", seed)
        self.one_hot_weight = keras.Variable(values["one_hot_weight"], trainable=False,
                                             dtype="float32", name="one_hot_weight")
        self.activation_weight = keras.Variable(values["activation_weight"], trainable=False,
                                                dtype="float32", name="activation_weight")
        self.information_entropy_weight = keras.Variable(
            values["information_entropy_weight"], trainable=False, dtype="float32",
            name="information_entropy_weight")
        self.temperature = keras.Variable(temperature, trainable=False, dtype="float32",
                                          name="temperature")
        self._seed_generator = keras.random.SeedGenerator(self.seed, name="evaluation_noise")
        self.generator_optimizer = None
        self.track(["loss", "generator_loss", "one_hot_loss", "activation_loss",
                    "information_entropy_loss", "kd_loss", "student_loss"])
        self.built = True

    # ------------------------------------------------------------------ variables
    def frozen_models(self) -> list:
        """The teacher: the generator and the student train, the teacher never does."""
        return [self.teacher]

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="adam", generator_optimizer="adam", loss=None, metrics=None,
                **kwargs):
        """Configures training.

        Args:
            optimizer: the student's optimizer (Adam 2e-3 on MNIST in the authors' code).
            generator_optimizer: the generator's optimizer (Adam 0.2 on MNIST there).
            loss: the label loss of the student, used in evaluation on real data only.
            metrics: the student's metrics (teacher agreement in training, labels in
                evaluation).
            **kwargs: passed to `TrainingModel.compile`.
        """
        self.generator_optimizer = keras.optimizers.get(generator_optimizer)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_compile_config(self) -> dict:
        config = super().get_compile_config()
        if config and self.generator_optimizer is not None:
            config["generator_optimizer"] = keras.saving.serialize_keras_object(
                self.generator_optimizer)
        return config

    # ------------------------------------------------------------------ data
    def latent_dataset(self, batch_size: int, seed: int = 0) -> tf.data.Dataset:
        """An endless, seeded dataset of `(batch_size, latent_dim)` standard normal batches.

        Batch `i` is `tf.random.stateless_normal(..., seed=[seed, i])`: the same noise on
        every run. Pass `steps_per_epoch` to `fit` (120 per epoch in the authors' code).
        """
        batch_size = validation.positive_int("batch_size", batch_size)
        seed = validation.non_negative_int("seed", seed)
        shape = (batch_size, self.latent_dim)
        return tf.data.Dataset.range(2**62).map(
            lambda i: tf.random.stateless_normal(shape, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                        i])))

    # ------------------------------------------------------------------ the step
    def call(self, inputs, training=None):
        """The student's logits on real inputs."""
        return self.student(inputs, training=training)

    def _generated_step(self, z, training: bool):
        """`(StepResult on a generated batch, the teacher's arg-max classes)`."""
        images = self.generator(z, training=training)
        _, t = self._teacher_features(images, training=False)
        t_logits = ops.cast(t[LOGITS], "float32")
        features = ops.cast(t[self.feature_tap], "float32")
        oh = weighted_mean(one_hot_loss(t_logits))
        act = weighted_mean(activation_loss(features))
        ie = information_entropy_loss(t_logits)
        generator_loss = (self.one_hot_weight * oh + self.activation_weight * act
                          + self.information_entropy_weight * ie)
        s_logits, _ = self._student_features(ops.stop_gradient(images), training=training)
        s_logits = ops.cast(s_logits, "float32")
        kd = weighted_mean(soft_target_kl(ops.stop_gradient(t_logits), s_logits,
                                          self.temperature))
        total = generator_loss + kd
        logs = {"loss": total, "generator_loss": generator_loss, "one_hot_loss": oh,
                "activation_loss": act, "information_entropy_loss": ie, "kd_loss": kd,
                "student_loss": ops.zeros((), "float32")}
        return StepResult(total, logs, s_logits), ops.argmax(t_logits, axis=-1)

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        """Training: `x` is latent noise. Evaluation: `x`, `y` are real examples."""
        if training:
            result, teacher_classes = self._generated_step(x, True)
            result.labels = teacher_classes  # metrics of generated batches: the teacher's class
            return result
        batch = ops.shape(x)[0]
        z = keras.random.normal((batch, self.latent_dim), seed=self._seed_generator)
        result, _ = self._generated_step(z, False)
        s_logits = ops.cast(self.student(x, training=False), "float32")
        logs = dict(result.logs)
        if self.label_loss is not None and y is not None:
            logs["student_loss"] = weighted_mean(self.label_loss(y, s_logits), sample_weight)
        return StepResult(result.loss, logs, s_logits)

    def optimizer_groups(self) -> list[tuple]:
        """Both updates from one generated batch: the generator's optimizer on the generator
        (its loss terms only: the student sees the images under `stop_gradient`), the compiled
        optimizer on the student (the KD term only: the teacher's logits are stopped). The
        teacher is in neither group."""
        if self.generator_optimizer is None:
            raise ValueError("Call compile(...) before fit: DAFL needs the student's and the "
                             "generator's optimizers.")
        return [
            (self.generator_optimizer, self._not_frozen(self.generator.trainable_variables)),
            (self.optimizer, self._not_frozen(self.student.trainable_variables)),
        ]

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "generator": keras.saving.serialize_keras_object(self.generator),
            "feature_layer": self.feature_tap.layer,
            "one_hot_weight": float(np.asarray(self.one_hot_weight.numpy())),
            "activation_weight": float(np.asarray(self.activation_weight.numpy())),
            "information_entropy_weight": float(np.asarray(
                self.information_entropy_weight.numpy())),
            "temperature": float(np.asarray(self.temperature.numpy())),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> DAFL:
        config = dict(config)
        for key in ("teacher", "student", "generator"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
