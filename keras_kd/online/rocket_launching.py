"""`RocketLaunching`: a light net and a booster net sharing lower layers, trained together."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd import validation
from keras_kd.features import is_graph_model
from keras_kd.losses.functional import logit_mse, soft_target_kl
from keras_kd.objective import LabelLoss, StepResult, TrainingModel, weighted_mean
from keras_kd.online import _checks

_OWNER = "RocketLaunching"
HINTS = ("logit_mse", "soft_target")
_PAPER_KD_TEMPERATURE = 4.0  # the authors' code default (--temperature 4)


class _JointForward:
    """One functional model computing both nets' logits, the shared layers once.

    A plain object, so Keras does not track the joint model as a layer of its own (its
    variables are the light net's and the booster's).
    """

    def __init__(self, light: keras.Model, booster: keras.Model):
        self.model = None
        if not (is_graph_model(light) and is_graph_model(booster)):
            return
        if len(light.inputs) != len(booster.inputs) or any(
                a is not b for a, b in zip(light.inputs, booster.inputs)):
            return
        inputs = light.inputs[0] if len(light.inputs) == 1 else light.inputs
        self.model = keras.Model(inputs, [light.outputs[0], booster.outputs[0]],
                                 name="rocket_joint")


def _check_hint(hint: str, temperature) -> float | None:
    validation.one_of("hint", hint, HINTS,
                      hint="'logit_mse' is the paper's hint, 'soft_target' its KD comparison.")
    if hint == "logit_mse":
        if temperature is not None:
            raise ValueError(
                f"temperature={temperature!r} applies only to hint='soft_target'; the "
                "'logit_mse' hint compares raw logits. Leave temperature=None.")
        return None
    if temperature is None:
        return _PAPER_KD_TEMPERATURE
    return validation.positive("temperature", temperature,
                               hint="It softens the booster's targets (4 in the authors' code).")


def _check_nets(light, booster, share_layers: bool) -> None:
    _checks.check_model("light", light, _OWNER)
    _checks.check_model("booster", booster, _OWNER)
    if light is booster:
        raise ValueError("light and booster must be different models: the booster is the "
                         "larger net whose logits teach the light one.")
    _checks.check_logits("light", light, _OWNER)
    _checks.check_logits("booster", booster, _OWNER)
    _checks.check_same_shapes(
        [f"booster ('{booster.name}')", f"light ('{light.name}')"],
        [_checks.static_output_shape(booster), _checks.static_output_shape(light)],
        "output shape", "both nets must predict the same classes.")
    _checks.check_same_shapes(
        [f"booster ('{booster.name}')", f"light ('{light.name}')"],
        [_checks.static_input_shape(booster), _checks.static_input_shape(light)],
        "input shape", "both nets read the same batch.")
    shared = _checks.shared_variables(light, booster)
    if share_layers and not shared:
        raise ValueError(
            f"The booster ('{booster.name}') shares no layer with the light net "
            f"('{light.name}'). Rocket Launching trains them on shared lower layers: build "
            "both from the same keras.Input and call the same layer objects in both (e.g. "
            "h = shared_conv(inputs); light = keras.Model(inputs, light_head(h)); booster = "
            "keras.Model(inputs, booster_head(h))). For the paper's no-sharing ablation pass "
            "share_layers=False."
        )
    if not share_layers and shared:
        raise ValueError(
            f"share_layers=False, but the booster ('{booster.name}') and the light net "
            f"('{light.name}') share {len(shared)} variable(s) (e.g. {shared[0].path!r}). "
            "Give them separate layers, or pass share_layers=True."
        )
    booster_only = [v for v in booster.trainable_weights
                    if id(v) not in {id(s) for s in shared}]
    if not booster_only:
        raise ValueError(
            f"Every trainable variable of the booster ('{booster.name}') belongs to the light "
            f"net ('{light.name}'): the booster has no layers of its own to be larger with. "
            "Give the booster its own upper layers."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class RocketLaunching(TrainingModel):
    """Rocket Launching: a light net and a booster sharing lower layers, trained together.

    `L = H(y, p) + H(y, q) + lambda * hint(l, z)`, with `p = softmax(l)` the light net's and
    `q = softmax(z)` the booster's predictions. The hint is `||l - z||^2` (the paper's logit
    MSE, summed over classes) or `T^2 KL(softmax(z/T) || softmax(l/T))`. With the gradient
    block (default) the hint sees `stop_gradient(z)`, so:

    - the booster's own layers receive `dH(y, q)` only;
    - the light net's own layers receive `dH(y, p) + lambda * dhint/dl * dl`;
    - the shared layers receive every term: `dH(y, p) + dH(y, q)` through both nets, and the
      hint through the light net's path only, `lambda * dhint/dl * dl/dshared`.

    Without the block the hint also reaches the booster's own layers and the shared layers
    through the booster's path (`lambda * dhint/dz * dz`). Both nets run forward once per
    step; when they are built on the same `keras.Input` their shared layers are computed once
    for both. Terms are per example in float32, reduced with the sample weights.

    Logged: `loss`, `light_loss`, `booster_loss` (cross-entropies), `hint_loss` (before
    `lambda`), and the compiled metrics of each net (`light_accuracy`, `booster_accuracy`).
    Calling the model returns `{"light": l, "booster": z}`. The light net alone (its shared
    layers + its own) is `model.light`: save or convert it without any booster weight, e.g.
    `keras_kd.export.to_tflite(model.light, "light.tflite")`.

    Args:
        light: the `keras.Model` to deploy, outputting logits.
        booster: the larger `keras.Model`, sharing the light net's lower layers (Keras layer
            sharing: the same layer objects called in both) and adding its own.
        hint_weight: `lambda >= 0` (0.03 in the authors' code). A non-trainable variable.
        gradient_block: if True (the paper), the hint does not update the booster.
        hint: "logit_mse" (the paper) or "soft_target" (the paper's KD comparison).
        temperature: `T > 0` for `hint="soft_target"` (default 4, the authors' code);
            must stay `None` for "logit_mse".
        share_layers: declares whether the nets share layers (True, the paper's method;
            False for its no-sharing ablation with two separate nets). Checked.
        name: model name.

    Raises:
        TypeError, ValueError: models that are not `keras.Model`s or end in a softmax,
            different output or input shapes, a booster that shares nothing with the light
            net (or shares layers when `share_layers=False`), a booster with no layers of its
            own, an unknown hint, a temperature with the logit hint, `T <= 0`, `lambda < 0`,
            a non-bool `gradient_block`; at `compile`, a missing or non-categorical label loss.

    Example:
        >>> inputs = keras.Input((28, 28, 1))
        >>> h = shared_block(inputs)
        >>> light = keras.Model(inputs, light_head(h))
        >>> booster = keras.Model(inputs, booster_head(h))
        >>> rocket = keras_kd.online.RocketLaunching(light, booster)
        >>> rocket.compile("adam",
        ...                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...                metrics=["accuracy"])
        >>> rocket.fit(train_ds, epochs=10)
        >>> keras_kd.export.to_tflite(rocket.light, "light.tflite")

    Reference:
        Zhou, Fan, Cui, Bian, Zhu & Gai, "Rocket Launching: A Universal and Efficient
        Framework for Training Well-performing Light Net", AAAI 2018.
        `L = H(y, p) + H(y, q) + lambda ||l(x) - z(x)||^2` (official code:
        `CE(y, booster) + CE(y, light) + gamma * ((z.detach() - l)^2).sum() / batch`).
    """

    def __init__(self, light: keras.Model, booster: keras.Model, hint_weight: float = 0.03,
                 gradient_block: bool = True, hint: str = "logit_mse",
                 temperature: float | None = None, *, share_layers: bool = True,
                 name: str = "rocket_launching", **kwargs):
        super().__init__(name=name, **kwargs)
        for arg, value in (("gradient_block", gradient_block), ("share_layers", share_layers)):
            if not isinstance(value, bool):
                raise TypeError(f"{arg} must be True or False, got {value!r}.")
        _check_nets(light, booster, share_layers)
        temperature = _check_hint(hint, temperature)
        weight = validation.non_negative(
            "hint_weight", hint_weight, hint="It is lambda, the weight of the hint (0.03).")
        self.light = light
        self.booster = booster
        self.gradient_block = gradient_block
        self.hint = hint
        self.share_layers = share_layers
        self.hint_weight = keras.Variable(weight, trainable=False, dtype="float32",
                                          name="hint_weight")
        self.temperature = None
        if temperature is not None:
            self.temperature = keras.Variable(temperature, trainable=False, dtype="float32",
                                              name="temperature")
        self._joint = _JointForward(light, booster)
        self.prediction_names = ("light", "booster")
        self.track(["loss", "light_loss", "booster_loss", "hint_loss"])
        self.built = True

    def check_compile(self, label_loss: LabelLoss | None) -> None:
        _checks.check_label_loss(label_loss, _OWNER, (self.light, self.booster),
                                 ("light", "booster"))

    @property
    def shares_one_graph(self) -> bool:
        """Whether both nets are one graph (shared layers computed once per step)."""
        return self._joint.model is not None

    # ------------------------------------------------------------------ the step
    def _forward(self, x, training):
        if self._joint.model is not None:
            light, booster = self._joint.model(x, training=training)
        else:
            light = self.light(x, training=training)
            booster = self.booster(x, training=training)
        light, booster = ops.cast(light, "float32"), ops.cast(booster, "float32")
        _checks.check_traced_shapes([f"booster ('{self.booster.name}')",
                                     f"light ('{self.light.name}')"], [booster, light],
                                    "both nets must predict the same classes.")
        return light, booster

    def call(self, inputs, training=None):
        """`{"light": l, "booster": z}` (logits)."""
        light, booster = self._forward(inputs, training)
        return {"light": light, "booster": booster}

    def hint_values(self, booster_logits, light_logits):
        """Per-example hint between the (possibly stopped) booster logits and the light's."""
        if self.hint == "logit_mse":
            return 2.0 * logit_mse(booster_logits, light_logits)  # ||l - z||^2, unhalved
        return soft_target_kl(booster_logits, light_logits, self.temperature)

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        """Both cross-entropies and the hint, from one forward pass of each net."""
        light, booster = self._forward(x, training)
        light_loss = weighted_mean(_checks.label_values(self.label_loss, y, light, _OWNER),
                                   sample_weight)
        booster_loss = weighted_mean(
            _checks.label_values(self.label_loss, y, booster, _OWNER), sample_weight)
        target = ops.stop_gradient(booster) if self.gradient_block else booster
        hint = weighted_mean(self.hint_values(target, light), sample_weight)
        total = light_loss + booster_loss + self.hint_weight * hint
        logs = {"loss": total, "light_loss": light_loss, "booster_loss": booster_loss,
                "hint_loss": hint}
        return StepResult(total, logs, {"light": light, "booster": booster})

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """The nets' config; shared layers are saved once, as one graph.

        Raises:
            ValueError: when the nets share layers but are not built on the same
                `keras.Input` (their configs would give two copies of the shared layers).
        """
        config = {
            "name": self.name,
            "hint_weight": float(ops.convert_to_numpy(self.hint_weight)),
            "gradient_block": self.gradient_block,
            "hint": self.hint,
            "share_layers": self.share_layers,
        }
        if self.temperature is not None:
            config["temperature"] = float(ops.convert_to_numpy(self.temperature))
        if self._joint.model is not None:
            config["joint"] = keras.saving.serialize_keras_object(self._joint.model)
            config["light_name"] = self.light.name
            config["booster_name"] = self.booster.name
        elif self.share_layers:
            raise ValueError(
                f"RocketLaunching can save its config only when light ('{self.light.name}') "
                f"and booster ('{self.booster.name}') are built on the same keras.Input: "
                "otherwise their configs would hold two copies of the shared layers and the "
                "reloaded nets would no longer share them. Rebuild both from one keras.Input, "
                "or save the weights alone (save_weights / BackupAndRestore work as they are)."
            )
        else:
            config["light"] = keras.saving.serialize_keras_object(self.light)
            config["booster"] = keras.saving.serialize_keras_object(self.booster)
        return config

    @classmethod
    def from_config(cls, config: dict) -> RocketLaunching:
        config = dict(config)
        if "joint" in config:
            joint = keras.saving.deserialize_keras_object(config.pop("joint"))
            inputs = joint.inputs[0] if len(joint.inputs) == 1 else joint.inputs
            config["light"] = keras.Model(inputs, joint.outputs[0],
                                          name=config.pop("light_name"))
            config["booster"] = keras.Model(inputs, joint.outputs[1],
                                            name=config.pop("booster_name"))
        else:
            for key in ("light", "booster"):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
