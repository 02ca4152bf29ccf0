"""`MutualLearning`: a cohort of peers, each trained on the labels and on the others' outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from keras_kd import validation
from keras_kd.losses.functional import soft_target_kl
from keras_kd.objective import LabelLoss, StepResult, TrainingModel, weighted_mean
from keras_kd.online import _checks

_OWNER = "MutualLearning"
_PEERS_HINT = ("Pass the cohort, e.g. MutualLearning([make_cnn('a'), make_cnn('b')]): any "
               "architectures with the same outputs.")


def _check_peers(peers) -> list[keras.Model]:
    peers = _checks.check_model_list("peers", peers, 2, _OWNER, _PEERS_HINT)
    for i, peer in enumerate(peers):
        _checks.check_logits(f"peers[{i}]", peer, _OWNER)
    _checks.check_same_shapes(
        [f"peers[{i}] ('{p.name}')" for i, p in enumerate(peers)],
        [_checks.static_output_shape(p) for p in peers],
        "output shape",
        "every peer must predict the same classes (and positions) for the others to teach it.",
    )
    for i, peer in enumerate(peers):
        for j in range(i):
            shared = _checks.shared_variables(peers[j], peer)
            if shared:
                raise ValueError(
                    f"peers[{j}] ('{peers[j].name}') and peers[{i}] ('{peer.name}') share "
                    f"{len(shared)} variable(s) (e.g. {shared[0].path!r}); mutual learning "
                    "trains and saves each peer alone. Give every peer its own layers; to "
                    "share lower layers use keras_kd.online.NativeEnsemble (branches over a "
                    "trunk) or keras_kd.online.RocketLaunching (a light net and a booster)."
                )
    return peers


@keras.saving.register_keras_serializable(package="keras_kd")
class MutualLearning(TrainingModel):
    """Deep mutual learning: K >= 2 peers, each taught by the labels and by the other peers.

    Peer `k` minimises `CE(y, p_k) + 1/(K-1) sum_{l != k} T^2 KL(p_l^T || p_k^T)`, with
    `p^T = softmax(z / T)`. Every peer runs forward once per step (`training=True`); the
    targets `p_l^T` are the same step's outputs under `stop_gradient`. The step minimises the
    sum of the K peers' losses with one optimizer, which gives each peer exactly the gradient
    of its own loss: peer `k`'s variables appear in the other peers' losses only through
    their stopped targets. (The paper's Algorithm 1 updates the peers one after the other,
    each seeing the others' latest outputs; here all peers update from the same forward
    passes, so each runs forward once per step.) Every term is computed per example in
    float32 and reduced with the sample weights like a Keras loss.

    Logged for `fit` and `evaluate`: `loss` (the sum), and for each peer `peer{k}_loss`,
    `peer{k}_label_loss` (the cross-entropy) and `peer{k}_distillation_loss` (the mean KL
    term); the compiled metrics of every peer (`peer0_accuracy`, ...) and of the cohort's
    ensemble (`ensemble_accuracy`: the mean of the peers' probabilities). Calling the model
    returns `{"peer0": logits, ..., "ensemble": log(mean_k p_k)}`; `model.peers[k].save(...)`
    saves one peer alone.

    Args:
        peers: K >= 2 `keras.Model`s (any architectures, the same output shape) that output
            logits and share no variables.
        temperature: `T > 0` of the soft targets (1 in the paper). A non-trainable variable,
            `model.temperature`, that callbacks may assign.
        name: model name.

    Raises:
        TypeError, ValueError: fewer than two peers, a peer that is not a `keras.Model`, that
            ends in a softmax, that shares variables with another, peers with different
            output shapes, `T <= 0`; at `compile`, a missing or non-categorical label loss.

    Example:
        >>> dml = keras_kd.online.MutualLearning([cnn("a"), cnn("b")])
        >>> dml.compile("adam",
        ...             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...             metrics=["accuracy"])   # logs peer0_accuracy, ..., ensemble_accuracy
        >>> dml.fit(train_ds, validation_data=test_ds, epochs=10)
        >>> dml.peers[0].save("peer0.keras")

    Reference:
        Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018.
        `L_k = CE(y, p_k) + 1/(K-1) sum_{l != k} T^2 KL(p_l^T || p_k^T)`.
    """

    def __init__(self, peers: Sequence[keras.Model], temperature: float = 1.0,
                 *, name: str = "mutual_learning", **kwargs):
        super().__init__(name=name, **kwargs)
        peers = _check_peers(peers)
        value = validation.positive(
            "temperature", temperature, hint="It softens the peers' targets (1 in the paper).")
        self.peers = peers
        self.temperature = keras.Variable(value, trainable=False, dtype="float32",
                                          name="temperature")
        self.peer_names = tuple(f"peer{k}" for k in range(len(peers)))
        self.prediction_names = self.peer_names + ("ensemble",)
        keys = ["loss"]
        for peer in self.peer_names:
            keys += [f"{peer}_loss", f"{peer}_label_loss", f"{peer}_distillation_loss"]
        self.track(keys)
        self.built = True

    def check_compile(self, label_loss: LabelLoss | None) -> None:
        _checks.check_label_loss(label_loss, _OWNER, self.peers, self.peer_names)

    # ------------------------------------------------------------------ the step
    def _forward(self, x, training):
        logits = [ops.cast(peer(x, training=training), "float32") for peer in self.peers]
        _checks.check_traced_shapes(
            [f"peers[{k}] ('{p.name}')" for k, p in enumerate(self.peers)], logits,
            "every peer must predict the same classes (and positions).")
        return logits

    def _predictions(self, logits) -> dict:
        predictions = dict(zip(self.peer_names, logits))
        log_probs = ops.stack([ops.log_softmax(z, axis=-1) for z in logits])
        predictions["ensemble"] = ops.logsumexp(log_probs, axis=0) - math.log(len(logits))
        return predictions

    def call(self, inputs, training=None):
        """`{"peer0": logits, ..., "ensemble": log of the peers' mean probabilities}`."""
        return self._predictions(self._forward(inputs, training))

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        """Each peer's label and mimicry terms from one forward pass of every peer."""
        logits = self._forward(x, training)
        targets = [ops.stop_gradient(z) for z in logits]
        others = len(logits) - 1
        logs, total = {}, 0.0
        for k, (peer, z) in enumerate(zip(self.peer_names, logits)):
            label = weighted_mean(_checks.label_values(self.label_loss, y, z, _OWNER),
                                  sample_weight)
            kl = sum(soft_target_kl(targets[j], z, self.temperature)
                     for j in range(len(logits)) if j != k) / others
            mimicry = weighted_mean(kl, sample_weight)
            logs[f"{peer}_loss"] = label + mimicry
            logs[f"{peer}_label_loss"] = label
            logs[f"{peer}_distillation_loss"] = mimicry
            total = total + label + mimicry
        logs = {"loss": total, **logs}
        return StepResult(total, logs, self._predictions(logits))

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "peers": [keras.saving.serialize_keras_object(p) for p in self.peers],
            "temperature": float(ops.convert_to_numpy(self.temperature)),
        }

    @classmethod
    def from_config(cls, config: dict) -> MutualLearning:
        config = dict(config)
        config["peers"] = [keras.saving.deserialize_keras_object(p) for p in config["peers"]]
        return cls(**config)
