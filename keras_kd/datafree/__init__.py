"""Distillation without the training data: the data-free family.

- `metadata`: activation metadata recorded at training time (`ActivationMetadata`, a small
  `.npz` file) and the transfer set reconstructed from it (`reconstruct`; Lopes et al. 2017).
- `dafl`: a generator trained against the frozen teacher together with the student, in one
  `keras.Model` driven by `fit` (`DAFL`, `dafl_generator`; Chen et al. 2019).
- `deep_inversion`: inputs matching the teacher's BatchNorm statistics (`deep_inversion`;
  Yin et al. 2020).
- `inversion`: the batched, seeded, resumable input-optimisation loop they share, the
  `SyntheticSet` it returns, and the Gaussian-noise baseline (`gaussian_noise_set`).

Every synthetic set trains the student with the existing `keras_kd.Distiller`.
"""

from keras_kd.datafree.dafl import (
    DAFL,
    activation_loss,
    dafl_generator,
    information_entropy_loss,
    one_hot_loss,
)
from keras_kd.datafree.deep_inversion import (
    batch_norm_statistics_distance,
    competition_loss,
    deep_inversion,
    image_l2,
    total_variation_l1,
    total_variation_l2,
)
from keras_kd.datafree.inversion import SyntheticSet, gaussian_noise_set, invert
from keras_kd.datafree.metadata import (
    KINDS,
    ActivationMetadata,
    all_layers_matching,
    reconstruct,
    spectral_matching,
    top_layer_matching,
)

__all__ = [
    "DAFL",
    "KINDS",
    "ActivationMetadata",
    "SyntheticSet",
    "activation_loss",
    "all_layers_matching",
    "batch_norm_statistics_distance",
    "competition_loss",
    "dafl_generator",
    "deep_inversion",
    "gaussian_noise_set",
    "image_l2",
    "information_entropy_loss",
    "invert",
    "one_hot_loss",
    "reconstruct",
    "spectral_matching",
    "top_layer_matching",
    "total_variation_l1",
    "total_variation_l2",
]
