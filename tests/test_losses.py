"""Tests for jaxtl.losses against float64 NumPy (and PyTorch) references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl import losses

RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------------------
# float64 NumPy reference implementation.
# ----------------------------------------------------------------------------


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = np.max(z, axis=-1, keepdims=True)
  return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def np_softmax(z):
  return np.exp(np_log_softmax(z))


def np_target_probs(targets, num_classes, label_smoothing=0.0):
  targets = np.asarray(targets)
  if np.issubdtype(targets.dtype, np.integer):
    probs = np.eye(num_classes)[targets]
  else:
    probs = targets.astype(np.float64)
  return (1 - label_smoothing) * probs + label_smoothing / num_classes


def np_mean(per_example, where):
  per_example = np.asarray(per_example, np.float64)
  if where is None:
    return per_example.mean()
  return per_example[where].sum() / max(where.sum(), 1)


def np_ce(logits, targets, label_smoothing=0.0, where=None):
  y = np_target_probs(targets, logits.shape[-1], label_smoothing)
  return np_mean(-np.sum(y * np_log_softmax(logits), -1), where)


def np_ce_grad(logits, targets, label_smoothing=0.0, where=None):
  """d CE / d logits = (softmax(z) * sum(y) - y) / N."""
  y = np_target_probs(targets, logits.shape[-1], label_smoothing)
  g = np_softmax(logits) * y.sum(-1, keepdims=True) - y
  if where is None:
    return g / g[..., 0].size
  return g * where[..., None] / max(where.sum(), 1)


def np_kl(s, t, temperature=1.0, where=None):
  p = np_softmax(np.asarray(t, np.float64) / temperature)
  log_p = np_log_softmax(np.asarray(t, np.float64) / temperature)
  log_q = np_log_softmax(np.asarray(s, np.float64) / temperature)
  return np_mean(np.sum(p * (log_p - log_q), -1), where)


def np_soft_grad(s, t, temperature, where=None):
  """d (T^2 KL) / d s = T * (softmax(s/T) - softmax(t/T)) / N."""
  g = temperature * (np_softmax(s / temperature) - np_softmax(t / temperature))
  if where is None:
    return g / g[..., 0].size
  return g * where[..., None] / max(where.sum(), 1)


def np_distill(s, t, labels, temperature, alpha, where=None):
  soft = temperature**2 * np_kl(s, t, temperature, where)
  if labels is None:
    return soft
  return alpha * soft + (1 - alpha) * np_ce(s, labels, where=where)


def np_distill_grad(s, t, labels, temperature, alpha, where=None):
  soft = np_soft_grad(s, t, temperature, where)
  if labels is None:
    return soft
  return alpha * soft + (1 - alpha) * np_ce_grad(s, labels, where=where)


def random_logits(rng, shape, scale=3.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def random_labels(rng, shape, num_classes):
  return rng.integers(0, num_classes, shape).astype(np.int32)


def random_probs(rng, shape):
  return np_softmax(2.0 * rng.standard_normal(shape)).astype(np.float32)


SHAPES = [(6,), (8, 6), (2, 4, 6)]


# ----------------------------------------------------------------------------
# Values and gradients against the NumPy reference.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_matches_numpy(shape, label_smoothing, soft):
  rng = np.random.default_rng(0)
  z = random_logits(rng, shape)
  y = random_probs(rng, shape) if soft else random_labels(rng, shape[:-1],
                                                         shape[-1])
  value, grad = jax.value_and_grad(
      lambda z: losses.softmax_cross_entropy(
          z, y, label_smoothing=label_smoothing))(z)
  assert value.dtype == jnp.float32 and value.shape == ()
  np.testing.assert_allclose(value, np_ce(z, y, label_smoothing), RTOL, ATOL)
  np.testing.assert_allclose(grad, np_ce_grad(z, y, label_smoothing), RTOL,
                             ATOL)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_cross_entropy_any_integer_label_dtype(dtype):
  rng = np.random.default_rng(0)
  z = random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(z, y.astype(dtype)), np_ce(z, y), RTOL,
      ATOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_divergence_matches_numpy(shape, temperature):
  rng = np.random.default_rng(1)
  s, t = random_logits(rng, shape), random_logits(rng, shape)
  value, grad = jax.value_and_grad(
      lambda s: losses.kl_divergence(s, t, temperature=temperature))(s)
  np.testing.assert_allclose(value, np_kl(s, t, temperature), RTOL, ATOL)
  # d KL / d s = (q - p) / (T N) = soft-term gradient / T^3.
  np.testing.assert_allclose(
      grad, np_soft_grad(s, t, temperature) / temperature**2, RTOL, ATOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.9), (2.0, 0.5),
                                               (1.0, 0.0), (3.0, 1.0)])
@pytest.mark.parametrize("with_labels", [True, False])
def test_distillation_loss_matches_numpy(shape, temperature, alpha,
                                         with_labels):
  rng = np.random.default_rng(2)
  s, t = random_logits(rng, shape), random_logits(rng, shape)
  y = random_labels(rng, shape[:-1], shape[-1]) if with_labels else None
  value, grad = jax.value_and_grad(
      lambda s: losses.distillation_loss(
          s, t, y, temperature=temperature, alpha=alpha))(s)
  np.testing.assert_allclose(
      value, np_distill(s, t, y, temperature, alpha), RTOL, ATOL)
  np.testing.assert_allclose(
      grad, np_distill_grad(s, t, y, temperature, alpha), RTOL, ATOL)


def test_distillation_loss_teacher_gradient_matches_finite_differences():
  rng = np.random.default_rng(3)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  grad = jax.grad(lambda t: losses.distillation_loss(s, t, y))(t)
  eps = 1e-6
  expected = np.zeros((8, 6))
  for idx in np.ndindex(8, 6):
    tp, tm = t.astype(np.float64), t.astype(np.float64)
    tp[idx] += eps
    tm[idx] -= eps
    expected[idx] = (np_distill(s, tp, y, 4.0, 0.9) -
                     np_distill(s, tm, y, 4.0, 0.9)) / (2 * eps)
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_soft_targets_and_ensemble_match_numpy():
  rng = np.random.default_rng(4)
  teachers = [random_logits(rng, (8, 6)) for _ in range(3)]
  p = losses.soft_targets(teachers[0].astype(jnp.bfloat16), 2.0)
  assert p.dtype == jnp.float32
  np.testing.assert_allclose(
      p, np_softmax(np.asarray(teachers[0].astype(jnp.bfloat16),
                               np.float64) / 2.0), RTOL, ATOL)
  expected = np.mean([np_softmax(t / 3.0) for t in teachers], axis=0)
  from_list = losses.ensemble_soft_targets(teachers, 3.0)
  from_stack = losses.ensemble_soft_targets(np.stack(teachers), 3.0)
  np.testing.assert_allclose(from_list, expected, RTOL, ATOL)
  np.testing.assert_allclose(from_stack, expected, RTOL, ATOL)
  np.testing.assert_allclose(from_list.sum(-1), 1.0, RTOL)


def test_ensemble_distillation_recipe_has_kl_gradient():
  """T^2 * CE(s/T, ensemble probs) has the gradient of T^2 * KL(ens || s)."""
  rng = np.random.default_rng(5)
  s = random_logits(rng, (8, 6))
  teachers = np.stack([random_logits(rng, (8, 6)) for _ in range(2)])
  temperature = 2.0
  probs = losses.ensemble_soft_targets(teachers, temperature)
  grad = jax.grad(lambda s: temperature**2 * losses.softmax_cross_entropy(
      s / temperature, probs))(s)
  # T^2 KL(p || softmax(s/T)) gradient: T (softmax(s/T) - p) / N.
  expected = temperature * (np_softmax(s / temperature) - probs) / len(s)
  np.testing.assert_allclose(grad, expected, RTOL, ATOL)


def test_accuracy():
  logits = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.0, 3.0],
                     [1.0, 0.5, 0.2]], np.float32)
  labels = np.array([1, 0, 1, 2])
  assert losses.accuracy(logits, labels) == pytest.approx(0.5)
  where = np.array([True, True, False, False])
  assert losses.accuracy(logits, labels, where=where) == pytest.approx(1.0)
  assert losses.accuracy(logits, np.eye(3, dtype=np.float32)[labels]) == (
      pytest.approx(0.5))
  assert losses.accuracy(logits, labels, where=np.zeros(4, bool)) == 0.0
  rng = np.random.default_rng(6)
  z = random_logits(rng, (2, 4, 6))
  y = random_labels(rng, (2, 4), 6)
  acc = losses.accuracy(z.astype(jnp.bfloat16), y)
  assert acc.dtype == jnp.float32
  assert acc == pytest.approx(np.mean(np.argmax(
      np.asarray(z.astype(jnp.bfloat16), np.float32), -1) == y))


# ----------------------------------------------------------------------------
# PyTorch references.
# ----------------------------------------------------------------------------


def _torch_value_and_grad(fn, *arrays):
  torch = pytest.importorskip("torch")
  tensors = [torch.tensor(np.asarray(a, np.float64), requires_grad=True)
             for a in arrays]
  value = fn(*tensors)
  value.backward()
  return value.item(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_matches_torch(label_smoothing, soft):
  torch = pytest.importorskip("torch")
  functional = torch.nn.functional
  rng = np.random.default_rng(7)
  z = random_logits(rng, (8, 6))
  y = random_probs(rng, (8, 6)) if soft else random_labels(rng, (8,), 6)
  torch_y = (torch.tensor(np.asarray(y, np.float64)) if soft
             else torch.tensor(y, dtype=torch.long))
  expected, (expected_grad,) = _torch_value_and_grad(
      lambda z: functional.cross_entropy(
          z, torch_y, label_smoothing=label_smoothing), z)
  value, grad = jax.value_and_grad(
      lambda z: losses.softmax_cross_entropy(
          z, y, label_smoothing=label_smoothing))(z)
  np.testing.assert_allclose(value, expected, RTOL, ATOL)
  np.testing.assert_allclose(grad, expected_grad, RTOL, ATOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_matches_torch(temperature):
  torch = pytest.importorskip("torch")
  functional = torch.nn.functional
  rng = np.random.default_rng(8)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  alpha = 0.7

  def torch_loss(s, t):
    kl = functional.kl_div(functional.log_softmax(s / temperature, -1),
                           functional.softmax(t / temperature, -1),
                           reduction="batchmean")
    ce = functional.cross_entropy(s, torch.tensor(y, dtype=torch.long))
    return alpha * kl * temperature * temperature + (1 - alpha) * ce

  expected, expected_grads = _torch_value_and_grad(torch_loss, s, t)
  value, grads = jax.value_and_grad(
      lambda s, t: losses.distillation_loss(
          s, t, y, temperature=temperature, alpha=alpha), argnums=(0, 1))(s, t)
  np.testing.assert_allclose(value, expected, RTOL, ATOL)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, RTOL, ATOL)

  expected_kl, _ = _torch_value_and_grad(
      lambda s, t: functional.kl_div(
          functional.log_softmax(s / temperature, -1),
          functional.softmax(t / temperature, -1), reduction="batchmean"),
      s, t)
  np.testing.assert_allclose(
      losses.kl_divergence(s, t, temperature=temperature), expected_kl, RTOL,
      ATOL)


# ----------------------------------------------------------------------------
# Numerical stability and reduced precision.
# ----------------------------------------------------------------------------


def test_large_logits_are_stable():
  rng = np.random.default_rng(9)
  s = random_logits(rng, (8, 6), scale=1e4)
  t = random_logits(rng, (8, 6), scale=1e4)
  y = random_labels(rng, (8,), 6)
  for temperature in (1.0, 4.0):
    value, grad = jax.value_and_grad(
        lambda s: losses.distillation_loss(
            s, t, y, temperature=temperature))(s)
    expected = np_distill(s, t, y, temperature, 0.9)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(
        grad, np_distill_grad(s, t, y, temperature, 0.9), RTOL, ATOL)


def test_negative_infinity_masked_classes():
  """-inf classes in teacher and student act as if the class did not exist."""
  rng = np.random.default_rng(10)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 3)  # Labels only hit the first 3 classes.
  y[0] = 0
  s_masked, t_masked = s.copy(), t.copy()
  s_masked[:, 3:] = -np.inf
  t_masked[:, 3:] = -np.inf
  s_masked[0, 1] = t_masked[0, 1] = -np.inf  # And one more in one row.
  keep = np.isfinite(s_masked)

  def distill(s, t):
    return losses.distillation_loss(s, t, y, temperature=2.0, alpha=0.6)

  value, (grad_s, grad_t) = jax.value_and_grad(distill, argnums=(0, 1))(
      s_masked, t_masked)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad_s)) and np.all(np.isfinite(grad_t))
  assert np.all(grad_s[~keep] == 0) and np.all(grad_t[~keep] == 0)
  # Reference: drop the -inf classes (row 0 handled with a large negative).
  s_ref = np.where(keep, s, -1e30)
  t_ref = np.where(keep, t, -1e30)
  np.testing.assert_allclose(value, np_distill(s_ref, t_ref, y, 2.0, 0.6),
                             RTOL, ATOL)
  np.testing.assert_allclose(
      grad_s, np_distill_grad(s_ref, t_ref, y, 2.0, 0.6), RTOL, ATOL)

  for fn in (lambda s: losses.kl_divergence(s, t_masked),
             lambda s: losses.softmax_cross_entropy(s, y),
             lambda s: losses.softmax_cross_entropy(
                 s, np_softmax(t_ref).astype(np.float32))):
    value, grad = jax.value_and_grad(fn)(s_masked)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
  # Gradients w.r.t. soft targets (e.g. a jointly trained teacher) as well.
  grad_p = jax.grad(lambda p: losses.softmax_cross_entropy(s_masked, p))(
      np_softmax(t_ref).astype(np.float32))
  assert np.all(np.isfinite(grad_p))
  np.testing.assert_allclose(
      grad_p, np.where(keep, -np_log_softmax(s_ref), 0) / len(s), RTOL, ATOL)


def test_student_negative_infinity_where_teacher_has_mass_is_infinite():
  s = np.array([[0.0, -np.inf]], np.float32)
  t = np.array([[0.0, 0.0]], np.float32)
  assert losses.kl_divergence(s, t) == np.inf


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
  rng = np.random.default_rng(11)
  s = random_logits(rng, (8, 6)).astype(dtype)
  t = random_logits(rng, (8, 6)).astype(dtype)
  y = random_labels(rng, (8,), 6)
  s32, t32 = s.astype(np.float32), t.astype(np.float32)
  for fn in (lambda s, t: losses.distillation_loss(s, t, y),
             lambda s, t: losses.kl_divergence(s, t, temperature=2.0),
             lambda s, t: losses.softmax_cross_entropy(s, y, label_smoothing=.1),
             lambda s, t: losses.softmax_cross_entropy(
                 s, jax.nn.softmax(t.astype(jnp.float32)).astype(dtype))):
    low, high = fn(jnp.asarray(s), jnp.asarray(t)), fn(s32, t32)
    assert low.dtype == jnp.float32
    # The inputs are the same numbers, so only float32 rounding differs.
    np.testing.assert_allclose(low, high, rtol=1e-6, atol=1e-7)
    grad = jax.grad(fn)(jnp.asarray(s), jnp.asarray(t))
    assert grad.dtype == dtype and np.all(np.isfinite(np.float32(grad)))


# ----------------------------------------------------------------------------
# Masking with `where`.
# ----------------------------------------------------------------------------


def _all_losses(y):
  return {
      "ce": lambda s, t, **kw: losses.softmax_cross_entropy(s, y, **kw),
      "ce_smooth": lambda s, t, **kw: losses.softmax_cross_entropy(
          s, y, label_smoothing=0.1, **kw),
      "ce_soft": lambda s, t, **kw: losses.softmax_cross_entropy(
          s, jax.nn.softmax(t), **kw),
      "kl": lambda s, t, **kw: losses.kl_divergence(
          s, t, temperature=2.0, **kw),
      "distill": lambda s, t, **kw: losses.distillation_loss(s, t, y, **kw),
      "distill_soft_only": lambda s, t, **kw: losses.distillation_loss(
          s, t, **kw),
  }


@pytest.mark.parametrize("name", list(_all_losses(None)))
def test_where_equals_loss_on_unmasked_subset(name):
  rng = np.random.default_rng(12)
  s, t = random_logits(rng, (2, 4, 6)), random_logits(rng, (2, 4, 6))
  y = random_labels(rng, (2, 4), 6)
  where = rng.random((2, 4)) < 0.6
  fn = _all_losses(y)[name]
  # Garbage in the padded entries must not leak into values or gradients.
  s_pad = np.where(where[..., None], s, np.nan).astype(np.float32)
  t_pad = np.where(where[..., None], t, -np.inf).astype(np.float32)
  value, grad = jax.value_and_grad(
      lambda s: fn(s, t_pad, where=where))(s_pad)

  y_sub = y[where]
  sub_fn = _all_losses(y_sub)[name]
  expected, expected_grad = jax.value_and_grad(
      lambda s: sub_fn(s, t[where]))(s[where])
  np.testing.assert_allclose(value, expected, RTOL, ATOL)
  assert np.all(grad[~where] == 0)
  np.testing.assert_allclose(grad[where], expected_grad, RTOL, ATOL)


@pytest.mark.parametrize("name", list(_all_losses(None)))
def test_all_false_where_gives_zero(name):
  rng = np.random.default_rng(13)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  fn = _all_losses(random_labels(rng, (8,), 6))[name]
  where = np.zeros(8, bool)
  value, grads = jax.value_and_grad(
      lambda s, t: fn(s, t, where=where), argnums=(0, 1))(s, t)
  assert value == 0.0 and value.dtype == jnp.float32
  assert all(np.all(g == 0) for g in grads)


def test_numpy_reference_where():
  """The masked means also agree with the NumPy reference directly."""
  rng = np.random.default_rng(14)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  where = np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)
  value, grad = jax.value_and_grad(
      lambda s: losses.distillation_loss(s, t, y, where=where))(s)
  np.testing.assert_allclose(
      value, np_distill(s, t, y, 4.0, 0.9, where), RTOL, ATOL)
  np.testing.assert_allclose(
      grad, np_distill_grad(s, t, y, 4.0, 0.9, where), RTOL, ATOL)


# ----------------------------------------------------------------------------
# Transformations and shapes.
# ----------------------------------------------------------------------------


def test_jit_with_traced_hyperparameters():
  rng = np.random.default_rng(15)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  where = np.arange(8) < 6

  @jax.jit
  def fn(s, t, temperature, alpha):
    return jax.value_and_grad(losses.distillation_loss)(
        s, t, y, temperature=temperature, alpha=alpha, where=where)

  value, grad = fn(s, t, 3.0, 0.25)
  np.testing.assert_allclose(
      value, np_distill(s, t, y, 3.0, 0.25, where), RTOL, ATOL)
  np.testing.assert_allclose(
      grad, np_distill_grad(s, t, y, 3.0, 0.25, where), RTOL, ATOL)
  smooth = jax.jit(lambda s, e: losses.softmax_cross_entropy(
      s, y, label_smoothing=e))(s, 0.3)
  np.testing.assert_allclose(smooth, np_ce(s, y, 0.3), RTOL, ATOL)


def test_vmap_matches_loop():
  rng = np.random.default_rng(16)
  s, t = random_logits(rng, (2, 4, 6)), random_logits(rng, (2, 4, 6))
  y = random_labels(rng, (2, 4), 6)
  where = np.array([[1, 1, 0, 1], [0, 0, 0, 0]], bool)

  def fn(s, t, y, where):
    return losses.distillation_loss(s, t, y, temperature=2.0, where=where)

  batched = jax.jit(jax.vmap(jax.value_and_grad(fn)))(s, t, y, where)
  for i in range(2):
    value, grad = jax.value_and_grad(fn)(s[i], t[i], y[i], where[i])
    np.testing.assert_allclose(batched[0][i], value, RTOL, ATOL)
    np.testing.assert_allclose(batched[1][i], grad, RTOL, ATOL)
  np.testing.assert_allclose(
      batched[0], [np_distill(s[i], t[i], y[i], 2.0, 0.9, where[i])
                   for i in range(2)], RTOL, ATOL)


@pytest.mark.parametrize("name", list(_all_losses(None)))
def test_leading_shape_equals_flattened(name):
  rng = np.random.default_rng(17)
  s, t = random_logits(rng, (2, 4, 6)), random_logits(rng, (2, 4, 6))
  y = random_labels(rng, (2, 4), 6)
  where = rng.random((2, 4)) < 0.7
  value = _all_losses(y)[name](s, t, where=where)
  flat = _all_losses(y.reshape(8))[name](
      s.reshape(8, 6), t.reshape(8, 6), where=where.reshape(8))
  np.testing.assert_allclose(value, flat, RTOL, ATOL)


def test_single_example_without_batch_axes():
  rng = np.random.default_rng(18)
  s, t = random_logits(rng, (6,)), random_logits(rng, (6,))
  np.testing.assert_allclose(
      losses.distillation_loss(s, t, np.int32(2), temperature=2.0, alpha=0.5),
      np_distill(s[None], t[None], np.array([2]), 2.0, 0.5), RTOL, ATOL)


# ----------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------


def test_distillation_properties():
  rng = np.random.default_rng(19)
  s, t = random_logits(rng, (8, 6)), random_logits(rng, (8, 6))
  y = random_labels(rng, (8,), 6)
  np.testing.assert_allclose(
      losses.distillation_loss(s, t, y, alpha=0.0),
      losses.softmax_cross_entropy(s, y), RTOL, ATOL)
  np.testing.assert_allclose(
      losses.distillation_loss(s, t, y, temperature=3.0, alpha=1.0),
      9.0 * losses.kl_divergence(s, t, temperature=3.0), RTOL, ATOL)
  np.testing.assert_allclose(
      losses.distillation_loss(s, t, temperature=3.0, alpha=0.2),
      9.0 * losses.kl_divergence(s, t, temperature=3.0), RTOL, ATOL)
  assert losses.kl_divergence(s, s, temperature=2.0) == 0.0
  assert losses.distillation_loss(s, s) == 0.0
  for seed in range(5):
    rng = np.random.default_rng(100 + seed)
    kl = losses.kl_divergence(random_logits(rng, (8, 6)),
                              random_logits(rng, (8, 6)))
    assert kl > 0.0
  # CE with soft targets = KL + teacher entropy.
  p = np_softmax(t)
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(s, p.astype(np.float32)),
      np_kl(s, t) - np.mean(np.sum(p * np.log(p), -1)), RTOL, ATOL)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


LOGITS = np.zeros((4, 3), np.float32)
LABELS = np.zeros((4,), np.int32)


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.float32(-2.0),
                                         float("inf"), float("nan")])
def test_invalid_temperature(temperature):
  for fn in (lambda: losses.kl_divergence(LOGITS, LOGITS,
                                          temperature=temperature),
             lambda: losses.distillation_loss(LOGITS, LOGITS, LABELS,
                                              temperature=temperature),
             lambda: losses.soft_targets(LOGITS, temperature),
             lambda: losses.ensemble_soft_targets([LOGITS], temperature)):
    with pytest.raises(ValueError, match=r"temperature must be .*got"):
      fn()


def test_temperature_error_names_value():
  with pytest.raises(ValueError, match=r"temperature.*-0\.5"):
    losses.distillation_loss(LOGITS, LOGITS, temperature=-0.5)
  with pytest.raises(ValueError, match=r"temperature must be a scalar"):
    losses.kl_divergence(LOGITS, LOGITS, temperature=np.ones(4))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, np.float64(2.0)])
def test_invalid_alpha(alpha):
  with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got"):
    losses.distillation_loss(LOGITS, LOGITS, LABELS, alpha=alpha)
  with pytest.raises(ValueError, match="alpha"):
    losses.distillation_loss(LOGITS, LOGITS, alpha=alpha)


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.0, 3.0])
def test_invalid_label_smoothing(label_smoothing):
  with pytest.raises(ValueError, match=rf"label_smoothing.*{label_smoothing}"):
    losses.softmax_cross_entropy(LOGITS, LABELS,
                                 label_smoothing=label_smoothing)


def test_mismatched_shapes():
  with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(4, 5\)"):
    losses.kl_divergence(LOGITS, np.zeros((4, 5), np.float32))
  with pytest.raises(ValueError, match=r"same shape"):
    losses.distillation_loss(LOGITS, np.zeros((2, 3), np.float32), LABELS)
  with pytest.raises(ValueError, match=r"Integer labels .*\(4,\).*\(5,\)"):
    losses.softmax_cross_entropy(LOGITS, np.zeros(5, np.int32))
  with pytest.raises(ValueError, match=r"Integer labels"):
    losses.softmax_cross_entropy(LOGITS, np.zeros((4, 3), np.int32))
  with pytest.raises(ValueError, match=r"Probability targets .*\(4, 3\)"):
    losses.softmax_cross_entropy(LOGITS, np.zeros(4, np.float32))
  with pytest.raises(ValueError, match=r"Integer labels"):
    losses.distillation_loss(LOGITS, LOGITS, np.zeros((4, 1), np.int32))
  with pytest.raises(ValueError, match=r"Integer labels"):
    losses.accuracy(LOGITS, np.zeros(3, np.int32))
  with pytest.raises(ValueError, match=r"same shape"):
    losses.ensemble_soft_targets([LOGITS, np.zeros((4, 2))], 1.0)
  with pytest.raises(ValueError, match=r"\(K, \.\.\., C\)"):
    losses.ensemble_soft_targets(np.zeros(3, np.float32), 1.0)
  with pytest.raises(ValueError, match=r"scalar"):
    losses.softmax_cross_entropy(np.float32(1.0), LABELS)


def test_bad_where():
  for where in (np.ones(3, bool), np.ones((4, 3), bool), np.ones((1, 4), bool)):
    with pytest.raises(ValueError, match=r"where must have shape .*\(4,\)"):
      losses.distillation_loss(LOGITS, LOGITS, LABELS, where=where)
    with pytest.raises(ValueError, match=r"where must have shape"):
      losses.accuracy(LOGITS, LABELS, where=where)
  with pytest.raises(TypeError, match=r"boolean mask.*float32"):
    losses.softmax_cross_entropy(LOGITS, LABELS,
                                 where=np.ones(4, np.float32))


def test_shape_errors_raise_at_trace_time():
  fn = jax.jit(lambda s, t: losses.distillation_loss(s, t, LABELS))
  with pytest.raises(ValueError, match="same shape"):
    fn.lower(LOGITS, np.zeros((4, 2), np.float32))


def test_bad_dtypes():
  with pytest.raises(TypeError, match=r"logits must have a floating dtype"):
    losses.softmax_cross_entropy(np.zeros((4, 3), np.int32), LABELS)
  with pytest.raises(TypeError, match=r"integer labels or floating"):
    losses.softmax_cross_entropy(LOGITS, np.zeros(4, bool))
