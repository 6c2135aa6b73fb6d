"""Throughput of jitted ``jaxtl.randaugment.randaugment_batch`` vs PIL.

Two JAX columns: the default ``vmap`` (every op evaluated for every example,
then selected) and ``sequential=True`` (``lax.map``, only the chosen ops).

The PIL baseline applies the same ops (PIL definitions, same level mapping)
image by image in a Python loop, with the op choices, levels and signs drawn
by ``jaxtl.randaugment.sample_ops`` from the same per-example keys, i.e. the
ops the JAX version selects. Inputs are random uint8 images; times are the
median of ``--repeats`` runs after a compile / warm-up run, with
``block_until_ready`` on the JAX side and array <-> PIL conversion included
on the PIL side.

Usage (from the repository root):

PYTHONPATH=. python benchmarks/randaugment.py --sizes 32 224 --num-ops 2
"""

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from jaxtl import randaugment as ra
from jaxtl.randaugment_pil import pil_randaugment_batch


def median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def benchmark(size, batch_size, args):
  """Returns images/s of (jax vmap, jax lax.map, PIL) for one image size."""
  config = dict(num_ops=args.num_ops, magnitude=args.magnitude,
                random_magnitude=args.random_magnitude)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  key = jax.random.key(0)

  device_images = jax.device_put(images)
  rates = []
  for sequential in (False, True):
    augment = jax.jit(functools.partial(
        ra.randaugment_batch, sequential=sequential, fill=args.fill, **config))
    augment(key, device_images).block_until_ready()  # Compile.
    seconds = median_seconds(
        lambda: augment(key, device_images).block_until_ready(), args.repeats)
    rates.append(batch_size / seconds)

  keys = jax.random.split(key, batch_size)
  policy = jax.vmap(functools.partial(ra.sample_ops, **config))(keys)
  policy = tuple(np.asarray(p) for p in policy)
  pil_randaugment_batch(images[:2], [p[:2] for p in policy], args.fill)
  seconds = median_seconds(
      lambda: pil_randaugment_batch(images, policy, args.fill),
      args.pil_repeats)
  return rates + [batch_size / seconds]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 64],
                      help="one batch size per image size")
  parser.add_argument("--num-ops", type=int, default=2)
  parser.add_argument("--magnitude", type=float, default=10.0)
  parser.add_argument("--random-magnitude", action="store_true")
  parser.add_argument("--fill", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--pil-repeats", type=int, default=3)
  args = parser.parse_args()
  if len(args.sizes) != len(args.batch_sizes):
    parser.error("--sizes and --batch-sizes need the same length")

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind}); num_ops={args.num_ops}, "
        f"magnitude={args.magnitude:g}, "
        f"random_magnitude={args.random_magnitude}")
  header = (f"{'image':>11} {'batch':>5} {'vmap img/s':>11} "
            f"{'map img/s':>11} {'PIL img/s':>10} {'vmap/PIL':>8} "
            f"{'map/PIL':>8}")
  print(header)
  print("-" * len(header))
  for size, batch_size in zip(args.sizes, args.batch_sizes):
    vmap_rate, map_rate, pil_rate = benchmark(size, batch_size, args)
    print(f"{f'{size}x{size}x3':>11} {batch_size:>5} {vmap_rate:>11.1f} "
          f"{map_rate:>11.1f} {pil_rate:>10.1f} {vmap_rate / pil_rate:>8.2f} "
          f"{map_rate / pil_rate:>8.2f}")

if __name__ == "__main__":
  main()
