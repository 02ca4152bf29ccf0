"""Pure tensor functions behind every distillation loss.

Each function takes ``(teacher_..., student_...)`` tensors, computes in float32 and returns one
value per example (shape ``(batch,)``), or per position for the output losses given sequence /
dense outputs (``(batch, steps)``, ``(batch, H, W)``). The Keras classes in this package store
configuration and call these functions; reduction over the batch (with sample weights) is done
by the `Distiller`.
"""

from __future__ import annotations

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Temperature-scaled KL divergence between softened teacher and student distributions.

    Args:
        teacher_logits: `(batch, classes)` pre-softmax teacher outputs, or
            `(batch, ..., classes)` for sequence / dense outputs (e.g. `(batch, steps, classes)`,
            `(batch, H, W, classes)`).
        student_logits: pre-softmax student outputs of the same shape.
        temperature: softening temperature `T > 0` (float or scalar tensor/variable).

    Returns:
        float32 tensor of shape `teacher_logits.shape[:-1]`:
        `T^2 * KL(softmax(t/T) || softmax(s/T))` per example (`(batch,)`), or per position
        (`(batch, steps)` / `(batch, H, W)`) for sequence / dense inputs: only the last (class)
        axis is reduced. The `Distiller` reduces per-position values with Keras's temporal
        sample-weight convention: `sum(w * l) / (batch * positions)`.

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
    """Mean squared error between a teacher hint and an (adapted) student hint, per example.

    Args:
        teacher_hint: `(batch, ...)` teacher feature (the hint layer's output).
        student_hint: `(batch, ...)` student feature already mapped to the teacher's shape (by an
            adapter, see `keras_kd.adapters`).

    Returns:
        `(batch,)` float32: `mean_k (r(v)_k - u_k)^2` over all feature entries `k`.

    Example:
        >>> hint_mse(t_feat, adapter(s_feat))  # (batch,)

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
    """`(n, n, n)` cosines `<e(i->j), e(i->k)>` of unit difference vectors at vertex `i`.

    From the Gram matrix of the centred embeddings, in float64: `<e_j - e_i, e_k - e_i> =
    G_jk - G_ij - G_ik + G_ii`, so the cost is `n^2 dim + n^3` instead of the explicit
    differences' `n^3 dim` (and `n^2 dim` memory). Centring (the angles are translation
    invariant) and float64 keep the cancellation far below float32 rounding. A cosine with a
    coincident pair (`j = i`, `k = i` or squared distance <= 1e-12) is 0.
    """
    e = ops.cast(e, "float64")
    e = e - ops.mean(e, axis=0, keepdims=True)
    gram = ops.matmul(e, ops.transpose(e))
    square = ops.diagonal(gram)
    d2 = square[:, None] + square[None, :] - 2.0 * gram  # d2[i, j] = ||e_j - e_i||^2
    # r[i, j] = 1 / ||e_j - e_i||, 0 for a coincident pair (so its cosines are 0)
    r = ops.where(d2 > 1e-12, 1.0 / ops.sqrt(ops.maximum(d2, 1e-12)), 0.0)
    # <e_j - e_i, e_k - e_i> = G_jk - a_ij - a_ik with a_ij = G_ij - G_ii / 2
    a = gram - 0.5 * square[:, None]
    cos = (gram[None, :, :] - a[:, :, None] - a[:, None, :]) * r[:, :, None] * r[:, None, :]
    return ops.cast(cos, "float32")


def rkd_angle(teacher_embeddings, student_embeddings):
    """RKD angle term: Huber loss between triplet angle cosines, per vertex.

    Args:
        teacher_embeddings: `(batch, ...)` teacher features (flattened per example).
        student_embeddings: `(batch, ...)` student features (any width).

    Returns:
        `(batch,)` float32: for vertex `i`, `mean_{j,k} huber(cos_s(i; j, k) - cos_t(i; j, k))`
        with `cos(i; j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>` (0 where
        `e_j` or `e_k` coincides with `e_i`). Computed from the Gram matrix in float64: time
        `batch^2 * dim + batch^3`, memory `batch^3`.

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
        student_features: `(batch, ..., C)` student feature after the adapter.
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


# ---------------------------------------------------------------------- output kinds


def _static_rank_at_least(x, rank: int, function: str, hint: str) -> None:
    if len(x.shape) < rank:
        raise ValueError(f"{function} expects {hint}, got shape {tuple(x.shape)}.")


def bernoulli_soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Temperature-scaled KL divergence between independent sigmoid (Bernoulli) outputs.

    For binary and multi-label models: each of the `C >= 1` output units is its own two-class
    distribution `Bern(sigmoid(z / T))`; the KL divergences of the units are summed. Unlike
    `soft_target_kl` (a softmax over the last axis, which is constant for `C = 1`), a one-unit
    model gets a non-zero loss.

    Args:
        teacher_logits: `(batch, C)` pre-sigmoid teacher outputs, or `(batch, ..., C)` for
            sequence / dense outputs (e.g. `(batch, steps, C)`, `(batch, H, W, C)`).
        student_logits: pre-sigmoid student outputs of the same shape.
        temperature: softening temperature `T > 0` (float or scalar tensor/variable).

    Returns:
        float32 tensor of shape `teacher_logits.shape[:-1]`: `(batch,)` for `(batch, C)` inputs,
        `(batch, steps)` / `(batch, H, W)` per-position values for sequence / dense inputs (only
        the last, unit axis is summed). The `Distiller` reduces per-position values with Keras's
        temporal sample-weight convention: `sum(w * l) / (batch * positions)`.

    Raises:
        ValueError: for inputs of rank < 2 (reshape a `(batch,)` output to `(batch, 1)`).

    Example:
        >>> bernoulli_soft_target_kl([[3.0]], [[-1.0]], 4.0)  # one sigmoid unit: > 0

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, with
        the softmax replaced by one sigmoid per unit (multi-label soft targets).
        `T^2 * sum_c [p_c log(p_c/q_c) + (1-p_c) log((1-p_c)/(1-q_c))]`,
        `p = sigmoid(t/T)`, `q = sigmoid(s/T)`; computed from the logits with softplus /
        log1p forms, never the log of a probability (see `_bernoulli_kl_from_logits`).
    """
    t_logits, s_logits = _f32(teacher_logits), _f32(student_logits)
    _static_rank_at_least(t_logits, 2, "bernoulli_soft_target_kl", "(batch, ..., units) logits")
    t = ops.cast(temperature, "float32")
    return t * t * ops.sum(_bernoulli_kl_from_logits(t_logits / t, s_logits / t), axis=-1)


def _bernoulli_kl_from_logits(a, b):
    """`KL(Bern(sigmoid(a)) || Bern(sigmoid(b)))` elementwise, accurate for small and large gaps.

    The KL is unchanged by swapping the two outcomes (`a, b -> -a, -b`), so `a <= 0`, i.e.
    `p = sigmoid(a) <= 1/2`, is arranged first. With `d = b - a`:
    - `|d| < 1`: `log1p(p * expm1(d)) - p * d`, whose rounding error is `O(eps * p * |d|)`
      (the value is `~ p (1 - p) d^2 / 2`; at T = 20 the softplus form below is about 10x
      less accurate, its terms being O(1) while the KL is O(d^2));
    - otherwise: `p (softplus(-b) - softplus(-a)) + (1 - p) (softplus(b) - softplus(a))`, i.e.
      `p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))` without logs of probabilities.
    """
    flip = ops.where(a > 0, -1.0, 1.0)
    a, b = a * flip, b * flip
    p = ops.sigmoid(a)
    d = b - a
    small = ops.abs(d) < 1.0
    d_small = ops.where(small, d, 0.0)  # keeps expm1 finite (and its gradient) off the branch
    near = ops.log1p(p * ops.expm1(d_small)) - p * d_small
    far = p * (ops.softplus(-b) - ops.softplus(-a)) + ops.sigmoid(-a) * (
        ops.softplus(b) - ops.softplus(a)
    )
    return ops.where(small, near, far)


def output_mse(teacher_outputs, student_outputs):
    """Mean squared error between teacher and student outputs, per example (regression).

    Args:
        teacher_outputs: `(batch, ...)` teacher predictions (any shape, e.g. `(batch, 1)`).
        student_outputs: student predictions of the same shape.

    Returns:
        `(batch,)` float32: `mean_k (s_k - t_k)^2` over all non-batch entries `k`.

    Example:
        >>> output_mse([[1.0, 2.0]], [[1.0, 4.0]])  # [2.0]

    Reference:
        Chen et al., "Learning Efficient Object Detection Models with Knowledge
        Distillation", NeurIPS 2017 (teacher outputs as regression targets);
        Takamoto et al., "An Efficient Method of Training Small Models for Regression
        Problems with Knowledge Distillation", MIPR 2020. `mean_k (s_k - t_k)^2`.
    """
    diff = _f32(student_outputs) - _f32(teacher_outputs)
    return per_example_mean(ops.square(diff))


__all__ += ["bernoulli_soft_target_kl", "output_mse"]


# ---------------------------------------------------------------------- modern logit losses


def standardize_logits(logits, eps=1e-7):
    """Z-scores each example's logits over the class (last) axis.

    Args:
        logits: `(batch, ..., classes)` logits, `classes >= 2`.
        eps: added to the standard deviation (the official code's `1e-7`).

    Returns:
        float32 tensor of the same shape: `(z - mean(z)) / (eps + std(z))`, with the sample
        standard deviation (`ddof = 1`, PyTorch's default `Tensor.std`, as in the official
        code). The variance is floored at `1e-24` before the square root so that a row of
        equal logits gives zeros with finite gradients instead of NaN.

    Raises:
        ValueError: when the class axis has fewer than 2 entries.

    Example:
        >>> standardize_logits([[1.0, 2.0, 3.0]])  # [[-1, 0, 1]]

    Reference:
        Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024
        (github.com/sunshangquan/logit-standardization-KD, `normalize` in
        mdistiller/distillers/KD.py). `Z(z) = (z - mean(z)) / (eps + std(z))`.
    """
    z = _f32(logits)
    classes = z.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            f"standardize_logits needs at least 2 classes on the last axis, got shape "
            f"{tuple(z.shape)}."
        )
    n = ops.cast(ops.shape(z)[-1], "float32")
    centered = z - ops.mean(z, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centered), axis=-1, keepdims=True) / (n - 1.0)
    std = ops.sqrt(ops.maximum(variance, 1e-24))
    return centered / (eps + std)


def _target_mask(labels, logits):
    """`(batch, ..., classes)` float32 one-hot mask of the target class.

    `labels` are integer ids of shape `logits.shape[:-1]` (a trailing axis of size 1 is
    allowed), or one-hot / soft labels of the logits' shape (their argmax is the target, as
    the DIST authors' DKD does for mixup / label smoothing).
    """
    classes = logits.shape[-1]
    labels = ops.convert_to_tensor(labels)
    rank, logits_rank = len(labels.shape), len(logits.shape)
    if rank == logits_rank and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    elif rank == logits_rank:
        if labels.shape[-1] is not None and labels.shape[-1] != classes:
            raise ValueError(
                f"One-hot labels of shape {tuple(labels.shape)} do not match logits of shape "
                f"{tuple(logits.shape)}."
            )
        labels = ops.argmax(labels, axis=-1)
    elif rank != logits_rank - 1:
        raise ValueError(
            f"labels must be class ids of shape {tuple(logits.shape[:-1])} or one-hot labels "
            f"of shape {tuple(logits.shape)}; got shape {tuple(labels.shape)}."
        )
    return ops.one_hot(ops.cast(labels, "int32"), classes, dtype="float32")


def decoupled_kd_terms(teacher_logits, student_logits, labels, temperature=4.0):
    """The two parts of decoupled KD, per example: `(TCKD, NCKD)`.

    Args:
        teacher_logits: `(batch, classes)` teacher logits (`classes >= 2`), or
            `(batch, ..., classes)`.
        student_logits: student logits of the same shape.
        labels: integer class ids `(batch,)` (or `(batch, 1)`), or one-hot `(batch, classes)`.
        temperature: softening temperature `T > 0`.

    Returns:
        Two float32 tensors of shape `teacher_logits.shape[:-1]`:
        `TCKD = T^2 * KL(b^T || b^S)` over the binary (target, non-target) probabilities and
        `NCKD = T^2 * KL(p~^T || p~^S)` over the non-target classes renormalised.

    Raises:
        ValueError: for fewer than 2 classes or labels of an unexpected shape.
    """
    t_logits, s_logits = _f32(teacher_logits), _f32(student_logits)
    classes = t_logits.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            f"decoupled_kd needs at least 2 classes, got logits of shape {tuple(t_logits.shape)}."
        )
    t = ops.cast(temperature, "float32")
    gt = _target_mask(labels, t_logits)
    is_gt = gt > 0.5

    def binary_log_probs(z):
        log_p = ops.log_softmax(z, axis=-1)
        log_target = ops.sum(log_p * gt, axis=-1)
        # log of the non-target mass, from log-probabilities (no log of a probability that
        # may underflow to 0, which the official `torch.log(cat_mask(...))` risks)
        log_other = ops.logsumexp(ops.where(is_gt, -1e30, log_p), axis=-1)
        return log_target, log_other

    def non_target_log_probs(z):
        # The official code subtracts 1000 from z_target / T; putting the target 1000 below the
        # row minimum excludes it exactly (exp(-1000) is 0 in float32) for any logit range.
        masked = ops.where(is_gt, ops.min(z, axis=-1, keepdims=True) - 1000.0, z)
        return ops.log_softmax(masked, axis=-1)

    zt, zs = t_logits / t, s_logits / t
    tt, to = binary_log_probs(zt)
    st, so = binary_log_probs(zs)
    tckd = ops.exp(tt) * (tt - st) + ops.exp(to) * (to - so)
    log_pt, log_ps = non_target_log_probs(zt), non_target_log_probs(zs)
    nckd = ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return t * t * tckd, t * t * nckd


def decoupled_kd(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0, temperature=4.0):
    """Decoupled knowledge distillation (DKD): weighted target and non-target class KD.

    Args:
        teacher_logits: `(batch, classes)` teacher logits, `classes >= 2` (or
            `(batch, ..., classes)`, giving per-position values).
        student_logits: student logits of the same shape.
        labels: integer class ids `(batch,)` (or `(batch, 1)`), or one-hot / soft labels
            `(batch, classes)` (their argmax is the target).
        alpha: weight of the target-class term TCKD.
        beta: weight of the non-target-class term NCKD.
        temperature: softening temperature `T > 0`.

    Returns:
        `(batch,)` float32: `alpha * TCKD + beta * NCKD` per example (see
        `decoupled_kd_terms`); the batch mean equals the official `dkd_loss`.

    Raises:
        ValueError: for fewer than 2 classes or labels of an unexpected shape.

    Example:
        >>> decoupled_kd(teacher_logits, student_logits, y, alpha=1.0, beta=8.0)

    Reference:
        Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022
        (github.com/megvii-research/mdistiller, mdistiller/distillers/DKD.py `dkd_loss`).
        `alpha * T^2 KL(b^T || b^S) + beta * T^2 KL(p~^T || p~^S)`,
        `b = [p_target, 1 - p_target]`, `p~_i = p_i / (1 - p_target)` for `i != target`.
    """
    tckd, nckd = decoupled_kd_terms(teacher_logits, student_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def _one_minus_pearson_terms(a, b, axis, eps):
    """Per-entry terms whose sum over `axis` is `1 - sum(a b) / (||a|| ||b|| + eps)`.

    `a` and `b` are already centred along `axis`. With `x = a / ||a||` and `y = b / ||b||`
    (unit vectors), `1 - <a, b> / (||a|| ||b|| + eps) = sum(0.5 (x - y)^2 + x y eps /
    (||a|| ||b|| + eps))`: every term is computed without cancellation (identical inputs give
    exactly the `eps` part), and a vector of zeros (a batch of one, a row of equal
    probabilities) counts as `x = 0` with its `sum x^2 = 1` spread evenly, so the sum is
    `1 - 0 = 1` as in the official code, with finite gradients.
    """
    a2 = ops.sum(ops.square(a), axis=axis, keepdims=True)
    b2 = ops.sum(ops.square(b), axis=axis, keepdims=True)
    nonzero_a, nonzero_b = a2 > 1e-30, b2 > 1e-30
    norm_a = ops.sqrt(ops.maximum(a2, 1e-30))  # sqrt has an infinite gradient at 0
    norm_b = ops.sqrt(ops.maximum(b2, 1e-30))
    x = ops.where(nonzero_a, a / norm_a, 0.0)
    y = ops.where(nonzero_b, b / norm_b, 0.0)
    count = ops.cast(ops.shape(a)[axis], "float32")
    empty = (ops.cast(ops.logical_not(nonzero_a), "float32")
             + ops.cast(ops.logical_not(nonzero_b), "float32")) * (0.5 / count)
    return 0.5 * ops.square(x - y) + x * y * (eps / (norm_a * norm_b + eps)) + empty


def dist_kd(teacher_logits, student_logits, beta=1.0, gamma=1.0, temperature=1.0, eps=1e-8):
    """DIST: Pearson-correlation matching of predictions, across classes and across the batch.

    The inter-class term is per example. The intra-class term is a batch-level quantity (one
    correlation over the batch per class); it is distributed over the examples as
    `intra_i = (N / C) * sum_c [(x_ic - y_ic)^2 / 2 + x_ic y_ic eps / (||a_c|| ||b_c|| + eps)]`,
    with `a`, `b` the student and teacher probabilities centred over the `N` rows of the batch
    and `x = a / ||a_c||`, `y = b / ||b_c||` (unit columns). Since `sum_i x_ic^2 = 1`, the
    terms of a class sum to `1 - pearson_c`, so the batch mean of the returned values equals
    the paper's loss exactly; each share is >= 0 up to the `eps` part, and 0 for identical
    inputs with `eps = 0`. Sample weights therefore weight the inter-class term exactly and
    the intra-class term approximately (batch means and norms stay unweighted). Under a
    distribution strategy the intra-class term is computed over each replica's batch.

    Args:
        teacher_logits: `(batch, classes)` teacher logits, or `(batch, ..., classes)` for
            dense outputs (positions are treated as rows, as in the authors' segmentation
            code, and per-position values are returned).
        student_logits: student logits of the same shape.
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.
        temperature: softening temperature `T > 0` (the authors use 1 on ImageNet, 4 on
            CIFAR-100).
        eps: added to the product of norms, as in the official `cosine_similarity`.

    Returns:
        float32 tensor of shape `teacher_logits.shape[:-1]`:
        `T^2 * (beta * inter_i + gamma * intra_i)`, `inter_i = 1 - pearson_c(p^S_i, p^T_i)`.

    Raises:
        ValueError: for inputs of rank < 2.

    Example:
        >>> dist_kd(teacher_logits, student_logits)  # (batch,)

    Reference:
        Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
        NeurIPS 2022 (github.com/hunto/image_classification_sota,
        lib/models/losses/dist_kd.py `DIST`).
        `T^2 * (beta * (1 - mean_i pearson(Y^S_i,:, Y^T_i,:))
        + gamma * (1 - mean_c pearson(Y^S_:,c, Y^T_:,c)))`, `Y = softmax(z / T)`.
    """
    t_logits, s_logits = _f32(teacher_logits), _f32(student_logits)
    _static_rank_at_least(t_logits, 2, "dist_kd", "(batch, ..., classes) logits")
    t = ops.cast(temperature, "float32")
    classes = t_logits.shape[-1]
    y_t = ops.reshape(ops.softmax(t_logits / t, axis=-1), (-1, classes))
    y_s = ops.reshape(ops.softmax(s_logits / t, axis=-1), (-1, classes))
    # inter-class: per row, Pearson over the classes
    a = y_s - ops.mean(y_s, axis=-1, keepdims=True)
    b = y_t - ops.mean(y_t, axis=-1, keepdims=True)
    inter = ops.sum(_one_minus_pearson_terms(a, b, -1, eps), axis=-1)
    # intra-class: per class, Pearson over the rows, split into per-row shares
    a = y_s - ops.mean(y_s, axis=0, keepdims=True)
    b = y_t - ops.mean(y_t, axis=0, keepdims=True)
    rows = ops.cast(ops.shape(a)[0], "float32")
    intra = rows * ops.mean(_one_minus_pearson_terms(a, b, 0, eps), axis=-1)
    values = t * t * (beta * inter + gamma * intra)
    return ops.reshape(values, ops.shape(t_logits)[:-1])


__all__ += ["decoupled_kd", "decoupled_kd_terms", "dist_kd", "standardize_logits"]


# ---------------------------------------------------------------------- top-k soft targets


def _log_mass_outside(scaled_logits, indices):
    """`log sum_{j not in indices} exp(z_j)` per row of `(rows, classes)` `z`, exactly.

    The classes in `indices` (`(rows, k)`, distinct per row) are set to `-inf` by a scatter, so
    the memory is that of the logits (no `(rows, k, classes)` one-hot); at least one class must
    stay outside `indices`.
    """
    rows, k = ops.shape(indices)[0], ops.shape(indices)[1]
    row_ids = ops.repeat(ops.arange(rows, dtype="int32"), k)
    positions = ops.stack([row_ids, ops.reshape(ops.cast(indices, "int32"), (-1,))], axis=1)
    taken = ops.scatter(positions, ops.ones((rows * k,), "float32"), ops.shape(scaled_logits))
    return ops.logsumexp(ops.where(taken > 0, float("-inf"), scaled_logits), axis=-1)


def _check_top_k(k, classes, function: str) -> None:
    if k is not None and classes is not None and k >= classes:
        raise ValueError(
            f"{function} needs top_k < the number of classes (one class at least in the rest "
            f"bucket), got top_k={k} for {classes} classes. Distil the full logits instead "
            "(keras_kd.losses.SoftTargetDistillation)."
        )


def top_k_teacher_targets(teacher_logits, top_k, temperature=4.0):
    """What a top-k cache stores of each teacher output: the k largest logits, their class ids,
    and the softened probability mass of every other class.

    Args:
        teacher_logits: `(batch, classes)` or `(batch, ..., classes)` teacher logits.
        top_k: how many classes to keep, `1 <= top_k < classes`.
        temperature: the softening temperature `T > 0` of the rest mass.

    Returns:
        `(values, indices, rest_mass)`: float32 `(..., top_k)` logits in decreasing order,
        int32 `(..., top_k)` class ids, and float32 `(...)`
        `r = sum_{j not in top-k} softmax(t/T)_j = 1 - sum_{j in top-k} softmax(t/T)_j`,
        computed as `exp(logsumexp_{j not in top-k}(t_j/T) - logsumexp_j(t_j/T))` so a small
        rest mass keeps its relative precision.

    Raises:
        ValueError: for `top_k >= classes`.

    Example:
        >>> values, indices, rest = top_k_teacher_targets(logits, top_k=20, temperature=4.0)
    """
    z = _f32(teacher_logits)
    classes = z.shape[-1]
    _check_top_k(top_k, classes, "top_k_teacher_targets")
    values, indices = ops.top_k(z, top_k, sorted=True)
    indices = ops.cast(indices, "int32")
    flat = ops.reshape(z / ops.cast(temperature, "float32"), (-1, classes))
    log_rest = _log_mass_outside(flat, ops.reshape(indices, (-1, top_k)))
    rest = ops.exp(log_rest - ops.logsumexp(flat, axis=-1))
    return values, indices, ops.reshape(rest, ops.shape(z)[:-1])


def top_k_soft_target_kl(teacher_top_k_logits, teacher_top_k_indices, teacher_rest_mass,
                         student_logits, temperature=4.0):
    """Soft-target KL over the teacher's top-k classes plus one bucket for every other class.

    Both distributions are collapsed to `k + 1` buckets: the teacher's `k` classes and the
    rest. With `K` the teacher's top-k class ids, `v` its top-k logits, `r` its stored rest
    mass (`top_k_teacher_targets`) and `q = softmax(s/T)` the student's full distribution:
    `p_j = (1 - r) * softmax(v/T)_j` for `j` in `K` (exact: the teacher's normaliser over all
    classes is `sum_K exp(v/T) / (1 - r)`), `q_rest = 1 - sum_{j in K} q_j` (computed as
    `exp(logsumexp_{j not in K}(s_j/T) - logsumexp(s/T))`), and the value is
    `T^2 * [sum_{j in K} p_j (log p_j - log q_j) + r (log r - log q_rest)]` (the `r` term is
    0 when `r` is 0). It is at most the full `soft_target_kl`; the difference is `T^2 r` times
    the KL of the two distributions inside the rest bucket, which the top-k cache no longer
    knows. For `r` close to 1 (the top-k hold almost none of the mass) `log(1 - r)` loses
    relative precision in float32.

    Args:
        teacher_top_k_logits: `(batch, k)` (or `(batch, ..., k)`) teacher logits of its top-k
            classes.
        teacher_top_k_indices: their class ids, same shape (integers; a float copy is read
            exactly up to 2^24 classes).
        teacher_rest_mass: `(batch,)` (or `(batch, ...)`) teacher softmax mass at temperature
            `T` outside the top-k, computed from the full logits.
        student_logits: `(batch, classes)` (or `(batch, ..., classes)`) student logits, with
            `k < classes`.
        temperature: softening temperature `T > 0`; must be the one `teacher_rest_mass` was
            computed with.

    Returns:
        float32 tensor of shape `student_logits.shape[:-1]`, per example (or per position).

    Raises:
        ValueError: for `k >= classes`.

    Example:
        >>> values, indices, rest = top_k_teacher_targets(t_logits, 20, 4.0)
        >>> top_k_soft_target_kl(values, indices, rest, s_logits, 4.0)  # (batch,)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (soft
        targets); here the teacher's distribution is truncated to its top-k classes plus one
        rest bucket, so a cache stores `2k + 1` numbers per example instead of `classes`.
        `T^2 * KL([p_K, r] || [q_K, q_rest])`.
    """
    s = _f32(student_logits)
    classes = s.shape[-1]
    values = _f32(teacher_top_k_logits)
    k = values.shape[-1]
    _check_top_k(k, classes, "top_k_soft_target_kl")
    t = ops.cast(temperature, "float32")
    flat_s = ops.reshape(s / t, (-1, classes))
    flat_v = ops.reshape(values / t, (-1, k))
    flat_i = ops.reshape(ops.cast(teacher_top_k_indices, "int32"), (-1, k))
    rest = ops.reshape(_f32(teacher_rest_mass), (-1,))
    log_z = ops.logsumexp(flat_s, axis=-1, keepdims=True)
    log_q_k = ops.take_along_axis(flat_s, flat_i, axis=-1) - log_z
    log_q_rest = _log_mass_outside(flat_s, flat_i) - log_z[:, 0]
    # 1 - r >= 2^-24 keeps log p_K finite if the top-k mass underflowed to 0.
    log_p_k = ops.log_softmax(flat_v, axis=-1) + ops.log1p(-ops.minimum(rest, 1.0 - 2.0**-24))[
        :, None]
    top = ops.sum(ops.exp(log_p_k) * (log_p_k - log_q_k), axis=-1)
    safe_rest = ops.maximum(rest, 1.1754944e-38)  # smallest normal float32
    bucket = ops.where(rest > 0, rest * (ops.log(safe_rest) - log_q_rest), 0.0)
    return ops.reshape(t * t * (top + bucket), ops.shape(s)[:-1])


__all__ += ["top_k_soft_target_kl", "top_k_teacher_targets"]
