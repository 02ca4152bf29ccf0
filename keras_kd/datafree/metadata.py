"""Data-free distillation from activation metadata (Lopes, Fenu & Starner 2017).

At training time the teacher's owner records compact statistics of the teacher's activations
over its training data (`ActivationMetadata.record`) and ships them in a `.npz` file next to
the model. Later, with only the teacher and that file, `reconstruct` optimises inputs through
the frozen teacher until their activations match values sampled from the statistics; the
result is a transfer set for the `Distiller` (soft targets at the recorded temperature).

What the paper specifies (arXiv 1710.07535v2; read through a public transcription of its
equations and tables, the authors' code github.com/iRapha/replayed_distillation and its figure
diagrams), and what is implemented here. Every input `x` starts from Gaussian noise (MNIST:
`N(0.15, 0.1)` per pixel) and is optimised with Adam through the frozen teacher,
`x* = argmin_x l(phi(x), phi_0)`, `phi_0` sampled from the metadata of a class:

- `"top_layer"`. Paper: per class, `mu = mean(L / T)` and `Ch = chol(cov(L / T))` of the
  pre-softmax values `L` (T = 8); sample `mu + Ch z`, apply ReLU to the sample and to the
  teacher's top layer, minimise the MSE. Implemented exactly:
  `mean_k (relu(c_k) - relu(z_k(x) / T))^2`, `c ~ N(mu_c, Sigma_c)` by Cholesky.
- `"all_layers"`. Paper: statistics of every layer; objective "the sum of the per-layer MSE,
  normalised by the number of hidden units in the layer" (the authors' code: `(1 / n_l) *
  mean_l(...)`, implemented as such): `sum_l (1/n_l) mean_l((relu(c_l) - relu(h_l(x)))^2)`.
  Differences: the paper keeps a covariance for every layer (its CelebA remark: it scales
  badly); here the top layer has its full covariance and hidden layers a per-unit standard
  deviation unless `record(..., hidden_covariance=True)` (the paper's, 5.8 MB per class for a
  1200-unit layer). The paper's "all layers + fixed dropout filters" variant (dropout masks
  frozen per reconstructed batch for a dropout-trained teacher; 76.23 % vs 76.38 % without)
  is not implemented.
- `"spectral_all_layers"` / `"spectral_layer_pairs"`. Paper: a fully connected network is a
  graph `G = (V, A)`, one vertex per unit, `A` the weighted connections; its activations are a
  graph signal `s`. With the graph Fourier transform of Sandryhaila & Moura, `A = V J V^-1`,
  `F = V^-1`, `s_hat = F s`; keep only a fraction `C` of the coefficients, those of largest
  magnitude (10 % suffice, it reports), reconstruct `s_bar = F^-1 (s_hat_0, ..., s_hat_{C-1}, 0,
  ..., 0)^T`, and minimise the Euclidean loss `l = sum_i (s_bar - s_i)^2` between `s_bar` and
  the network's activations `s_i` on the current input. Layer pairs: the same on the smaller
  graph of each pair of consecutive layers (cheaper eigendecompositions). Implemented: the
  graph's vertices are the units of the recorded Dense layers and of the logits (`h / T`), `A`
  holds the signed kernels `W` between consecutive layers (`A = [[0, W], [W^T, 0]]`, symmetric,
  so `V` is orthogonal and `F = V^T`); per class `c`, the mean `mu_c` and standard deviation
  `sigma_c` of `s_hat = V^T s` over the class's training examples; the class keeps the
  `ceil(fraction * nodes)` coefficients where `|mu_c|` is largest and zero elsewhere. The file
  stores `V` restricted to the union `K` of the kept coefficients over classes. Objective:
  `sum_p sum_n ((V_K s_hat_p)_n - h_{p,n}(x))^2` with `s_hat ~ N(mu_c, sigma_c^2)` on the
  class's kept coefficients (zero elsewhere), i.e. the paper's zero-padded inverse transform
  and Euclidean loss. Choices the paper does not fix: the coefficients are sampled from
  per-class statistics (its figures show "sampled eigen" values; its text compresses the
  activations), the input pixels are not vertices (the authors' code also leaves them out;
  the figures draw an arrow from the inputs), and the graph needs a chain of Dense layers.

The authors' code differs from the paper in places (noted, not followed): its sampler adds
`z @ Sigma` (the covariance itself, not a Cholesky factor), and its spectral objectives are
unfinished (they match all layers' statistics). As in their code, the recorded hidden values
are the outputs of the named layers: the pre-activations when a Dense/Conv layer is followed
by a separate activation layer (the default layers then match the paper's `relu(h)`), the
post-activations when the activation is built in.

Published MNIST results (Lopes et al. 2017, its MNIST fully-connected and LeNet-5 tables;
teachers trained 10 epochs with Adam 1e-3, every distillation 30 epochs, T = 8): dropout-trained
Hinton-784-1200-1200-10 teacher 96.95 %, 784-800-800-10 student 95.70 % (trained on MNIST),
KD 95.74 %; data-free: top layer 68.75, all layers 76.38, all layers + dropout filters 76.23,
all-layers spectral 89.41, layer-pairs spectral 91.24. LeNet-5 98.91 %, LeNet-5-half 98.65 %,
KD 98.91 %; top layer 77.30, all layers 85.61, all-layers spectral 90.28, layer-pairs spectral
92.47.

File format (`ActivationMetadata.save`, NumPy `.npz`, float32 arrays):

- `meta`: a JSON string with `format` (`"keras_kd.activation_metadata/2"`), `kind`,
  `temperature`, `num_classes`, `counts` (training examples per class), `layers` (recorded
  layer names and shapes, the top layer last as `"logits"`), `model` (the teacher's name and
  the SHA-256 of its weights, checked before reconstruction) and `blocks` (one entry per
  stored group of statistics: its name, size and the layers it covers);
- per block `i`: `b{i}_mean` `(C, n)`, and `b{i}_cov` `(C, n, n)` (full covariance) or
  `b{i}_std` `(C, n)`; for spectral blocks `b{i}_basis` `(nodes, n)`, the kept eigenvectors
  `V_K` of the adjacency matrix (a class's mean and std are 0 on the coefficients it does not
  keep). Format `/1` files (older keras_kd) load for the top-layer and all-layer kinds; their
  spectral blocks used another basis and are refused.

File sizes measured with format `/1` for the 784-1200-1200-10 MNIST teacher (C = 10, fraction
0.1): top layer 6,784 bytes, all layers 196,920 (the top layer now adds its 10x10
covariances), against 47 MB for the 60,000 training images. Spectral files now hold `V_K`,
`nodes x |K|` floats with `|K|` between `ceil(0.1 * nodes)` and `nodes` (2410 nodes for all
layers: 0.9 to 23 MB).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import validation
from keras_kd.datafree.inversion import BatchStart, SyntheticSet, balanced_classes, invert
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, Tap

KINDS = ("top_layer", "all_layers", "spectral_all_layers", "spectral_layer_pairs")
FORMAT = "keras_kd.activation_metadata/2"
_OLD_FORMAT = "keras_kd.activation_metadata/1"
_MAX_COVARIANCE_UNITS = 4096
TOP = "logits"
_SPECTRAL = ("spectral_all_layers", "spectral_layer_pairs")
_LINEAR_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.Conv3D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
# Element-wise layers between two Dense layers of a spectral chain.
_ELEMENTWISE = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.ELU, keras.layers.Dropout, keras.layers.GaussianNoise,
                keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.Identity)


# ---------------------------------------------------------------------- objectives
def top_layer_matching(sampled, activations):
    """Per-example top-layer objective of Lopes et al.: `mean_k (relu(c_k) - relu(h_k))^2`.

    Args:
        sampled: `(batch, n)` values sampled from the recorded statistics.
        activations: `(batch, n)` the teacher's top-layer values `z(x) / T` on the inputs.

    Returns:
        `(batch,)` float32.

    Example:
        >>> top_layer_matching(sampled_logits_over_t, teacher_logits / 8.0)

    Reference:
        Lopes, Fenu & Starner, "Data-Free Knowledge Distillation for Deep Neural Networks",
        2017 (ReLU on the sample and on the top layer, MSE; code:
        `_optimization_objectives.top_layer`). `mean((relu(C) - relu(L(x)))^2)`.
    """
    s = ops.relu(ops.cast(sampled, "float32"))
    h = ops.relu(ops.cast(activations, "float32"))
    return ops.mean(ops.square(s - h), axis=-1)


def all_layers_matching(sampled, activations):
    """Per-example all-layers objective: `sum_l (1/n_l) mean_l (relu(c_l) - relu(h_l))^2`.

    Args:
        sampled: list of `(batch, n_l)` sampled values, one per recorded layer.
        activations: list of `(batch, n_l)` (or `(batch, ...)`, flattened) teacher values.

    Returns:
        `(batch,)` float32.

    Reference:
        Lopes et al. 2017: "the sum of the per-layer MSE, normalised by the number of
        hidden units in the layer"; the authors' code (`_optimization_objectives.all_layers`)
        weighs each layer's mean by `1 / size`, as here.
        `sum_l (1/n_l) mean((relu(C_l) - relu(L_l(x)))^2)`.
    """
    total = 0.0
    for s, h in zip(sampled, activations):
        s = ops.reshape(ops.cast(s, "float32"), (ops.shape(s)[0], -1))
        h = ops.reshape(ops.cast(h, "float32"), (ops.shape(h)[0], -1))
        n = s.shape[-1]
        total = total + top_layer_matching(s, h) / float(n)
    return total


def spectral_matching(sampled, signals, bases):
    """Per-example spectral objective: `sum_p sum_n ((c_p V_p^T)_n - h_{p,n})^2`.

    The sampled graph-Fourier coefficients `c_p` are mapped back to the graph's vertices by the
    inverse transform restricted to the kept eigenvectors (`s_bar = V_p c_p`, the paper's
    zero-padded `F^-1`), and compared with the activations `h_p` by the squared Euclidean
    distance. As `V_p` has orthonormal columns this equals `|c_p - V_p^T h_p|^2 +
    |h_p - V_p V_p^T h_p|^2`: the kept coefficients are matched and the others pushed to 0.

    Args:
        sampled: list of `(batch, k_p)` sampled graph-Fourier coefficients.
        signals: list of `(batch, nodes_p)` activations of the graph's vertices on the inputs.
        bases: list of `(nodes_p, k_p)` kept eigenvectors `V_p` of the graphs' adjacency
            matrices.

    Returns:
        `(batch,)` float32.

    Example:
        >>> spectral_matching([c], [h], [basis])   # one graph (spectral all layers)

    Reference:
        Lopes et al. 2017: `s_bar = F^-1 (s_hat_0, ..., s_hat_{C-1}, 0, ..., 0)^T`,
        `l = sum_i (s_bar - s_i)^2`, with the graph Fourier transform `F = V^-1` of
        `A = V J V^-1` (Sandryhaila & Moura 2013).
    """
    total = 0.0
    for s, h, u in zip(sampled, signals, bases):
        reconstructed = ops.matmul(ops.cast(s, "float32"), ops.transpose(ops.cast(u, "float32")))
        total = total + ops.sum(ops.square(reconstructed - ops.cast(h, "float32")), axis=-1)
    return total


def chain_adjacency(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """The weighted adjacency matrix of a chain of Dense layers, as an undirected graph.

    Vertices are the units of every layer of the chain (the inputs of the first kernel, then
    the outputs of each); unit `i` of one layer and unit `j` of the next are joined with the
    weight `W[i, j]` of the kernel between them (`A = [[0, W], [W^T, 0]]` for one pair).

    Args:
        kernels: the `(n_l, n_{l+1})` kernels joining consecutive layers.

    Returns:
        `(nodes, nodes)` float64 symmetric matrix.
    """
    sizes = [kernels[0].shape[0]] + [k.shape[1] for k in kernels]
    offsets = np.cumsum([0] + sizes)
    nodes = int(offsets[-1])
    adjacency = np.zeros((nodes, nodes))
    for i, kernel in enumerate(kernels):
        a, b = offsets[i], offsets[i + 1]
        block = np.asarray(kernel, np.float64)
        adjacency[a:b, b:b + block.shape[1]] = block
        adjacency[b:b + block.shape[1], a:b] = block.T
    return adjacency


def graph_fourier_basis(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """The graph Fourier basis of a chain of Dense layers: the eigenvectors of its adjacency.

    `A = V diag(lambda) V^T` (`chain_adjacency`; symmetric, so `V` is orthogonal and the graph
    Fourier transform is `F = V^-1 = V^T`, Sandryhaila & Moura 2013, as in Lopes et al. 2017).

    Args:
        kernels: the `(n_l, n_{l+1})` kernels joining consecutive layers.

    Returns:
        `(nodes, nodes)` float64 eigenvectors (columns), by decreasing eigenvalue.
    """
    _, vectors = np.linalg.eigh(chain_adjacency(kernels))
    return vectors[:, ::-1]


def largest_coefficients(mean: np.ndarray, count: int) -> np.ndarray:
    """`(classes, nodes)` bool: per class, the `count` coefficients of largest `|mean|`.

    Ties are broken towards the lower index (a stable sort), so the choice is deterministic.
    """
    mean = np.asarray(mean)
    order = np.argsort(-np.abs(mean), axis=1, kind="stable")[:, :count]
    keep = np.zeros(mean.shape, bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep


# ---------------------------------------------------------------------- the teacher's graph
def weights_sha256(model: keras.Model) -> str:
    """SHA-256 of a model's weights (shapes and float32 values, in `model.weights` order)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(ops.convert_to_numpy(weight), dtype=np.float32)
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _history(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, None
    operation, node_index = history[0], history[1]
    try:
        inputs = list(operation._inbound_nodes[node_index].input_tensors)
    except (AttributeError, IndexError):
        inputs = []
    return operation, inputs


def _logits_layer(teacher: keras.Model):
    """The Dense/Conv layer that computes the teacher's logits (a final softmax skipped)."""
    tensor = teacher.outputs[0]
    while True:
        operation, inputs = _history(tensor)
        if operation is None:
            return None
        if isinstance(operation, _LINEAR_LAYERS):
            return operation
        if len(inputs) != 1:
            return None
        tensor = inputs[0]


def _check_teacher(teacher) -> None:
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    try:
        ok = bool(teacher.inputs) and len(teacher.inputs) == 1 and len(teacher.outputs) == 1
    except (AttributeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"The teacher '{teacher.name}' must be a Functional or Sequential model with one "
            "input and one output, so its layers can be recorded. Build it with keras.Input."
        )


def _default_layers(teacher: keras.Model) -> list[str]:
    top = _logits_layer(teacher)
    return [layer.name for layer in teacher.layers
            if isinstance(layer, _LINEAR_LAYERS) and layer is not top]


def _chain_kernels(teacher: keras.Model, layers: Sequence[str]) -> list[np.ndarray]:
    """The kernels joining `layers` and then the logits layer, all Dense, as a chain."""
    top = _logits_layer(teacher)
    chain = [teacher.get_layer(name) for name in layers] + [top]
    kernels = []
    for a, b in zip(chain[:-1], chain[1:]):
        problem = None
        if not isinstance(b, keras.layers.Dense) or not isinstance(a, keras.layers.Dense):
            problem = "both must be Dense layers"
        else:
            tensor = b.input
            while True:
                operation, inputs = _history(tensor)
                if operation is a:
                    break
                if not isinstance(operation, _ELEMENTWISE) or len(inputs) != 1:
                    problem = f"'{b.name}' does not read '{a.name}' through element-wise layers"
                    break
                tensor = inputs[0]
        if problem is not None:
            raise ValueError(
                f"Spectral metadata needs the recorded layers to form a chain of Dense layers "
                f"ending in the logits layer; between '{a.name}' and "
                f"'{b.name if b is not None else '?'}' {problem}. Pass layers=[...] naming "
                "such a chain, or use kind='all_layers' (any layers)."
            )
        kernels.append(ops.convert_to_numpy(b.kernel))
    if not layers:
        raise ValueError("Spectral metadata needs at least one hidden Dense layer in layers.")
    return kernels


# ---------------------------------------------------------------------- metadata
class ActivationMetadata:
    """Per-class activation statistics of a trained teacher, saved in a small `.npz` file.

    Build it with `ActivationMetadata.record(teacher, x, y, kind=...)` (needs the training
    data once), `save(path)` it next to the model, and later `load(path)` it and call
    `keras_kd.datafree.reconstruct(teacher, metadata, ...)`. See the module docstring for
    the kinds and the file format.

    Attributes:
        kind: one of `KINDS`.
        temperature: `T` dividing the logits before they are recorded.
        num_classes: `C`.
        counts: `(C,)` examples per class.
        layers: `[(name, shape)]` of the recorded tensors (the top layer last, `"logits"`).
        blocks: list of dicts with `name`, `sources` (indices into `layers`), `mean`, and
            `std` or `cov`, and `basis` (the kept eigenvectors `V_K`) for spectral blocks.
        model: `{"name": ..., "sha256": ...}` of the teacher.

    Example:
        >>> meta = ActivationMetadata.record(teacher, x_train, y_train, kind="all_layers")
        >>> meta.save("teacher.meta.npz")   # 197 KB for the 1200-1200 MNIST teacher
        >>> meta = ActivationMetadata.load("teacher.meta.npz")
        >>> transfer = keras_kd.datafree.reconstruct(teacher, meta, num_samples=10000)

    Reference:
        Lopes, Fenu & Starner, "Data-Free Knowledge Distillation for Deep Neural Networks",
        2017. Per class `c`: `mu_c`, `Sigma_c` (or `sigma_c`) of `h_l(x)` for `x` of class `c`;
        for spectral kinds, of the graph-Fourier coefficients `V^T s(x)`.
    """

    def __init__(self, kind, temperature, num_classes, counts, layers, blocks, model):
        self.kind = validation.one_of("kind", kind, KINDS)
        self.temperature = float(temperature)
        self.num_classes = int(num_classes)
        self.counts = np.asarray(counts, np.int64)
        self.layers = [(str(name), tuple(int(d) for d in shape)) for name, shape in layers]
        self.blocks = blocks
        self.model = dict(model)

    # -------------------------------------------------------------- record
    @classmethod
    def record(
        cls,
        teacher: keras.Model,
        x,
        y=None,
        *,
        kind: str = "all_layers",
        layers: Sequence[str] | None = None,
        temperature: float = 8.0,
        num_classes: int | None = None,
        spectral_fraction: float = 0.1,
        hidden_covariance: bool = False,
        batch_size: int = 256,
    ) -> ActivationMetadata:
        """Records the statistics of `teacher` over its training data.

        Args:
            teacher: the trained teacher (Functional/Sequential, one input and output).
            x: training inputs (array), or a finite `tf.data.Dataset` of `(x, y)` batches.
            y: integer class ids when `x` is an array.
            kind: one of `KINDS`.
            layers: names of the hidden layers to record (the logits are always recorded,
                last). Default: every Dense/Conv layer except the logits layer. Spectral
                kinds need a chain of Dense layers ending in the logits layer.
            temperature: `T > 0`; the top layer recorded is `logits / T` (8 in the authors'
                code; distil at the same temperature).
            num_classes: `C` (default: the logits' size).
            spectral_fraction: share `C` of graph-Fourier coefficients each class keeps (those
                of largest mean magnitude), in (0, 1]; 0.1 in the paper.
            hidden_covariance: for `"all_layers"`, keep the full per-class covariance of every
                hidden layer, as the paper does (`n^2` floats per class and layer: 5.8 MB for
                1200 units; refused above 4096 units), instead of a per-unit standard
                deviation. The top layer always keeps its full covariance.
            batch_size: batch size of the teacher pass over array inputs.

        Returns:
            An `ActivationMetadata`.

        Raises:
            TypeError, ValueError: for a bad argument, unknown layer names, labels outside
                `[0, C)`, a class with fewer than 2 examples, or a spectral kind on layers
                that are not a Dense chain.
        """
        _check_teacher(teacher)
        validation.one_of("kind", kind, KINDS, hint="See keras_kd.datafree.metadata.KINDS.")
        temperature = validation.positive("temperature", temperature,
                                          hint="The authors' code records logits / 8.")
        fraction = validation.unit_interval("spectral_fraction", spectral_fraction)
        if fraction == 0.0:
            raise ValueError("spectral_fraction must be > 0, got 0.0: keep at least one "
                             "graph frequency, e.g. 0.1.")
        hidden_covariance = validation.one_of("hidden_covariance", hidden_covariance,
                                              (False, True))
        batch_size = validation.positive_int("batch_size", batch_size)
        if kind == "top_layer":
            names = []
        elif layers is None:
            names = _default_layers(teacher)
        else:
            if isinstance(layers, str) or not isinstance(layers, Sequence):
                raise TypeError(f"layers must be a list of layer names, got {layers!r}.")
            names = [str(n) for n in layers]
            known = [layer.name for layer in teacher.layers]
            missing = [n for n in names if n not in known]
            if missing:
                raise ValueError(f"layers names {missing}, which the teacher '{teacher.name}' "
                                 f"does not have. Its layers are: {known}.")
        kernels = _chain_kernels(teacher, names) if kind in _SPECTRAL else None
        extractor = _Extractor(teacher, names, temperature)
        classes = num_classes if num_classes is not None else extractor.shapes[-1][-1]
        classes = validation.positive_int("num_classes", classes)
        dataset = _labelled_dataset(x, y, batch_size)
        blocks = _block_layout(kind, extractor, kernels, hidden_covariance)
        project = _block_function(blocks)
        full = [bool(b.pop("full", False)) for b in blocks]
        sums = [np.zeros((classes, b["size"])) for b in blocks]
        squares = [np.zeros((classes, b["size"])) if not f else
                   np.zeros((classes, b["size"], b["size"])) for b, f in zip(blocks, full)]
        counts = np.zeros(classes, np.int64)

        @tf.function(reduce_retracing=True)
        def forward(batch):
            return project(extractor(batch))

        seen = 0
        for batch_x, batch_y in dataset:
            labels = np.asarray(batch_y).reshape(-1).astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"y must hold class ids in [0, {classes}), got values in "
                                 f"[{labels.min()}, {labels.max()}].")
            values = [v.numpy().astype(np.float64) for v in forward(batch_x)]
            onehot = np.eye(classes)[labels]
            counts += onehot.sum(axis=0).astype(np.int64)
            for i, v in enumerate(values):
                sums[i] += onehot.T @ v
                if full[i]:
                    for c in np.unique(labels):
                        rows = v[labels == c]
                        squares[i][c] += rows.T @ rows
                else:
                    squares[i] += onehot.T @ (v * v)
            seen += labels.size
        if seen == 0:
            raise ValueError("ActivationMetadata.record got no data: pass the training set.")
        if counts.min() < 2:
            raise ValueError(
                f"Every class needs at least 2 training examples for its statistics; class "
                f"{int(np.argmin(counts))} has {int(counts.min())}. Pass num_classes matching "
                "the labels, or more data."
            )
        for i, block in enumerate(blocks):
            mean = sums[i] / counts[:, None]
            block["mean"] = mean.astype(np.float32)
            if full[i]:
                cov = squares[i] / counts[:, None, None] - mean[:, :, None] * mean[:, None, :]
                block["cov"] = cov.astype(np.float32)
            else:
                var = np.maximum(squares[i] / counts[:, None] - mean * mean, 0.0)
                block["std"] = np.sqrt(var).astype(np.float32)
            if block.get("basis") is not None:
                _keep_largest(block, fraction)
        model = {"name": teacher.name, "sha256": weights_sha256(teacher)}
        layers_out = list(zip(names + [TOP], extractor.shapes))
        return cls(kind, temperature, classes, counts, layers_out, blocks, model)

    # -------------------------------------------------------------- file
    def save(self, path) -> int:
        """Writes the `.npz` file (format in the module docstring); returns its size in bytes."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"path must end in '.npz' (a NumPy zip), got {path!r}.")
        arrays = {}
        described = []
        for i, block in enumerate(self.blocks):
            entry = {"name": block["name"], "size": int(block["size"]),
                     "sources": [int(s) for s in block["sources"]]}
            for key in ("mean", "std", "cov", "basis"):
                if block.get(key) is not None:
                    arrays[f"b{i}_{key}"] = np.asarray(block[key], np.float32)
                    entry[key] = True
            described.append(entry)
        meta = {
            "format": FORMAT, "kind": self.kind, "temperature": self.temperature,
            "num_classes": self.num_classes, "counts": self.counts.tolist(),
            "layers": [[name, list(shape)] for name, shape in self.layers],
            "model": self.model, "blocks": described,
        }
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        return os.path.getsize(path)

    @classmethod
    def load(cls, path) -> ActivationMetadata:
        """Reads a file written by `save`.

        Raises:
            ValueError: if the file is not keras_kd activation metadata, or is spectral
                metadata of the older format `/1`.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            if "meta" not in data:
                raise ValueError(f"{os.fspath(path)!r} is not a keras_kd activation metadata "
                                 "file (no 'meta' entry). Write it with "
                                 "ActivationMetadata.save.")
            meta = json.loads(str(data["meta"]))
            found = meta.get("format")
            if found not in (FORMAT, _OLD_FORMAT):
                raise ValueError(f"{os.fspath(path)!r} has format {found!r}; "
                                 f"this version of keras_kd reads {FORMAT!r}.")
            if found == _OLD_FORMAT and meta.get("kind") in _SPECTRAL:
                raise ValueError(
                    f"{os.fspath(path)!r} holds {meta['kind']} metadata in the older format "
                    f"{_OLD_FORMAT!r}, whose coefficients are on a graph-Laplacian basis; "
                    "spectral metadata now uses the adjacency's graph Fourier basis of Lopes "
                    "et al. Record it again with ActivationMetadata.record(teacher, x, y, "
                    f"kind={meta['kind']!r})."
                )
            blocks = []
            for i, entry in enumerate(meta["blocks"]):
                block = {"name": entry["name"], "size": entry["size"],
                         "sources": entry["sources"]}
                for key in ("mean", "std", "cov", "basis"):
                    block[key] = data[f"b{i}_{key}"] if entry.get(key) else None
                blocks.append(block)
        return cls(meta["kind"], meta["temperature"], meta["num_classes"], meta["counts"],
                   meta["layers"], blocks, meta["model"])

    def nbytes(self) -> int:
        """Bytes of the stored arrays (the file adds a few hundred bytes of header)."""
        return sum(np.asarray(b[k]).nbytes for b in self.blocks
                   for k in ("mean", "std", "cov", "basis") if b.get(k) is not None)

    def check_teacher(self, teacher: keras.Model) -> None:
        """Refuses a teacher other than the one the statistics were recorded from.

        Raises:
            ValueError: when the teacher's weights (SHA-256) or recorded layers differ.
        """
        _check_teacher(teacher)
        names = [layer.name for layer in teacher.layers]
        missing = [name for name, _ in self.layers[:-1] if name not in names]
        digest = weights_sha256(teacher)
        if missing or digest != self.model["sha256"]:
            raise ValueError(
                f"This metadata was recorded from the model '{self.model['name']}' (weights "
                f"SHA-256 {self.model['sha256'][:12]}...), but the teacher '{teacher.name}' "
                f"has weights SHA-256 {digest[:12]}..."
                + (f" and lacks the layers {missing}" if missing else "")
                + ": metadata only describes the model it was recorded from. Pass that "
                "teacher, or record new metadata with ActivationMetadata.record(teacher, x, y)."
            )

    def sampler(self):
        """`sample(classes, rng) -> [ (batch, n) float32 per block ]` from the statistics."""
        factors = []
        for block in self.blocks:
            if block.get("cov") is not None:
                cov = np.asarray(block["cov"], np.float64)
                n = cov.shape[-1]
                ridge = 1e-6 * np.maximum(np.trace(cov, axis1=1, axis2=2) / n, 1e-12)
                cov = cov + ridge[:, None, None] * np.eye(n)
                factors.append(np.linalg.cholesky(cov))
            else:
                factors.append(None)

        def sample(classes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
            out = []
            for block, factor in zip(self.blocks, factors):
                mean = np.asarray(block["mean"], np.float64)[classes]
                z = rng.standard_normal(mean.shape)
                if factor is not None:
                    value = mean + np.einsum("bij,bj->bi", factor[classes], z)
                else:
                    value = mean + z * np.asarray(block["std"], np.float64)[classes]
                out.append(value.astype(np.float32))
            return out

        return sample


# ---------------------------------------------------------------------- internals
class _Extractor:
    """The recorded layers' outputs then `logits / T`, flattened per example."""

    def __init__(self, teacher: keras.Model, names: Sequence[str], temperature: float):
        taps = tuple(Tap(layer=name) for name in names) + (LOGITS,)
        self._features = FeatureExtractor(teacher, taps, "teacher")
        self._taps = taps
        self.names = list(names) + [TOP]
        self.temperature = temperature
        shapes = self._features.shapes()
        self.shapes = [tuple(int(d) for d in shapes[t][1:]) for t in taps]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def __call__(self, x) -> list:
        _, tensors = self._features(x, training=False)
        out = []
        for tap in self._taps:
            value = ops.cast(tensors[tap], "float32")
            value = ops.reshape(value, (ops.shape(value)[0], -1))
            if tap == LOGITS:
                value = value / self.temperature
            out.append(value)
        return out


def _block_layout(kind, extractor: _Extractor, kernels, hidden_covariance) -> list[dict]:
    count = len(extractor.sizes)
    if kind == "top_layer":
        return [{"name": TOP, "size": extractor.sizes[-1], "sources": [count - 1],
                 "full": True}]
    if kind == "all_layers":
        blocks = [{"name": f"layer{i}", "size": n, "sources": [i],
                   "full": i == count - 1 or hidden_covariance}
                  for i, n in enumerate(extractor.sizes)]
        too_big = [(name, b["size"]) for name, b in zip(extractor.names, blocks)
                   if b["full"] and b["size"] > _MAX_COVARIANCE_UNITS]
        if too_big:
            raise ValueError(
                f"hidden_covariance=True keeps an n x n covariance per class and layer; the "
                f"layers {too_big} have more than {_MAX_COVARIANCE_UNITS} units. Pass "
                "hidden_covariance=False (per-unit standard deviations) or fewer layers."
            )
        return blocks
    if kind == "spectral_all_layers":
        basis = graph_fourier_basis(kernels)
        return [{"name": "graph", "size": basis.shape[1], "sources": list(range(count)),
                 "basis": basis.astype(np.float32)}]
    blocks = []
    for p, kernel in enumerate(kernels):
        basis = graph_fourier_basis([kernel])
        blocks.append({"name": f"pair{p}", "size": basis.shape[1], "sources": [p, p + 1],
                       "basis": basis.astype(np.float32)})
    return blocks


def _keep_largest(block: dict, fraction: float) -> None:
    """Keeps, per class, the coefficients of largest `|mean|`; stores the union's basis."""
    nodes = block["basis"].shape[0]
    keep = largest_coefficients(block["mean"], max(1, math.ceil(fraction * nodes)))
    union = np.flatnonzero(keep.any(axis=0))
    block["basis"] = np.ascontiguousarray(block["basis"][:, union])
    block["mean"] = np.where(keep, block["mean"], 0.0)[:, union].astype(np.float32)
    block["std"] = np.where(keep, block["std"], 0.0)[:, union].astype(np.float32)
    block["size"] = int(union.size)


def _block_function(blocks):
    """`project(recorded tensors) -> [block values]` (projections for spectral blocks)."""
    bases = [tf.constant(b["basis"]) if b.get("basis") is not None else None for b in blocks]

    def project(tensors):
        out = []
        for block, basis in zip(blocks, bases):
            parts = [tensors[s] for s in block["sources"]]
            signal = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
            out.append(signal if basis is None else ops.matmul(signal, basis))
        return out

    return project


def _labelled_dataset(x, y, batch_size: int) -> tf.data.Dataset:
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Pass y only with array inputs; a dataset must yield (x, y).")
        spec = x.element_spec
        if not (isinstance(spec, tuple) and len(spec) >= 2):
            raise ValueError("The dataset must yield (x, y) batches: the statistics are per "
                             "class.")
        return x.map(lambda *e: (e[0], e[1]))
    if y is None:
        raise ValueError("y is required: the statistics are recorded per class. Pass the "
                         "training labels (integer class ids).")
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}.")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


# ---------------------------------------------------------------------- reconstruction
def reconstruct(
    teacher: keras.Model,
    metadata: ActivationMetadata,
    num_samples: int,
    *,
    batch_size: int = 64,
    steps: int = 1000,
    learning_rate: float = 0.07,
    initial_mean: float = 0.0,
    initial_std: float = 1.0,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    checkpoint_dir=None,
    time_limit: float | None = None,
    verbose: int = 1,
) -> SyntheticSet:
    """Reconstructs a transfer set from the teacher and its activation metadata alone.

    For every batch, classes are drawn evenly, target activations are sampled from those
    classes' statistics, and inputs starting from `N(initial_mean, initial_std^2)` noise are
    optimised with Adam through the frozen teacher (`training=False`) to minimise the
    objective of the metadata's kind (module docstring). Batched, seeded, resumable from
    `checkpoint_dir`, stoppable (see `keras_kd.datafree.inversion.invert`).

    Args:
        teacher: the teacher the metadata was recorded from (checked before any work).
        metadata: an `ActivationMetadata`.
        num_samples: size of the transfer set.
        batch_size: inputs optimised together (64 in the authors' code).
        steps: Adam steps per batch (1000 in the authors' code).
        learning_rate: Adam's learning rate (0.07 in the authors' MNIST runs).
        initial_mean, initial_std: the starting noise (the authors' MNIST code: 0.15, 0.1
            for pixels in [0, 1]).
        input_range: optional `(low, high)` clip after every step.
        seed: base seed.
        checkpoint_dir: directory to keep finished batches in and resume from.
        time_limit: seconds after which no batch is started.
        verbose: 1 for a progress bar, 0 for none.

    Returns:
        A `SyntheticSet` (`y` holds the sampled classes).

    Raises:
        TypeError, ValueError: a metadata from another model, a teacher whose recorded layers
            are missing, or bad arguments, before any work.

    Example:
        >>> meta = ActivationMetadata.load("teacher.meta.npz")
        >>> transfer = reconstruct(teacher, meta, 10000, steps=300, seed=0,
        ...                        initial_mean=0.15, initial_std=0.1)
        >>> distiller = keras_kd.Distiller(teacher, student, keras_kd.SoftTargetDistillation(
        ...     temperature=meta.temperature), student_loss_weight=0.0)
        >>> distiller.compile("adam")
        >>> distiller.fit(transfer.dataset(128), epochs=10)

    Reference:
        Lopes, Fenu & Starner, "Data-Free Knowledge Distillation for Deep Neural Networks",
        2017. `x* = argmin_x l(phi(x), phi_0)`, `phi_0 ~ N(mu_c, Sigma_c)`; the paper starts
        MNIST inputs at `N(0.15, 0.1)` per pixel and optimises them with Adam.
    """
    if not isinstance(metadata, ActivationMetadata):
        raise TypeError(f"metadata must be an ActivationMetadata, got {type(metadata)!r}. "
                        "Load it with ActivationMetadata.load(path).")
    metadata.check_teacher(teacher)
    initial_mean = validation.real_scalar("initial_mean", initial_mean)
    initial_std = validation.positive("initial_std", initial_std)
    batch_size = validation.positive_int("batch_size", batch_size)
    names = [name for name, _ in metadata.layers[:-1]]
    extractor = _Extractor(teacher, names, metadata.temperature)
    got = list(zip(names + [TOP], extractor.shapes))
    if got != metadata.layers:
        raise ValueError(f"The teacher's recorded layers have shapes {got}, but the metadata "
                         f"was recorded with {metadata.layers}. Pass the recording teacher.")
    blocks = metadata.blocks
    sample = metadata.sampler()
    kind = metadata.kind
    input_shape = tuple(int(d) for d in teacher.inputs[0].shape[1:])
    classes_count = metadata.num_classes

    def objective(x, targets):
        values = extractor(x)
        sampled = [targets[f"block{i}"] for i in range(len(blocks))]
        if kind == "top_layer":
            per_example = top_layer_matching(sampled[0], values[-1])
        elif kind == "all_layers":
            per_example = all_layers_matching(sampled, values)
        else:
            signals = []
            for block in blocks:
                parts = [values[s] for s in block["sources"]]
                signals.append(parts[0] if len(parts) == 1 else ops.concatenate(parts, -1))
            per_example = spectral_matching(sampled, signals,
                                            [tf.constant(b["basis"]) for b in blocks])
        loss = ops.mean(per_example)
        return loss, {"matching": loss}

    def start_batch(rng: np.random.Generator, index: int) -> BatchStart:
        classes = balanced_classes(classes_count, batch_size, index, rng)
        x0 = rng.normal(initial_mean, initial_std, size=(batch_size, *input_shape))
        targets = {f"block{i}": v for i, v in enumerate(sample(classes, rng))}
        return BatchStart(x=x0.astype(np.float32), y=classes, targets=targets)

    fingerprint = {"kind": kind, "teacher_sha256": metadata.model["sha256"],
                   "initial_mean": initial_mean, "initial_std": initial_std}
    return invert(objective, start_batch, input_shape, num_samples, batch_size, steps,
                  learning_rate, seed=seed, input_range=input_range,
                  checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
                  time_limit=time_limit, verbose=verbose, name=f"lopes_{kind}")
