"""Pure tensor functions behind every distillation loss.

Each function takes ``(teacher_..., student_...)`` tensors, computes in float32 and returns one
value per example (shape ``(batch,)``). The Keras classes in this package store configuration and
call these functions; reduction over the batch (with sample weights) is done by the `Distiller`.
"""

from __future__ import annotations

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Temperature-scaled KL divergence between softened teacher and student distributions.

    Args:
        teacher_logits: `(batch, classes)` pre-softmax teacher outputs.
        student_logits: `(batch, classes)` pre-softmax student outputs.
        temperature: softening temperature `T > 0` (float or scalar tensor/variable).

    Returns:
        `(batch,)` float32 tensor: `T^2 * KL(softmax(t/T) || softmax(s/T))` per example.

    Example:
        >>> soft_target_kl([[2.0, 0.0]], [[2.0, 0.0]], 4.0)  # identical logits -> 0

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * sum_k p_k (log p_k - log q_k)`, `p = softmax(t/T)`, `q = softmax(s/T)`; the `T^2`
        factor keeps gradient magnitudes independent of `T`.
    """
    t = ops.cast(temperature, "float32")
    log_p = ops.log_softmax(_f32(teacher_logits) / t, axis=-1)
    log_q = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    return t * t * kl


def soft_target_cross_entropy(teacher_logits, student_logits, temperature=4.0):
    """Cross-entropy of the student's softened distribution against the teacher's.

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.
        temperature: softening temperature `T > 0`.

    Returns:
        `(batch,)` float32: `-T^2 * sum_k softmax(t/T)_k * log softmax(s/T)_k`. It differs from
        `soft_target_kl` by the teacher entropy (a constant for the student), so the gradients
        are identical.

    Reference:
        Hinton et al. 2015, eq. (1)-(2).
    """
    t = ops.cast(temperature, "float32")
    p = ops.softmax(_f32(teacher_logits) / t, axis=-1)
    log_q = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    return -t * t * ops.sum(p * log_q, axis=-1)


def logit_mse(teacher_logits, student_logits):
    """Half squared L2 distance between logits (logit matching).

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.

    Returns:
        `(batch,)` float32: `0.5 * sum_k (s_k - t_k)^2`.

    Reference:
        Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014 (`1/(2T) sum ||g - z||^2`
        averaged over the batch); Zhou et al., "Rocket Launching", AAAI 2018 (hint loss on logits).
    """
    diff = _f32(student_logits) - _f32(teacher_logits)
    return 0.5 * ops.sum(ops.square(diff), axis=-1)


def per_example_mean(values):
    """Mean over every axis but the first: `(batch, ...) -> (batch,)` in float32."""
    values = _f32(values)
    if len(values.shape) <= 1:
        return values
    return ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


__all__ = [
    "logit_mse",
    "per_example_mean",
    "soft_target_cross_entropy",
    "soft_target_kl",
]


# ---------------------------------------------------------------------- feature distillation


def _flatten_per_example(x):
    x = _f32(x)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def hint_mse(teacher_hint, student_hint):
    """Mean squared error between a teacher hint and a (regressed) student hint, per example.

    Args:
        teacher_hint: `(batch, ...)` teacher feature (the hint layer's output).
        student_hint: `(batch, ...)` student feature already mapped to the teacher's shape (by a
            regressor, see `keras_kd.adapters`).

    Returns:
        `(batch,)` float32: `mean_k (r(v)_k - u_k)^2` over all feature entries `k`.

    Example:
        >>> hint_mse(t_feat, regressor(s_feat))  # (batch,)

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
        `1/2 ||u_h(x) - r(v_g(x))||^2` (here averaged over entries, not summed, so the scale
        does not depend on the feature size).
    """
    diff = _flatten_per_example(student_hint) - _flatten_per_example(teacher_hint)
    return ops.mean(ops.square(diff), axis=-1)


def attention_map(features, p=2):
    """Spatial attention map of a `(batch, H, W, C)` feature: `normalize(mean_c |A_c|^p)`.

    Args:
        features: channels-last 4-D feature map.
        p: power applied to absolute activations (the paper uses 2).

    Returns:
        `(batch, H * W)` float32 maps with unit L2 norm per example.

    Reference:
        Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, eq. (2).
    """
    x = _f32(features)
    if len(x.shape) != 4:
        raise ValueError(
            f"attention_map expects a (batch, H, W, C) feature map, got shape {tuple(x.shape)}."
        )
    powered = ops.square(x) if p == 2 else ops.power(ops.abs(x), p)
    q = ops.mean(powered, axis=-1)
    q = ops.reshape(q, (ops.shape(q)[0], -1))
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(q), axis=-1, keepdims=True), 1e-24))
    return q / norm


def attention_transfer(teacher_features, student_features, p=2):
    """Attention transfer between two feature maps of equal spatial size.

    Args:
        teacher_features: `(batch, H, W, C_t)` teacher feature map.
        student_features: `(batch, H, W, C_s)` student feature map (channels may differ).
        p: power of the attention map (2 in the paper).

    Returns:
        `(batch,)` float32: `mean_j (Q_s_j / ||Q_s|| - Q_t_j / ||Q_t||)^2` over the `H * W`
        positions `j`, with `Q = mean_c |A_c|^p` (the authors' `at_loss`; multiply by
        `beta / 2 = 500` for their scale).

    Reference:
        Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance
        of Convolutional Neural Networks via Attention Transfer", ICLR 2017.
        `beta/2 * || Q_s/||Q_s||_2 - Q_t/||Q_t||_2 ||_2^2`.
    """
    q_t = attention_map(teacher_features, p)
    q_s = attention_map(student_features, p)
    if q_t.shape[-1] is not None and q_s.shape[-1] is not None and q_t.shape[-1] != q_s.shape[-1]:
        raise ValueError(
            "attention_transfer needs teacher and student maps of equal spatial size, got "
            f"{tuple(teacher_features.shape)} and {tuple(student_features.shape)}."
        )
    return ops.mean(ops.square(q_s - q_t), axis=-1)


def fsp_matrix(features_a, features_b):
    """Flow of solution procedure (Gram) matrix between two feature maps of one network.

    Args:
        features_a: `(batch, H, W, M)` feature map.
        features_b: `(batch, H, W, N)` feature map of the same spatial size.

    Returns:
        `(batch, M, N)` float32: `G_ij = sum_{h,w} a_{h,w,i} * b_{h,w,j} / (H * W)`.

    Reference:
        Yim et al., "A Gift from Knowledge Distillation", CVPR 2017, eq. (1).
    """
    a, b = _f32(features_a), _f32(features_b)
    if len(a.shape) != 4 or len(b.shape) != 4 or a.shape[1:3] != b.shape[1:3]:
        raise ValueError(
            "fsp_matrix needs two (batch, H, W, C) maps of equal H and W, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    a = ops.reshape(a, (ops.shape(a)[0], -1, a.shape[-1]))
    b = ops.reshape(b, (ops.shape(b)[0], -1, b.shape[-1]))
    positions = ops.cast(ops.shape(a)[1], "float32")
    return ops.einsum("bpm,bpn->bmn", a, b) / positions


def fsp_loss(teacher_a, teacher_b, student_a, student_b):
    """Squared distance between teacher and student FSP matrices, per example.

    Args:
        teacher_a, teacher_b: the two teacher maps (same H, W), `(batch, H, W, M)` and
            `(batch, H, W, N)`.
        student_a, student_b: the two student maps with the same channel counts `M`, `N`.

    Returns:
        `(batch,)` float32: `mean_{ij} (G_t_ij - G_s_ij)^2` (the paper's squared Frobenius
        norm divided by `M * N`, so the scale does not depend on the widths).

    Reference:
        Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network
        Minimization and Transfer Learning", CVPR 2017, eq. (2).
        `1/N sum_x sum_i lambda_i ||G_i^T(x) - G_i^S(x)||_2^2`.
    """
    g_t = fsp_matrix(teacher_a, teacher_b)
    g_s = fsp_matrix(student_a, student_b)
    return ops.mean(ops.reshape(ops.square(g_s - g_t), (ops.shape(g_t)[0], -1)), axis=-1)


def _smooth_l1(x):
    """Huber loss with delta 1 (PyTorch's `smooth_l1_loss`)."""
    ax = ops.abs(x)
    return ops.where(ax < 1.0, 0.5 * ops.square(x), ax - 0.5)


def _normalized_distances(e):
    """Pairwise Euclidean distances divided by their mean over distinct pairs (i != j)."""
    square = ops.sum(ops.square(e), axis=-1)
    gram = ops.matmul(e, ops.transpose(e))
    d2 = ops.maximum(square[:, None] + square[None, :] - 2.0 * gram, 1e-12)
    n = ops.shape(e)[0]
    off_diagonal = 1.0 - ops.eye(n, dtype="float32")
    d = ops.sqrt(d2) * off_diagonal
    positive = ops.cast(d > 0, "float32")
    mean = ops.sum(d) / ops.maximum(ops.sum(positive), 1.0)
    return d / ops.maximum(mean, 1e-12)


def rkd_distance(teacher_embeddings, student_embeddings):
    """RKD distance term: Huber loss between normalized pairwise distances, per anchor.

    Args:
        teacher_embeddings: `(batch, ...)` teacher features (flattened per example).
        student_embeddings: `(batch, ...)` student features (any width).

    Returns:
        `(batch,)` float32: for anchor `i`, `mean_j huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))`
        with `psi_D(a, b) = ||a - b|| / mu` and `mu` the batch mean distance over pairs
        `i != j`. The batch mean of these values is the paper's loss.

    Reference:
        Park et al., "Relational Knowledge Distillation", CVPR 2019, eq. (3)-(5).
    """
    t = _normalized_distances(_flatten_per_example(teacher_embeddings))
    s = _normalized_distances(_flatten_per_example(student_embeddings))
    return ops.mean(_smooth_l1(s - t), axis=-1)


def _angles(e):
    """`(n, n, n)` cosines `<e(i->j), e(i->k)>` of unit difference vectors at vertex `i`."""
    diff = e[None, :, :] - e[:, None, :]  # diff[i, j] = e_j - e_i
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(diff), axis=-1, keepdims=True), 1e-12))
    unit = diff / norm
    return ops.einsum("ijd,ikd->ijk", unit, unit)


def rkd_angle(teacher_embeddings, student_embeddings):
    """RKD angle term: Huber loss between triplet angle cosines, per vertex.

    Args:
        teacher_embeddings: `(batch, ...)` teacher features (flattened per example).
        student_embeddings: `(batch, ...)` student features (any width).

    Returns:
        `(batch,)` float32: for vertex `i`, `mean_{j,k} huber(cos_s(i; j, k) - cos_t(i; j, k))`
        with `cos(i; j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>`. Memory
        grows as `batch^2 * dim`: tap an embedding (after pooling), not a large map.

    Reference:
        Park et al., "Relational Knowledge Distillation", CVPR 2019, eq. (6)-(8).
    """
    t = _angles(_flatten_per_example(teacher_embeddings))
    s = _angles(_flatten_per_example(student_embeddings))
    n = ops.shape(t)[0]
    return ops.mean(ops.reshape(_smooth_l1(s - t), (n, -1)), axis=-1)


def overhaul_partial_l2(teacher_pre_relu, student_features, margin):
    """Overhaul distillation distance: partial L2 to the margin-ReLU'd teacher feature.

    Args:
        teacher_pre_relu: `(batch, ..., C)` teacher feature taken before its ReLU.
        student_features: `(batch, ..., C)` student feature after the connector.
        margin: `(C,)` per-channel margins `m = E[x | x < 0]` (negative numbers), see
            `keras_kd.losses.overhaul.batch_norm_margin`.

    Returns:
        `(batch,)` float32: `sum_k d_k` with `target = max(t, m)` and
        `d_k = 0 if s_k <= target_k <= 0 else (s_k - target_k)^2`.

    Reference:
        Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, eq. (2)-(4).
        `d_p(T, S) = sum_i 0 if S_i <= T_i <= 0 else (T_i - S_i)^2`, `T = max(t, m)`.
    """
    t = ops.maximum(_f32(teacher_pre_relu), ops.cast(margin, "float32"))
    diff = _f32(student_features) - t
    # where t <= 0 only s > t (diff > 0) costs: max(diff, 0) is 0 exactly where S <= T <= 0
    kept = ops.where(t > 0, diff, ops.maximum(diff, 0.0))
    d = ops.square(kept)
    return ops.sum(ops.reshape(d, (ops.shape(d)[0], -1)), axis=-1)


__all__ += [
    "attention_map",
    "attention_transfer",
    "fsp_loss",
    "fsp_matrix",
    "hint_mse",
    "overhaul_partial_l2",
    "rkd_angle",
    "rkd_distance",
]
