"""Decoupled knowledge distillation (Zhao et al. 2022)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.losses.base import DistillationLoss, make_temperature
from keras_kd.losses.functional import decoupled_kd, standardize_logits


@keras.saving.register_keras_serializable(package="keras_kd")
class DecoupledKD(DistillationLoss):
    """Distils the target-class and the non-target-class knowledge with separate weights.

    KD's loss splits into a target-class term (TCKD: the binary target / non-target
    probabilities) and a non-target term (NCKD: the distribution over the other classes),
    the latter weighted down by the teacher's target confidence in plain KD. DKD weighs the two
    freely. It needs the labels (`needs_labels()` is `True`): the `Distiller` passes
    `labels=y`, integer class ids `(batch,)` or one-hot / soft labels `(batch, classes)`
    (their argmax is the target class).

    Args:
        alpha: weight of TCKD (1.0 in the paper).
        beta: weight of NCKD (8.0 on CIFAR-100 in the official configs, 0.5 on ImageNet).
            Plain KD weighs NCKD by the teacher's non-target mass `1 - p_t` per example, so
            compare beta with its mean on your data: on CIFAR-10 (RESULTS.md), where the mean
            is 0.41, beta = 8 put students 4.5 points below scratch and beta = 0.5 matched KD.
        temperature: softening temperature `T > 0` (4.0 on CIFAR-100, 1.0 on ImageNet), in a
            non-trainable variable (schedulable).
        logit_standardization: z-score each example's logits over the classes first
            (`keras_kd.losses.functional.standardize_logits`; Sun et al., CVPR 2024, whose
            recipes use `T = 2` and multiply `alpha` and `beta` by 9).
        warmup_factor: initial value of the non-trainable `warmup_factor` variable in [0, 1]
            that multiplies the loss; `keras_kd.callbacks.DKDWarmup` assigns the paper's linear
            warm-up `min(epoch / 20, 1)` to it.
        name: log key of this loss (default `decoupled_kd`).

    Returns (when called):
        `(batch,)` values `warmup_factor * (alpha * TCKD + beta * NCKD)`.

    Raises:
        ValueError: for a negative / non-finite `alpha` or `beta`, both 0, `warmup_factor`
            outside [0, 1], a bad temperature; at call time without labels.
        TypeError: for non-numeric weights or a non-bool `logit_standardization`.

    Example:
        >>> dkd = DecoupledKD(alpha=1.0, beta=8.0, temperature=4.0)
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=dkd)
        >>> distiller.fit(ds, epochs=240, callbacks=[keras_kd.callbacks.DKDWarmup(dkd)])

    Reference:
        Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022
        (mdistiller/distillers/DKD.py). `alpha * T^2 KL(b^T || b^S) + beta * T^2 KL(p~^T || p~^S)`
        with `b = [p_target, 1 - p_target]` and `p~` the softmax over the non-target classes.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        logit_standardization: bool = False,
        warmup_factor: float = 1.0,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.alpha = validation.non_negative("alpha", alpha, hint="The paper uses 1.0.")
        self.beta = validation.non_negative("beta", beta, hint="The paper uses 8.0 (CIFAR-100).")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0: the loss would be 0.")
        self.logit_standardization = validation.one_of(
            "logit_standardization", logit_standardization, (False, True)
        )
        factor = validation.unit_interval("warmup_factor", warmup_factor)
        self.temperature = make_temperature(self, temperature)
        self.warmup_factor = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(factor),
            trainable=False,
            dtype="float32",
            name="warmup_factor",
        )

    def output_family(self) -> str:
        return "categorical"

    def needs_labels(self) -> bool:
        return True

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features, labels=None):
        if labels is None:
            raise ValueError(
                "DecoupledKD needs the labels: call it with labels=y (the Distiller does so "
                "for every loss whose needs_labels() is True)."
            )
        t, s = teacher_features[0], student_features[0]
        if self.logit_standardization:
            t, s = standardize_logits(t), standardize_logits(s)
        value = decoupled_kd(t, s, labels, self.alpha, self.beta, self.temperature)
        return self.warmup_factor * value

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            beta=self.beta,
            temperature=float(keras.ops.convert_to_numpy(self.temperature)),
            logit_standardization=self.logit_standardization,
            warmup_factor=float(keras.ops.convert_to_numpy(self.warmup_factor)),
        )
        return config
