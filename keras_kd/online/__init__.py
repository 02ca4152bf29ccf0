"""Models that teach each other: several networks trained at once, each a `keras.Model` for `fit`.

- `MutualLearning`: a cohort of peers, each learning from the labels and the others (DML).
- `NativeEnsemble`: branches over a shared trunk taught by their gated ensemble (ONE), with
  the `RampUp` callback of its KL term.
- `RocketLaunching`: a light net and a booster sharing lower layers, with the gradient block.
"""

from keras_kd.online.mutual_learning import MutualLearning
from keras_kd.online.native_ensemble import GatedSum, NativeEnsemble, default_gate
from keras_kd.online.rampup import RampUp, sigmoid_rampup
from keras_kd.online.rocket_launching import RocketLaunching

__all__ = [
    "GatedSum",
    "MutualLearning",
    "NativeEnsemble",
    "RampUp",
    "RocketLaunching",
    "default_gate",
    "sigmoid_rampup",
]
