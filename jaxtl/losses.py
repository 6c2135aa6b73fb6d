"""Classification and knowledge-distillation losses.

Pure ``jax.numpy`` functions. Conventions shared by every function here:

* The class axis is the last axis of ``logits``; all leading axes are batch
  axes, so ``(C,)``, ``(B, C)`` and ``(B, L, C)`` inputs are all accepted. Every
  loss returns the mean over the batch entries as a scalar.
* ``where`` is an optional boolean (or integer) mask of shape
  ``logits.shape[:-1]``. Only entries where it is true count towards the mean;
  the logits and targets of the other entries are ignored completely (they may
  hold garbage, ``-inf`` or ``NaN`` without affecting values or gradients). If
  no entry is true the result is ``0``.
* Arithmetic is done in at least float32, so bf16 / fp16 inputs give float32
  results (float64 inputs stay float64 when x64 is enabled).
* Logits may be ``-inf`` for classes that are impossible (e.g. masked
  vocabulary entries). A class that has zero target probability contributes
  nothing, and values and gradients stay finite. Target probability on a
  class whose logit is ``-inf`` gives an infinite loss, as it should.
* Hyper-parameters (``temperature``, ``alpha``, ``label_smoothing``) are
  validated with a ``ValueError`` when they are concrete Python / NumPy / JAX
  values; a value traced under ``jit`` cannot be checked. Shape mismatches
  are always reported at trace time.
"""

from collections.abc import Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike


def _float_logits(x: ArrayLike, name: str) -> jax.Array:
  """Returns ``x`` as an array of at least float32 with at least one axis."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
  if x.ndim == 0:
    raise ValueError(
        f"{name} must have a trailing class axis, got a scalar (shape ()).")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_scalar(value, name: str, is_valid, requirement: str) -> None:
  """Checks that a hyper-parameter is a scalar in its valid range."""
  if jnp.ndim(value) != 0:
    raise ValueError(
        f"{name} must be a scalar, got shape {jnp.shape(value)}.")
  if isinstance(value, jax.core.Tracer):
    return
  if not is_valid(float(value)):
    raise ValueError(f"{name} must be {requirement}, got {value!r}.")


def _check_temperature(temperature) -> None:
  _check_scalar(temperature, "temperature",
                lambda t: 0.0 < t < float("inf"), "finite and > 0")


def _mask(where: Optional[ArrayLike],
          batch_shape: tuple[int, ...]) -> Optional[jax.Array]:
  """Validates ``where`` and returns it as a boolean array (or ``None``)."""
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.shape != batch_shape:
    raise ValueError(
        f"where must have shape logits.shape[:-1] = {batch_shape}, got "
        f"{where.shape}.")
  if not (where.dtype == jnp.bool_ or jnp.issubdtype(where.dtype, jnp.integer)):
    raise TypeError(f"where must be a boolean mask, got dtype {where.dtype}.")
  return where.astype(jnp.bool_)


def _zero_masked(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Replaces the rows of ``x`` that ``mask`` excludes with zeros.

  First half of the "double where": the excluded rows can then not produce
  NaN/inf values, so their (zero) cotangents cannot turn into NaN gradients.
  """
  if mask is None:
    return x
  return jnp.where(mask[..., None], x, 0)


def _masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean of ``values`` over the entries where ``mask`` is true (0 if none)."""
  if mask is None:
    return jnp.mean(values)
  total = jnp.sum(jnp.where(mask, values, 0))
  return total / jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)


def _check_targets(targets: ArrayLike, logits: jax.Array) -> jax.Array:
  """Checks integer labels / probability vectors against ``logits``."""
  targets = jnp.asarray(targets)
  if jnp.issubdtype(targets.dtype, jnp.integer):
    if targets.shape != logits.shape[:-1]:
      raise ValueError(
          f"Integer labels must have shape logits.shape[:-1] = "
          f"{logits.shape[:-1]}, got {targets.shape}. Probability targets "
          f"must have a floating dtype.")
  elif jnp.issubdtype(targets.dtype, jnp.floating):
    if targets.shape != logits.shape:
      raise ValueError(
          f"Probability targets must have the shape of logits, "
          f"{logits.shape}, got {targets.shape}. Integer labels must have an "
          f"integer dtype.")
  else:
    raise TypeError(
        f"Targets must be integer labels or floating probabilities, got dtype "
        f"{targets.dtype}.")
  return targets


def _cross_entropy_terms(probs: jax.Array, log_q: jax.Array) -> jax.Array:
  """Returns ``-sum(probs * log_q, -1)`` with ``0 * log 0 = 0``.

  Entries where ``probs == 0`` are excluded with a double ``jnp.where`` so that
  ``log_q = -inf`` there yields neither a NaN value nor a NaN gradient.
  """
  keep = probs != 0
  safe_log_q = jnp.where(keep, log_q, 0)
  return -jnp.sum(jnp.where(keep, probs * safe_log_q, 0), axis=-1)


def softmax_cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    label_smoothing: float = 0.0,
    where: Optional[ArrayLike] = None,
) -> jax.Array:
  r"""Mean softmax cross entropy between logits and labels or soft labels.

  .. math::
    \ell = -\frac{1}{N} \sum_{n} \sum_c y_{nc} \log \mathrm{softmax}(z_n)_c,
    \qquad y = (1 - \epsilon)\, y^{\text{target}} + \epsilon / C,

  with :math:`\epsilon` = ``label_smoothing``, :math:`C` the number of classes
  and :math:`N` the number of unmasked examples. Matches
  ``torch.nn.functional.cross_entropy`` with ``reduction='mean'`` (without
  class weights / ignore_index; use ``where`` instead).

  Args:
    logits: Unnormalized log-probabilities, shape ``(..., C)``, floating dtype.
    targets: Either integer class labels of shape ``(...)`` (any integer
      dtype; out-of-range labels act as an all-zero target, so mask them with
      ``where``) or probability vectors of shape ``(..., C)`` (floating dtype).
    label_smoothing: :math:`\epsilon \in [0, 1)`, also applied to probability
      targets. It puts mass on every class, so classes with a ``-inf`` logit
      make the loss infinite when it is > 0.
    where: Optional boolean mask of shape ``(...)``; false entries are ignored.

  Returns:
    Scalar mean cross entropy, float32 (float64 for float64 logits).

  Raises:
    ValueError: if ``label_smoothing`` is outside ``[0, 1)`` or a shape does
      not match.
  """
  _check_scalar(label_smoothing, "label_smoothing",
                lambda e: 0.0 <= e < 1.0, "in [0, 1)")
  logits = _float_logits(logits, "logits")
  mask = _mask(where, logits.shape[:-1])
  targets = _check_targets(targets, logits)
  if jnp.issubdtype(targets.dtype, jnp.integer):
    probs = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
  else:
    probs = targets.astype(logits.dtype)
  probs = (1 - label_smoothing) * probs + label_smoothing / logits.shape[-1]
  log_q = jax.nn.log_softmax(_zero_masked(logits, mask), axis=-1)
  per_example = _cross_entropy_terms(_zero_masked(probs, mask), log_q)
  return _masked_mean(per_example, mask)


def soft_targets(teacher_logits: ArrayLike, temperature: float) -> jax.Array:
  """Temperature-softened teacher probabilities ``softmax(logits / T)``.

  Args:
    teacher_logits: Shape ``(..., C)``, floating dtype.
    temperature: Softmax temperature ``T > 0``.

  Returns:
    Probabilities of shape ``(..., C)``, float32 (float64 for float64 logits).

  Raises:
    ValueError: if ``temperature`` is not finite and positive.
  """
  _check_temperature(temperature)
  teacher_logits = _float_logits(teacher_logits, "teacher_logits")
  return jax.nn.softmax(teacher_logits / temperature, axis=-1)


def ensemble_soft_targets(
    teacher_logits: Union[ArrayLike, Sequence[ArrayLike]],
    temperature: float,
) -> jax.Array:
  r"""Averages the softened probabilities of several teachers.

  Returns :math:`\frac{1}{K} \sum_k \mathrm{softmax}(t_k / T)`. To distill a
  student from it, use the cross entropy against these probabilities, which
  differs from the KL divergence only by the (constant) ensemble entropy::

    probs = ensemble_soft_targets(teachers, T)
    loss = T**2 * softmax_cross_entropy(student_logits / T, probs)

  Args:
    teacher_logits: ``K`` teachers, either a sequence of arrays of identical
      shape ``(..., C)`` or one array of shape ``(K, ..., C)`` with the
      teachers stacked on the leading axis.
    temperature: Softmax temperature ``T > 0``.

  Returns:
    Probabilities of shape ``(..., C)``, float32 (float64 for float64 logits).

  Raises:
    ValueError: if ``temperature`` is not finite and positive, no teacher is
      given, or the teachers' shapes differ.
  """
  if isinstance(teacher_logits, Sequence):
    if not teacher_logits:
      raise ValueError("ensemble_soft_targets needs at least one teacher.")
    shapes = [jnp.shape(t) for t in teacher_logits]
    if len(set(shapes)) != 1:
      raise ValueError(f"All teacher logits must have the same shape, got "
                       f"{shapes}.")
    teacher_logits = jnp.stack(teacher_logits)
  teacher_logits = jnp.asarray(teacher_logits)
  if teacher_logits.ndim < 2:
    raise ValueError(
        f"Stacked teacher logits must have shape (K, ..., C), got "
        f"{teacher_logits.shape}.")
  return jnp.mean(soft_targets(teacher_logits, temperature), axis=0)


def kl_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: Optional[ArrayLike] = None,
) -> jax.Array:
  r"""KL(teacher || student) between temperature-softened distributions.

  .. math::
    \ell = \frac{1}{N} \sum_n \sum_c p_{nc} (\log p_{nc} - \log q_{nc}),
    \quad p = \mathrm{softmax}(t / T),\; q = \mathrm{softmax}(s / T),

  i.e. :math:`\mathrm{KL}(p \,\|\, q)` summed over classes and averaged over
  the :math:`N` unmasked examples ("batchmean"). It is *not* multiplied by
  :math:`T^2` (:func:`distillation_loss` does that). Equals
  ``F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
  reduction='batchmean')`` in PyTorch.

  Classes where the teacher probability is exactly 0 (e.g. ``-inf`` logits)
  contribute nothing, even when the student logit is ``-inf`` too.

  Args:
    student_logits: Shape ``(..., C)``, floating dtype.
    teacher_logits: Same shape as ``student_logits``, floating dtype.
    temperature: Softmax temperature ``T > 0`` applied to both logits.
    where: Optional boolean mask of shape ``(...)``; false entries are ignored.

  Returns:
    Scalar mean KL divergence, float32 (float64 for float64 logits).

  Raises:
    ValueError: if ``temperature`` is not finite and positive or a shape does
      not match.
  """
  _check_temperature(temperature)
  student_logits = _float_logits(student_logits, "student_logits")
  teacher_logits = _float_logits(teacher_logits, "teacher_logits")
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        f"student_logits and teacher_logits must have the same shape, got "
        f"{student_logits.shape} and {teacher_logits.shape}.")
  mask = _mask(where, student_logits.shape[:-1])
  log_q = jax.nn.log_softmax(
      _zero_masked(student_logits, mask) / temperature, axis=-1)
  log_p = jax.nn.log_softmax(
      _zero_masked(teacher_logits, mask) / temperature, axis=-1)
  p = jnp.exp(log_p)
  keep = p != 0
  log_ratio = jnp.where(keep, log_p, 0) - jnp.where(keep, log_q, 0)
  per_example = jnp.sum(jnp.where(keep, p * log_ratio, 0), axis=-1)
  return _masked_mean(per_example, mask)


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: Optional[ArrayLike] = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    where: Optional[ArrayLike] = None,
) -> jax.Array:
  r"""Knowledge-distillation loss of Hinton et al. (2015).

  .. math::
    \ell = \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(t/T) \,\|\,
      \mathrm{softmax}(s/T)\big) + (1 - \alpha)\,
      \mathrm{CE}(s, \text{labels}).

  The :math:`T^2` factor keeps the gradient of the soft term comparable in
  size across temperatures. The cross entropy uses the untempered student
  logits. With ``labels=None`` the loss is the pure soft-label term
  :math:`T^2\, \mathrm{KL}` and ``alpha`` is ignored (but still validated).

  Note:
    Here ``alpha`` weights the *distillation* (KL) term. Keras' distillation
    example and torchdistill's ``KDLoss`` use the opposite convention, where
    alpha weights the cross entropy with the hard labels; to reproduce their
    setting ``alpha = a`` pass ``alpha = 1 - a`` here.

  Args:
    student_logits: Shape ``(..., C)``, floating dtype.
    teacher_logits: Same shape as ``student_logits``, floating dtype. Wrap it
      in ``jax.lax.stop_gradient`` if the teacher is not being trained.
    labels: Optional integer labels of shape ``(...)`` or probability vectors
      of shape ``(..., C)``, see :func:`softmax_cross_entropy`.
    temperature: Softmax temperature ``T > 0`` of the distillation term.
    alpha: Weight of the distillation term, in ``[0, 1]``.
    where: Optional boolean mask of shape ``(...)``; false entries are ignored.

  Returns:
    Scalar loss, float32 (float64 for float64 logits).

  Raises:
    ValueError: if ``temperature`` is not finite and positive, ``alpha`` is
      outside ``[0, 1]`` or a shape does not match.
  """
  _check_scalar(alpha, "alpha", lambda a: 0.0 <= a <= 1.0, "in [0, 1]")
  soft = temperature**2 * kl_divergence(
      student_logits, teacher_logits, temperature=temperature, where=where)
  if labels is None:
    return soft
  hard = softmax_cross_entropy(student_logits, labels, where=where)
  return alpha * soft + (1 - alpha) * hard


def accuracy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: Optional[ArrayLike] = None,
) -> jax.Array:
  """Mean top-1 accuracy.

  Args:
    logits: Scores of shape ``(..., C)``, floating dtype.
    labels: Integer labels of shape ``(...)``, or probability vectors of shape
      ``(..., C)`` whose argmax is taken as the label.
    where: Optional boolean mask of shape ``(...)``; false entries are ignored.

  Returns:
    Scalar float32 fraction of entries whose argmax equals the label (ties
    resolve to the lowest class index).

  Raises:
    ValueError: if a shape does not match.
  """
  logits = _float_logits(logits, "logits")
  mask = _mask(where, logits.shape[:-1])
  labels = _check_targets(labels, logits)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    labels = jnp.argmax(labels, axis=-1)
  correct = jnp.argmax(logits, axis=-1) == labels
  return _masked_mean(correct.astype(jnp.float32), mask)
