"""Benchmark: jitted jaxtl.losses.distillation_loss vs an unfused reference.

Times forward + backward (``jax.value_and_grad`` w.r.t. the student logits) of

* ``jit``: ``jax.jit`` of ``jaxtl.losses.distillation_loss`` with labels, and
* ``eager``: a reference written as separate softmax / log / sum ``jnp`` ops,
  executed eagerly op by op (no ``jit``), as a NumPy-style implementation
  would run.

Reports the median over several repeats after warm-up, the achieved memory
throughput of the jitted version and the speedup. Usage::

  JAX_PLATFORMS=cpu python benchmarks/distill_loss.py [--batch 4096]
      [--classes 1000] [--repeats 10]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import losses


def reference_loss(student, teacher, labels, temperature, alpha):
  """Unfused distillation loss: one jnp op at a time."""
  s = student / temperature
  t = teacher / temperature
  s_max = jnp.max(s, axis=-1, keepdims=True)
  log_q = s - s_max - jnp.log(jnp.sum(jnp.exp(s - s_max), axis=-1,
                                      keepdims=True))
  t_exp = jnp.exp(t - jnp.max(t, axis=-1, keepdims=True))
  p = t_exp / jnp.sum(t_exp, axis=-1, keepdims=True)
  kl = jnp.mean(jnp.sum(p * (jnp.log(p) - log_q), axis=-1))
  z_max = jnp.max(student, axis=-1, keepdims=True)
  log_probs = student - z_max - jnp.log(
      jnp.sum(jnp.exp(student - z_max), axis=-1, keepdims=True))
  ce = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  return alpha * temperature**2 * kl + (1 - alpha) * ce


def median_seconds(fn, repeats, warmup=2):
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--temperature", type=float, default=4.0)
  parser.add_argument("--alpha", type=float, default=0.9)
  args = parser.parse_args()

  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  shape = (args.batch, args.classes)
  student = 3.0 * jax.random.normal(k1, shape, jnp.float32)
  teacher = 3.0 * jax.random.normal(k2, shape, jnp.float32)
  labels = jax.random.randint(k3, (args.batch,), 0, args.classes)
  hyper = dict(temperature=args.temperature, alpha=args.alpha)

  # Teacher and labels are arguments, not closed-over constants, so XLA cannot
  # constant-fold the teacher's softmax at compile time.
  fused = jax.jit(jax.value_and_grad(
      lambda s, t, y: losses.distillation_loss(s, t, y, **hyper)))
  unfused = jax.value_and_grad(
      lambda s, t, y: reference_loss(s, t, y, args.temperature, args.alpha))
  inputs = (student, teacher, labels)

  (v_fused, g_fused), (v_ref, g_ref) = fused(*inputs), unfused(*inputs)
  value_diff = abs(float(v_fused) - float(v_ref))
  grad_diff = float(jnp.max(jnp.abs(g_fused - g_ref)))

  t_fused = median_seconds(lambda: fused(*inputs), args.repeats)
  t_ref = median_seconds(lambda: unfused(*inputs), args.repeats)
  n_bytes = 3 * args.batch * args.classes * 4

  print(f"distillation_loss forward+backward, batch={args.batch} "
        f"classes={args.classes} float32, T={args.temperature} "
        f"alpha={args.alpha}, with labels")
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}; median of {args.repeats} repeats after "
        f"2 warm-up calls")
  print(f"bytes counted: read student + teacher logits, write gradient = "
        f"3 * {args.batch} * {args.classes} * 4 B = {n_bytes / 1e6:.1f} MB")
  print()
  print(f"{'implementation':<34}{'time (ms)':>12}{'GB/s':>10}")
  print(f"{'jit(distillation_loss)':<34}{t_fused * 1e3:>12.3f}"
        f"{n_bytes / t_fused / 1e9:>10.2f}")
  print(f"{'unfused reference, eager':<34}{t_ref * 1e3:>12.3f}"
        f"{n_bytes / t_ref / 1e9:>10.2f}")
  print()
  print(f"speedup (eager / jit): {t_ref / t_fused:.2f}x")
  print(f"agreement: |loss diff| = {value_diff:.2e}, "
        f"max |grad diff| = {grad_diff:.2e}")


if __name__ == "__main__":
  main()
