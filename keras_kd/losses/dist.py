"""DIST: distillation from a stronger teacher by correlation matching (Huang et al. 2022)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.losses.base import DistillationLoss, make_temperature
from keras_kd.losses.functional import dist_kd


@keras.saving.register_keras_serializable(package="keras_kd")
class DISTDistillation(DistillationLoss):
    """Matches the *relations* of predictions (Pearson correlations), not their exact values.

    The inter-class term correlates each example's student and teacher class probabilities;
    the intra-class term correlates, for each class, the probabilities over the batch. The
    intra-class term is a batch-level quantity: each example receives its share of the
    correlation, so the batch mean of the per-example values equals the paper's loss exactly.
    Sample weights then weight the inter-class term exactly and the intra-class term only
    approximately (batch means and norms stay unweighted), and under a distribution strategy
    the intra-class term is computed over each replica's batch. Use batches of several
    examples: with one example the intra-class correlation is 0 and its term is the constant 1.

    Args:
        beta: weight of the inter-class relation (1.0).
        gamma: weight of the intra-class relation (1.0).
        temperature: softening temperature `T > 0` in a non-trainable variable (the authors'
            default is 1 on ImageNet; their CIFAR-100 config `dist_t4` uses 4).
        name: log key of this loss (default `dist_distillation`).

    Returns (when called):
        `(batch,)` values `T^2 * (beta * inter_i + gamma * intra_i)` (per position for dense
        outputs `(batch, ..., classes)`, positions being treated as rows as in the authors'
        segmentation code).

    Raises:
        ValueError: for negative / non-finite weights, both 0, or a bad temperature.
        TypeError: for non-numeric weights.

    Example:
        >>> dist = DISTDistillation(beta=1.0, gamma=1.0, temperature=1.0)
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=dist)

    Reference:
        Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
        NeurIPS 2022 (hunto/image_classification_sota lib/models/losses/dist_kd.py).
        `T^2 * (beta * (1 - mean_i pearson(Y^S_i,:, Y^T_i,:)) + gamma * (1 - mean_c
        pearson(Y^S_:,c, Y^T_:,c)))`, `Y = softmax(z / T)`.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.beta = validation.non_negative("beta", beta, hint="The paper uses 1.0.")
        self.gamma = validation.non_negative("gamma", gamma, hint="The paper uses 1.0.")
        if self.beta == 0 and self.gamma == 0:
            raise ValueError("beta and gamma cannot both be 0: the loss would be 0.")
        self.temperature = make_temperature(self, temperature)

    def output_family(self) -> str:
        return "categorical"

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features):
        return dist_kd(
            teacher_features[0], student_features[0], self.beta, self.gamma, self.temperature
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            beta=self.beta,
            gamma=self.gamma,
            temperature=float(keras.ops.convert_to_numpy(self.temperature)),
        )
        return config
