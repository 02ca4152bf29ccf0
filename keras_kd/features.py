"""Feature extraction: one multi-output model per network for every tensor the losses ask for.

A loss names the tensors it needs with `keras_kd.losses.Tap` (the *taps*). `FeatureExtractor`
resolves every tap of a model into one functional model sharing the original layers, so each
model runs forward once per step whatever the number of losses, and returns the tensors it
received keyed by their tap.

The `LOGITS` tap is the model's pre-activation output. A final softmax or sigmoid is undone
exactly where the graph allows it: a `Softmax` layer, `Activation("softmax"|"sigmoid")`,
`keras.ops.softmax`/`keras.ops.sigmoid` in a functional graph, or a `Dense` layer with such an
activation (any function that computes it, e.g. `tf.nn.softmax`), also when pass-through
layers (`Dropout`, `Identity`, `Activation("linear")`, ...) follow. A fused activation that
cannot be undone is refused with instructions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_kd.losses.base import LOGITS, Tap

# Layers that return their (single) input unchanged at inference.
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
_PROBE = np.array([[-1.5, 0.25, 2.0, 0.0]], "float32")


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def activation_kind(fn) -> str:
    """What an activation function computes: "linear", "softmax", "sigmoid" or "other".

    Decided by evaluating it on a probe vector, so aliases (`tf.nn.softmax`, `"softmax"`,
    `keras.ops.softmax`, a lambda) are recognised alike.
    """
    if fn is None:
        return "linear"
    try:
        out = np.asarray(ops.convert_to_numpy(fn(ops.convert_to_tensor(_PROBE))))
    except Exception:  # noqa: BLE001 - an activation we cannot probe is "other", not an error
        return "other"
    if out.shape != _PROBE.shape:
        return "other"
    for kind, ref in (
        ("linear", _PROBE),
        ("softmax", _np_softmax(_PROBE)),
        ("sigmoid", 1.0 / (1.0 + np.exp(-_PROBE))),
    ):
        if np.allclose(out, ref, atol=1e-6):
            return kind
    return "other"


def is_graph_model(model: keras.Model) -> bool:
    """True for Functional and Sequential models whose graph we can tap."""
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def static_output_shape(model: keras.Model) -> tuple | None:
    """The output shape without the batch axis, for single-output graph models."""
    if not is_graph_model(model):
        return None
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1:
        return None
    return tuple(outputs[0].shape[1:])


def static_input_shape(model: keras.Model) -> tuple | None:
    """The input shape without the batch axis, for single-input graph models."""
    if not is_graph_model(model):
        return None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def shared_variables(a: keras.Model, b: keras.Model) -> list:
    """The variables of `b` that are also variables of `a` (layer sharing)."""
    ids = {id(v) for v in a.weights}
    return [v for v in b.weights if id(v) in ids]


def _input_structure(model: keras.Model):
    """The inputs in the structure the model is called with (a bare tensor, a dict, ...).

    Rebuilding from the flat `model.inputs` list would make Keras warn on every call with a
    single tensor that the input structure does not match.
    """
    if not isinstance(model, keras.Sequential):
        try:
            return model.input  # Functional: the structure given to its constructor
        except AttributeError:
            pass
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


class _DenseLogits(keras.layers.Layer):
    """The linear part of a `Dense(activation=softmax|sigmoid)`, using that layer's variables."""

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(dtype=dense.dtype_policy, **kwargs)
        self._dense = dense

    def call(self, inputs):
        x = ops.matmul(inputs, self._dense.kernel)
        if self._dense.use_bias:
            x = ops.add(x, self._dense.bias)
        return x


def _producer(tensor):
    """The operation that produced a symbolic tensor, and its input tensors."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    operation, node_index = history[0], history[1]
    try:
        inputs = list(operation._inbound_nodes[node_index].input_tensors)
    except (AttributeError, IndexError):
        inputs = []
    return operation, inputs


@dataclasses.dataclass(frozen=True)
class OutputInfo:
    """How a model's output relates to its logits.

    Attributes:
        activation: the final activation found in the graph: "softmax", "sigmoid", or `None`
            (the output is the pre-activation tensor, or the graph could not be read).
        known: whether the graph was read (a Functional/Sequential model); `False` for
            subclassed models, whose outputs are checked on the first batch instead.
        units: size of the last axis of the output, when static.
    """

    activation: str | None
    known: bool
    units: int | None


def _logits_of(model: keras.Model, role: str):
    """`(logits tensor, OutputInfo)` of a single-output graph model."""
    output = model.outputs[0]
    units = output.shape[-1]
    tensor = output
    while True:
        operation, inputs = _producer(tensor)
        if operation is None:
            return tensor, OutputInfo(None, True, units)
        name = type(operation).__name__
        linear_activation = (
            isinstance(operation, keras.layers.Activation)
            and activation_kind(operation.activation) == "linear"
        )
        if (isinstance(operation, _PASS_THROUGH) or linear_activation) and len(inputs) == 1:
            tensor = inputs[0]
            continue
        if isinstance(operation, keras.layers.Softmax) or (
            not isinstance(operation, keras.layers.Layer) and name in ("Softmax", "LogSoftmax")
        ):
            if name == "LogSoftmax":  # log-probabilities are logits up to a shift: exact
                return tensor, OutputInfo(None, True, units)
            return inputs[0], OutputInfo("softmax", True, units)
        if not isinstance(operation, keras.layers.Layer) and name == "Sigmoid":
            return inputs[0], OutputInfo("sigmoid", True, units)
        if isinstance(operation, keras.layers.Activation):
            kind = activation_kind(operation.activation)
            if kind in ("softmax", "sigmoid"):
                return inputs[0], OutputInfo(kind, True, units)
            return tensor, OutputInfo(None, True, units)
        activation = getattr(operation, "activation", None)
        kind = activation_kind(activation) if activation is not None else "linear"
        if kind in ("softmax", "sigmoid"):
            fix = "keras.layers.Softmax()" if kind == "softmax" else "Activation('sigmoid')"
            if isinstance(operation, keras.layers.Dense) and len(inputs) == 1:
                logits = _DenseLogits(operation, name=f"{operation.name}_logits")(inputs[0])
                return logits, OutputInfo(kind, True, units)
            raise ValueError(
                f"The {role} model '{model.name}' ends in layer '{operation.name}' "
                f"({type(operation).__name__}) with a fused {kind} activation, whose "
                "pre-activation logits cannot be recovered. Distilling probabilities as "
                "logits would be wrong: give that layer activation=None and add "
                f"{fix} after it (or output logits)."
            )
        if isinstance(operation, keras.layers.Lambda):
            # Unknown function: the Distiller checks the first batch for probabilities.
            return tensor, OutputInfo(None, False, units)
        return tensor, OutputInfo(None, True, units)


def output_info(model: keras.Model, role: str = "model") -> OutputInfo:
    """The `OutputInfo` of a model (not read for subclassed models)."""
    if not is_graph_model(model) or len(model.outputs) != 1:
        units = None
        return OutputInfo(None, False, units)
    return _logits_of(model, role)[1]


def _tap_tensor(model: keras.Model, tap: Tap, role: str, logits):
    if tap.layer is None:
        return logits
    try:
        layer = model.get_layer(tap.layer)
    except ValueError as error:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"The {role} model '{model.name}' has no layer named '{tap.layer}'. "
            f"Its layers are: {names}."
        ) from error
    if tap.pre_activation:
        is_activation_layer = isinstance(
            layer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU)
        )
        kind = activation_kind(getattr(layer, "activation", None))
        if not is_activation_layer and kind != "linear":
            fn = getattr(layer, "activation", None)
            raise ValueError(
                f"Pre-activation tap on {role} layer '{layer.name}', which applies its "
                f"activation ('{getattr(fn, '__name__', fn)}') internally. Build that layer "
                "with activation=None and a separate keras.layers.ReLU()/Activation layer, and "
                "tap the activation layer."
            )
        return layer.input if is_activation_layer else layer.output
    return layer.output


class FeatureExtractor:
    """Calls a model once and returns its output plus every requested tap, keyed by tap.

    Args:
        model: the teacher or student.
        taps: the distinct taps requested by the losses.
        role: "teacher" or "student" (used in error messages).

    Calling it with `(x, training)` returns `(model_output, {tap: tensor})`.
    """

    def __init__(self, model: keras.Model, taps: Sequence[Tap], role: str):
        self.model = model
        self.taps = tuple(dict.fromkeys(taps))
        self.role = role
        needs_graph = any(tap != LOGITS for tap in self.taps)
        self.is_graph = is_graph_model(model)
        self.info = OutputInfo(None, False, None)
        if not self.is_graph:
            if needs_graph:
                raise ValueError(
                    f"The {role} model '{model.name}' is not a Functional/Sequential model "
                    "with known inputs, so its intermediate layers cannot be tapped. Build it "
                    "with keras.Input(...) or use losses on logits only."
                )
            self._extractor = None
            return
        if len(model.outputs) != 1:
            raise ValueError(
                f"The {role} model '{model.name}' has {len(model.outputs)} outputs; "
                "keras_kd distils single-output models: wrap the output you distil in a "
                "keras.Model with that one output."
            )
        logits, self.info = _logits_of(model, role)
        tensors = [_tap_tensor(model, tap, role, logits) for tap in self.taps]
        # Output 0 is the model's output; each distinct other tensor is one more output.
        self._slots, extra = [], []
        for tensor in tensors:
            if tensor is model.outputs[0]:
                self._slots.append(0)
                continue
            for i, known in enumerate(extra):
                if tensor is known:
                    self._slots.append(1 + i)
                    break
            else:
                extra.append(tensor)
                self._slots.append(len(extra))
        if not extra:
            self._extractor = None  # plain model call is enough
        else:
            self._extractor = keras.Model(
                _input_structure(model),
                [model.outputs[0], *extra],
                name=f"{model.name}_features",
            )

    @property
    def model_with_taps(self) -> keras.Model | None:
        """The multi-output `keras.Model` (output, then each distinct tapped tensor), or
        `None` when the plain model call gives every tap."""
        return self._extractor

    def shapes(self) -> dict:
        """Static shapes of the taps (graph models only), keyed by tap."""
        if self._extractor is None:
            shape = tuple(self.model.outputs[0].shape) if self.is_graph else None
            return {tap: shape for tap in self.taps}
        outputs = self._extractor.outputs
        return {tap: tuple(outputs[slot].shape) for tap, slot in zip(self.taps, self._slots)}

    def __call__(self, x, training: bool):
        if self._extractor is None:
            output = self.model(x, training=training)
            return output, {tap: output for tap in self.taps}
        outputs = self._extractor(x, training=training)
        return outputs[0], {tap: outputs[slot] for tap, slot in zip(self.taps, self._slots)}

    def logits(self, x, training: bool = False):
        """The `LOGITS` tap alone (the extractor must have been built with it)."""
        return self(x, training=training)[1][LOGITS]
