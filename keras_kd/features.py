"""Feature extraction: one multi-output model per network for every tensor the losses ask for.

A loss names tensors with `keras_kd.losses.Tap`. `FeatureExtractor` resolves all taps of a model
into one functional model sharing the original layers, so each model runs forward once per step
whatever the number of feature losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd.losses.base import LOGITS, Tap

_SOFTMAX_NAMES = ("softmax",)


def _activation_name(layer: keras.layers.Layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def _is_graph_model(model: keras.Model) -> bool:
    """True for Functional and Sequential models whose graph we can tap."""
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


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
    """The linear part of a `Dense(activation="softmax")`, using that layer's own variables."""

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(dtype=dense.dtype_policy, **kwargs)
        self._dense = dense

    def call(self, inputs):
        x = ops.matmul(inputs, self._dense.kernel)
        if self._dense.use_bias:
            x = ops.add(x, self._dense.bias)
        return x


def final_softmax_kind(model: keras.Model) -> str | None:
    """How a graph model's last layer applies softmax: "layer", "dense", "other" or None."""
    if not _is_graph_model(model) or len(model.outputs) != 1:
        return None
    last = model.outputs[0]._keras_history.operation
    if isinstance(last, keras.layers.Softmax):
        return "layer"
    name = _activation_name(last)
    if name in _SOFTMAX_NAMES:
        if isinstance(last, keras.layers.Activation):
            return "layer"
        if isinstance(last, keras.layers.Dense):
            return "dense"
        return "other"
    return None


def _logits_tensor(model: keras.Model, role: str):
    output = model.outputs[0]
    kind = final_softmax_kind(model)
    if kind is None:
        return output
    last = output._keras_history.operation
    if kind == "layer":
        return last.input
    if kind == "dense":
        return _DenseLogits(last, name=f"{last.name}_logits")(last.input)
    raise ValueError(
        f"The {role} model '{model.name}' ends in layer '{last.name}' "
        f"({type(last).__name__}) with a fused softmax activation, whose pre-softmax logits "
        "cannot be recovered. Distilling probabilities as logits would be wrong: give that "
        "layer activation=None and add a keras.layers.Softmax() after it (or output logits)."
    )


def _tap_tensor(model: keras.Model, tap: Tap, role: str):
    if tap.layer is None:
        return _logits_tensor(model, role)
    try:
        layer = model.get_layer(tap.layer)
    except ValueError as error:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"The {role} model '{model.name}' has no layer named '{tap.layer}'. "
            f"Its layers are: {names}."
        ) from error
    if tap.pre_activation:
        name = _activation_name(layer)
        is_activation_layer = isinstance(
            layer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU)
        )
        if not is_activation_layer and name not in (None, "linear"):
            raise ValueError(
                f"Pre-activation tap on {role} layer '{layer.name}', which applies its "
                f"activation ('{name}') internally. Build that layer with activation=None and "
                "a separate keras.layers.ReLU()/Activation layer, and tap the activation layer."
            )
        return layer.input if is_activation_layer else layer.output
    return layer.output


class FeatureExtractor:
    """Calls a model once and returns its output plus every requested tap.

    Args:
        model: the teacher or student.
        taps: the distinct taps requested by the losses.
        role: "teacher" or "student" (used in error messages).

    Calling it returns `(model_output, tap_0, tap_1, ...)`.
    """

    def __init__(self, model: keras.Model, taps: Sequence[Tap], role: str):
        self.model = model
        self.taps = tuple(taps)
        self.role = role
        needs_graph = any(tap != LOGITS for tap in self.taps)
        self.is_graph = _is_graph_model(model)
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
                "keras_kd distils single-output classifiers."
            )
        tensors = [_tap_tensor(model, tap, role) for tap in self.taps]
        if all(t is model.outputs[0] for t in tensors):
            self._extractor = None  # plain model call is enough
        else:
            self._extractor = keras.Model(
                _input_structure(model),
                [model.outputs[0], *tensors],
                name=f"{model.name}_features",
            )

    def shapes(self) -> list[tuple]:
        """Static shapes of the taps (graph models only)."""
        if self._extractor is None:
            return [tuple(self.model.outputs[0].shape) if self.is_graph else None] * len(
                self.taps
            )
        return [tuple(t.shape) for t in self._extractor.outputs[1:]]

    def __call__(self, x, training: bool):
        if self._extractor is None:
            output = self.model(x, training=training)
            return (output,) + (output,) * len(self.taps)
        outputs = self._extractor(x, training=training)
        return tuple(outputs)
