"""`NativeEnsemble` (ONE): branches over a shared trunk, their gated ensemble teaching them."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd import validation
from keras_kd.features import is_graph_model
from keras_kd.losses.functional import soft_target_kl
from keras_kd.objective import LabelLoss, StepResult, TrainingModel, weighted_mean
from keras_kd.online import _checks
from keras_kd.online.rampup import RampUp

_OWNER = "NativeEnsemble"
_BRANCHES_HINT = ("ONE needs m >= 2 branches over the trunk, e.g. [make_branch(f'branch{i}') "
                  "for i in range(3)], each mapping the trunk's feature to logits.")


@keras.saving.register_keras_serializable(package="keras_kd")
class GatedSum(keras.layers.Layer):
    """`sum_i g_i z_i`: the gate's `(batch, m)` weights applied to m logits tensors.

    Called on `[gate, z_1, ..., z_m]`, each `z_i` of shape `(batch, ..., classes)`; returns a
    float32 tensor of that shape.
    """

    def call(self, inputs):
        gate, *logits = inputs
        gate = ops.cast(gate, "float32")
        total = 0.0
        for i, z in enumerate(logits):
            z = ops.cast(z, "float32")
            g = gate[:, i]
            for _ in range(len(z.shape) - 1):
                g = ops.expand_dims(g, -1)
            total = total + g * z
        return total

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[1])

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs[1].shape, dtype="float32")


def default_gate(feature_shape: Sequence[int | None], num_branches: int,
                 name: str = "gate") -> keras.Model:
    """The paper's gate: global average pooling, FC -> BN -> ReLU -> softmax over m branches.

    Args:
        feature_shape: the trunk's output shape without the batch axis, channels last
            (`(H, W, C)`, `(steps, C)` or `(C,)`).
        num_branches: m.
        name: model name.

    Returns:
        A `keras.Model` mapping the trunk feature to `(batch, m)` weights summing to 1. Its
        batch normalisation is `synchronized`, so under `tf.distribute` it uses the global
        batch's statistics, as on one device.

    Reference:
        Lan, Zhu & Gong 2018, Sec. 3 (the official `control_v1 -> bn_v1 -> relu -> softmax`
        on the average-pooled trunk feature).
    """
    inputs = keras.Input(tuple(feature_shape), name=f"{name}_feature")
    pools = {3: keras.layers.GlobalAveragePooling2D, 2: keras.layers.GlobalAveragePooling1D}
    h = inputs
    if len(feature_shape) in pools:
        h = pools[len(feature_shape)](name=f"{name}_pool")(h)
    elif len(feature_shape) != 1:
        h = keras.layers.Flatten(name=f"{name}_flatten")(h)
    h = keras.layers.Dense(num_branches, name=f"{name}_fc")(h)
    h = keras.layers.BatchNormalization(synchronized=True, name=f"{name}_bn")(h)
    h = keras.layers.ReLU(name=f"{name}_relu")(h)
    outputs = keras.layers.Softmax(name=f"{name}_softmax")(h)
    return keras.Model(inputs, outputs, name=name)


def _check_trunk(trunk) -> keras.Model:
    trunk = _checks.check_model("trunk", trunk, _OWNER)
    if not is_graph_model(trunk):
        raise ValueError(
            f"trunk ('{trunk.name}') must be a functional or Sequential keras.Model built on "
            "keras.Input: its output shape sizes the gate, and branch_model(i) / "
            "ensemble_model() rebuild standalone models from its inputs."
        )
    _checks.check_single_output("trunk", trunk)
    return trunk


def _check_branches(branches, trunk: keras.Model) -> list[keras.Model]:
    branches = _checks.check_model_list("branches", branches, 2, _OWNER, _BRANCHES_HINT)
    feature = _checks.static_output_shape(trunk)
    for i, branch in enumerate(branches):
        _checks.check_logits(f"branches[{i}]", branch, _OWNER)
        wanted = _checks.static_input_shape(branch)
        if wanted is not None and feature is not None:
            _checks.check_same_shapes(
                [f"branches[{i}] ('{branch.name}')", f"the trunk ('{trunk.name}')"],
                [wanted, feature], "input shape / output shape",
                "each branch must take the trunk's feature as its input.")
    _checks.check_same_shapes(
        [f"branches[{i}] ('{b.name}')" for i, b in enumerate(branches)],
        [_checks.static_output_shape(b) for b in branches], "output shape",
        "every branch must predict the same classes.")
    return branches


def _check_gate(gate, trunk: keras.Model, count: int, name: str) -> keras.Model:
    if gate is None:
        return default_gate(_checks.static_output_shape(trunk), count, name=f"{name}_gate")
    gate = _checks.check_model("gate", gate, _OWNER)
    shape = _checks.static_output_shape(gate)
    if shape is not None and shape != (count,):
        raise ValueError(
            f"gate ('{gate.name}') outputs shape {shape}, but there are {count} branches: it "
            f"must map the trunk feature to ({count},) weights summing to 1 (e.g. ending in "
            "keras.layers.Softmax()). Pass gate=None for the paper's gate."
        )
    return gate


@keras.saving.register_keras_serializable(package="keras_kd")
class NativeEnsemble(TrainingModel):
    """ONE: m branches over a shared trunk; their gated ensemble teaches every branch.

    One forward pass per step: the trunk once, each branch once on the trunk's feature, the
    gate once. The ensemble's logits are `z_e = sum_i g_i z_i` with the gate's weights `g`
    (by default FC -> BN -> ReLU -> softmax on the average-pooled trunk feature). The loss is
    `sum_i CE(y, z_i) + CE(y, z_e) + w(t) T^2 sum_i KL(p~_e || p~_i)`, `p~ = softmax(z / T)`,
    with the ensemble target under `stop_gradient` (as in the authors' code: the KL terms
    train the branches and the trunk, the gate learns from `CE(y, z_e)`), every term per
    example in float32, reduced with the sample weights. `w(t) = exp(-5 (1 - t / R)^2)` is the
    ramp-up of the KL term over the first `R` epochs, held in the non-trainable variable
    `rampup_weight` and set at each epoch start by `keras_kd.online.RampUp`, which `fit` adds
    unless one is given. Outside `fit` (`train_on_batch`, `evaluate` before training) the
    weight is what was last assigned: 1.0 initially.

    Logged: `loss`, `branch{i}_loss` and `ensemble_loss` (the cross-entropies),
    `distillation_loss` (`T^2 sum_i KL`, before the ramp-up weight), `rampup_weight` (epoch
    logs), and the compiled metrics per prediction (`branch0_accuracy`, ...,
    `ensemble_accuracy`). Calling the model returns `{"branch0": z_0, ..., "ensemble": z_e}`.
    For deployment, `branch_model(i)` (trunk + branch i) and `ensemble_model()` are standalone
    `keras.Model`s sharing these layers.

    Args:
        trunk: a functional / Sequential `keras.Model` from the inputs to the shared feature.
        branches: m >= 2 `keras.Model`s, each from the trunk's feature to logits (the same
            output shape).
        gate: a `keras.Model` from the trunk's feature to `(m,)` weights summing to 1, or
            `None` for the paper's gate (`default_gate`).
        temperature: `T > 0` of the soft targets (3 in the paper). A non-trainable variable.
        rampup_epochs: `R`, epochs of the KL ramp-up (0: none); `None` takes the paper's share,
            80 of 300 epochs, of each `fit(epochs=...)`.
        name: model name.

    Raises:
        TypeError, ValueError: fewer than 2 branches, a trunk that is not a graph model, a
            branch that does not take the trunk's feature, branches with different outputs, a
            branch ending in a softmax, a gate with the wrong number of weights, `T <= 0`, a
            negative `rampup_epochs`; at `compile`, a missing or non-categorical label loss.

    Example:
        >>> one = keras_kd.online.NativeEnsemble(trunk, [head(i) for i in range(3)])
        >>> one.compile(keras.optimizers.SGD(0.1, momentum=0.9),
        ...             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...             metrics=["accuracy"])
        >>> one.fit(train_ds, epochs=30)
        >>> one.branch_model(0).save("branch0.keras")   # or one.ensemble_model()

    Reference:
        Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018.
        `L = sum_i CE(y, p_i) + CE(y, p_e) + w(t) T^2 sum_i KL(p~_e || p~_i)`,
        `z_e = sum_i g_i z_i`.
    """

    def __init__(self, trunk: keras.Model, branches: Sequence[keras.Model],
                 gate: keras.Model | None = None, temperature: float = 3.0,
                 rampup_epochs: int | None = None, *, name: str = "native_ensemble", **kwargs):
        super().__init__(name=name, **kwargs)
        trunk = _check_trunk(trunk)
        branches = _check_branches(branches, trunk)
        value = validation.positive(
            "temperature", temperature, hint="It softens the ensemble's targets (3 in the paper).")
        if rampup_epochs is not None:
            rampup_epochs = validation.non_negative_int(
                "rampup_epochs", rampup_epochs,
                hint="It is the number of epochs of the KL ramp-up (0: none, None: the paper's "
                     "80/300 of fit's epochs).")
        self.trunk = trunk
        self.branches = branches
        self.gate = _check_gate(gate, trunk, len(branches), name)
        self.combine = GatedSum(name="gated_sum")
        self.temperature = keras.Variable(value, trainable=False, dtype="float32",
                                          name="temperature")
        self.rampup_weight = keras.Variable(1.0, trainable=False, dtype="float32",
                                            name="rampup_weight")
        self.rampup_epochs = rampup_epochs
        self.branch_names = tuple(f"branch{i}" for i in range(len(branches)))
        self.prediction_names = self.branch_names + ("ensemble",)
        self.track(["loss", *[f"{b}_loss" for b in self.branch_names], "ensemble_loss",
                    "distillation_loss"])
        self.built = True

    def check_compile(self, label_loss: LabelLoss | None) -> None:
        _checks.check_label_loss(label_loss, _OWNER, self.branches, self.branch_names)

    # ------------------------------------------------------------------ the step
    def _forward(self, x, training):
        feature = self.trunk(x, training=training)
        logits = [ops.cast(b(feature, training=training), "float32") for b in self.branches]
        _checks.check_traced_shapes(
            [f"branches[{i}] ('{b.name}')" for i, b in enumerate(self.branches)], logits,
            "every branch must predict the same classes.")
        gate = self.gate(feature, training=training)
        ensemble = self.combine([gate, *logits])
        return logits, ensemble

    def call(self, inputs, training=None):
        """`{"branch0": z_0, ..., "ensemble": z_e}` (logits)."""
        logits, ensemble = self._forward(inputs, training)
        return {**dict(zip(self.branch_names, logits)), "ensemble": ensemble}

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        """Every branch's and the ensemble's cross-entropy, the ramped-up KL to the ensemble."""
        logits, ensemble = self._forward(x, training)
        target = ops.stop_gradient(ensemble)
        logs = {}
        for name, z in zip(self.branch_names, logits):
            logs[f"{name}_loss"] = weighted_mean(
                _checks.label_values(self.label_loss, y, z, _OWNER), sample_weight)
        logs["ensemble_loss"] = weighted_mean(
            _checks.label_values(self.label_loss, y, ensemble, _OWNER), sample_weight)
        kl = sum(soft_target_kl(target, z, self.temperature) for z in logits)
        logs["distillation_loss"] = weighted_mean(kl, sample_weight)
        label = sum(logs[f"{name}_loss"] for name in self.branch_names) + logs["ensemble_loss"]
        total = label + self.rampup_weight * logs["distillation_loss"]
        predictions = {**dict(zip(self.branch_names, logits)), "ensemble": ensemble}
        return StepResult(total, {"loss": total, **logs}, predictions)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            *args, **kwargs):
        """`keras.Model.fit`, with a `RampUp(self.rampup_epochs)` unless `callbacks` has one."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, RampUp) for c in callbacks):
            callbacks.append(RampUp(self.rampup_epochs))
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, *args, **kwargs)

    # ------------------------------------------------------------------ deployment
    def _fresh_inputs(self):
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
                  for t in self.trunk.inputs]
        return inputs[0] if len(inputs) == 1 else inputs

    def branch_model(self, index: int) -> keras.Model:
        """Trunk + branch `index` as a standalone `keras.Model` (same layers, same weights).

        Raises:
            TypeError, ValueError: an index that is not an integer in `[0, m)`.
        """
        index = validation.non_negative_int("index", index)
        if index >= len(self.branches):
            raise ValueError(f"index must be < {len(self.branches)} (the number of branches), "
                             f"got {index}.")
        inputs = self._fresh_inputs()
        outputs = self.branches[index](self.trunk(inputs))
        return keras.Model(inputs, outputs, name=f"{self.name}_branch{index}")

    def ensemble_model(self) -> keras.Model:
        """Trunk, all branches and the gate as one standalone `keras.Model` returning `z_e`."""
        inputs = self._fresh_inputs()
        feature = self.trunk(inputs)
        logits = [branch(feature) for branch in self.branches]
        outputs = GatedSum(name="gated_sum")([self.gate(feature), *logits])
        return keras.Model(inputs, outputs, name=f"{self.name}_ensemble")

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trunk": keras.saving.serialize_keras_object(self.trunk),
            "branches": [keras.saving.serialize_keras_object(b) for b in self.branches],
            "gate": keras.saving.serialize_keras_object(self.gate),
            "temperature": float(ops.convert_to_numpy(self.temperature)),
            "rampup_epochs": self.rampup_epochs,
        }

    @classmethod
    def from_config(cls, config: dict) -> NativeEnsemble:
        config = dict(config)
        for key in ("trunk", "gate"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        config["branches"] = [keras.saving.deserialize_keras_object(b)
                              for b in config["branches"]]
        return cls(**config)
