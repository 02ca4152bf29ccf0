"""Keras 3 -> tf_keras (Keras 2) translator, so tensorflow-model-optimization can work on a student.

tensorflow-model-optimization (QAT, pruning) only accepts tf_keras models. `to_tf_keras` rebuilds a
Keras 3 Sequential or Functional model layer by layer as a tf_keras model of the same structure:
each layer's `get_config()` is translated (Keras-3-only keys that are at their neutral value are
dropped; dtype policies, initializers, regularizers and constraints are rebuilt as tf_keras
objects), the graph is reconnected from the Keras 3 functional config, and the weights are copied.
Only the standard layers listed in `TRANSLATABLE_LAYERS` are accepted; anything else raises an
error naming the layer.

`tf_keras` is imported only when `to_tf_keras` is called.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

from keras_kd.distiller import Distiller

TRANSLATABLE_LAYERS = (
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Dense",
    "BatchNormalization",
    "ReLU",
    "Activation",
    "Softmax",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Dropout",
    "Add",
    "Concatenate",
    "Reshape",
)

# Keys every tf_keras layer accepts through `**kwargs`.
_BASE_LAYER_KEYS = ("name", "trainable", "dtype")
# Keras-3-only keys that may be dropped whatever their value, because another key makes them inert.
_INERT_WHEN = {"renorm_momentum": ("renorm", False)}
_SUBOBJECT_MODULES = {
    "keras.initializers": "initializers",
    "keras.regularizers": "regularizers",
    "keras.constraints": "constraints",
}


class UntranslatableLayerError(ValueError):
    """Raised when a Keras 3 layer (or one of its settings) has no tf_keras translation."""


def _import_tf_keras():
    import tf_keras  # deliberately lazy, see the module docstring

    return tf_keras


def _accepted_keys(cls) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return (names - {"self"}) | set(_BASE_LAYER_KEYS)


def _filter_config(cls, config: dict, where: str) -> dict:
    """Keeps the keys `cls` accepts; drops unknown keys only when they are None/False/inert."""
    accepted = _accepted_keys(cls)
    out = {}
    for key, value in config.items():
        if key in accepted:
            out[key] = value
            continue
        guard = _INERT_WHEN.get(key)
        if value is None or value is False or (guard and config.get(guard[0]) == guard[1]):
            continue
        raise UntranslatableLayerError(
            f"{where}: setting {key}={value!r} has no tf_keras equivalent in "
            f"{cls.__module__}.{cls.__name__}; remove it from the Keras 3 model to translate it."
        )
    return out


def _dtype_name(dtype) -> Any:
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    if hasattr(dtype, "name") and not isinstance(dtype, str):
        return dtype.name
    return dtype


def _translate_value(tf_keras, value, where: str):
    """Keras 3 serialized initializer / regularizer / constraint -> tf_keras object."""
    if isinstance(value, dict) and "class_name" in value:
        module = _SUBOBJECT_MODULES.get(value.get("module", ""))
        if module is None or value.get("registered_name") not in (None, value["class_name"]):
            raise UntranslatableLayerError(
                f"{where}: cannot translate {value.get('module')}.{value['class_name']} "
                "to tf_keras."
            )
        cls = getattr(getattr(tf_keras, module), value["class_name"], None)
        if cls is None:
            raise UntranslatableLayerError(
                f"{where}: tf_keras.{module} has no {value['class_name']}."
            )
        return cls(**_filter_config(cls, dict(value.get("config") or {}), where))
    return value


def _translate_layer(tf_keras, layer: keras.layers.Layer, config: dict):
    class_name = type(layer).__name__
    where = f"layer {layer.name!r} ({class_name})"
    if class_name not in TRANSLATABLE_LAYERS or type(layer) is not getattr(
        keras.layers, class_name, None
    ):
        raise UntranslatableLayerError(
            f"Cannot translate {where} to tf_keras: only the standard Keras layers "
            f"{', '.join(TRANSLATABLE_LAYERS)} are supported (subclasses and custom layers are "
            "not). Rebuild that part of the model from supported layers."
        )
    cls = getattr(tf_keras.layers, class_name)
    config = dict(config)
    config["dtype"] = _dtype_name(config.get("dtype", "float32"))
    if "activation" in config and not isinstance(config["activation"], str):
        raise UntranslatableLayerError(
            f"{where}: activation {config['activation']!r} is not a built-in activation name."
        )
    if "activation" in config:
        try:
            tf_keras.activations.get(config["activation"])
        except ValueError as err:
            raise UntranslatableLayerError(
                f"{where}: tf_keras has no activation {config['activation']!r}."
            ) from err
    config = {k: _translate_value(tf_keras, v, where) for k, v in config.items()}
    return cls(**_filter_config(cls, config, where))


def _copy_weights(source: keras.layers.Layer, target) -> None:
    weights = source.get_weights()
    if not weights:
        return
    target_shapes = [tuple(w.shape) for w in target.weights]
    source_shapes = [tuple(w.shape) for w in weights]
    if target_shapes != source_shapes:
        raise UntranslatableLayerError(
            f"layer {source.name!r}: Keras 3 weights have shapes {source_shapes} but the "
            f"tf_keras layer expects {target_shapes}."
        )
    target.set_weights(weights)


def _input_batch_shape(model: keras.Model) -> tuple:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"model {model.name!r} has no defined inputs; build it with keras.Input(...) (or call "
            "it once on data) before translating it."
        )
    return inputs


def _sequential(tf_keras, model: keras.Sequential):
    (k3_input,) = _input_batch_shape(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    translated = [_translate_layer(tf_keras, layer, layer.get_config()) for layer in layers]
    result = tf_keras.Sequential(
        [tf_keras.Input(batch_shape=tuple(k3_input.shape), dtype=k3_input.dtype)] + translated,
        name=model.name,
    )
    for source, target in zip(layers, translated):
        _copy_weights(source, target)
    return result


def _is_tensor_ref(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _history(value) -> tuple:
    name, node, index = value["config"]["keras_history"]
    return name, int(node), int(index)


def _map_tensors(structure, tensors: dict):
    if _is_tensor_ref(structure):
        return tensors[_history(structure)]
    if isinstance(structure, (list, tuple)):
        return [_map_tensors(s, tensors) for s in structure]
    if isinstance(structure, dict):
        return {k: _map_tensors(v, tensors) for k, v in structure.items()}
    return structure


def _refs(structure) -> list:
    if _is_tensor_ref(structure):
        return [_history(structure)]
    if isinstance(structure, (list, tuple)):
        return [r for s in structure for r in _refs(s)]
    if isinstance(structure, dict):
        return [r for s in structure.values() for r in _refs(s)]
    return []


def _as_triples(spec) -> list:
    """`input_layers` / `output_layers` of a functional config -> list of (name, node, index)."""
    if len(spec) == 3 and isinstance(spec[0], str):
        return [(spec[0], int(spec[1]), int(spec[2]))]
    return [t for s in spec for t in _as_triples(s)]


def _functional(tf_keras, model: keras.Model):
    _input_batch_shape(model)
    config = model.get_config()
    entries = config["layers"]
    layers = {entry["name"]: model.get_layer(entry["name"]) for entry in entries}
    tensors: dict = {}
    translated = {}
    for entry in entries:
        layer = layers[entry["name"]]
        if isinstance(layer, keras.layers.InputLayer):
            k3_input = layer.output
            tensors[(entry["name"], 0, 0)] = tf_keras.Input(
                batch_shape=tuple(k3_input.shape), dtype=k3_input.dtype, name=entry["name"]
            )
        else:
            translated[entry["name"]] = _translate_layer(tf_keras, layer, entry["config"])
    # Call nodes once their inputs exist (handles shared layers whatever the listing order).
    pending = [
        (entry["name"], i, node)
        for entry in entries
        for i, node in enumerate(entry.get("inbound_nodes") or [])
        if entry["name"] in translated
    ]
    while pending:
        remaining = []
        for name, node_index, node in pending:
            if not all(ref in tensors for ref in _refs(node)):
                remaining.append((name, node_index, node))
                continue
            args = _map_tensors(node.get("args", []), tensors)
            kwargs = {
                k: v for k, v in _map_tensors(node.get("kwargs", {}), tensors).items()
                if v is not None
            }
            outputs = translated[name](*args, **kwargs)
            flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for i, tensor in enumerate(flat):
                tensors[(name, node_index, i)] = tensor
        if len(remaining) == len(pending):
            raise UntranslatableLayerError(
                f"Could not reconnect the graph of {model.name!r}: layers "
                f"{sorted({p[0] for p in remaining})} wait for tensors that are never produced."
            )
        pending = remaining
    inputs = [tensors[t] for t in _as_triples(config["input_layers"])]
    outputs = [tensors[t] for t in _as_triples(config["output_layers"])]
    result = tf_keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )
    for name, target in translated.items():
        _copy_weights(layers[name], target)
    return result


def to_tf_keras(model: keras.Model):
    """Rebuilds a Keras 3 Sequential or Functional model as a tf_keras model with the same weights.

    The result computes the same function (checked to 1e-5 in the tests) and is what
    tensorflow-model-optimization's `quantize_model` / `prune_low_magnitude` accept.

    Args:
        model: a built Keras 3 `keras.Sequential` or Functional `keras.Model` made only of
            `TRANSLATABLE_LAYERS`, or a `keras_kd.Distiller` (its `.student` is translated).

    Returns:
        A `tf_keras.Sequential` (for a Sequential input) or `tf_keras.Model`.

    Raises:
        UntranslatableLayerError: (a `ValueError`) naming the first layer, or setting, that has no
            tf_keras equivalent, e.g. a custom layer, a nested model or `lora_rank` on a `Dense`.
        TypeError: if `model` is not a Keras 3 model.

    Example:
        >>> tfk_student = keras_kd.export.to_tf_keras(student)
        >>> tfk_student.predict(x)  # == student.predict(x) up to float32 round-off
    """
    model = model.student if isinstance(model, Distiller) else model
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras 3 keras.Model, got {type(model)!r}.")
    tf_keras = _import_tf_keras()
    if isinstance(model, keras.Sequential):
        return _sequential(tf_keras, model)
    if not _is_functional(model):
        raise UntranslatableLayerError(
            f"model {model.name!r} is a subclassed {type(model).__name__}; only Sequential and "
            "Functional models can be translated to tf_keras."
        )
    return _functional(tf_keras, model)


def _is_functional(model: keras.Model) -> bool:
    try:
        config = model.get_config()
    except NotImplementedError:
        return False
    return isinstance(config, dict) and "layers" in config and "output_layers" in config


__all__ = ["TRANSLATABLE_LAYERS", "UntranslatableLayerError", "to_tf_keras"]
