"""Throughput of the shared jitted train step, and whether the input pipeline keeps up.

For each row at one batch size: the small CNN on the bundled 8x8x1 digits,
read as ``experiments/train.py`` reads it by default (``data.load(...,
in_memory=True)``: decoded once into an ``ArraySource``; row ``cnn``) and
streamed from the TFDS array_record files, every record decoded on each read
(``in_memory=False``; row ``cnn_stream``); ResNet-18 with the small-image stem
on CIFAR-sized 32x32x3 uint8 images in memory (row ``resnet18``). It reports:

* compile: wall time of the first call of the jitted step (trace + XLA
  compile + one step), blocked with ``block_until_ready``;
* device steps/s and images/s: the jitted step on one batch already on device;
* pipe steps/s: the real input path, ``jaxtl.data.train_iterator`` over the
  source -> ``jaxtl.train.shard_batch`` -> step, as ``jaxtl.loop.fit`` runs it;
* host batches/s: the pipeline alone (``next`` + ``shard_batch``, no step),
  for diagnosis;
* pipe/device: steps/s through the pipeline over steps/s on device; the
  target is >= 0.9 (the input pipeline must not be the bottleneck).

The step is the real one: ``split_model`` -> ``make_optimizer`` ->
``init_state`` -> ``make_train_step(model_def, tx, classification_loss(
make_preprocess(0.5, 0.5)), mesh=mesh)``, with the state ``replicate``-d.

The two measurements alternate in chunks of ``--steps`` steps (order flipped
every repeat, A B B A ...) after warm-up chunks, so machine noise hits both
alike; each chunk ends with ``block_until_ready`` on the state. Reported
steps/s are medians over ``--repeats`` chunks; the ratio is the median of the
per-repeat ratios of adjacent chunks.

Usage (from the repository root):

  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/train_step.py
  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/train_step.py \\
      --rows cnn cnn_stream --batch 32 --steps 10 --repeats 3
"""

import argparse
import statistics
import time

import jax
import numpy as np

from jaxtl import classify, data, optim
from jaxtl import train as train_lib
from jaxtl.models import create_model, num_params

TARGET = 0.9
OPTIMIZER = {'name': 'momentum', 'learning_rate': 0.05, 'momentum': 0.9, 'nesterov': True,
             'weight_decay': 5e-4, 'schedule': 'constant'}
# Timed steps per chunk when --steps is not given: enough that a chunk is much
# longer than the iterator's prefetch buffer for the fast CNN, and that the
# whole default run stays within a few minutes for ResNet-18 on a 2-core CPU.
DEFAULT_STEPS = {'cnn': 100, 'resnet18': 1}
DEFAULT_REPEATS = {'cnn': 7, 'resnet18': 3}
ROWS = ('cnn', 'cnn_stream', 'resnet18')


def make_source(row: str, image_size: int):
  """(source, image_shape, num_classes, description) for `row`."""
  stream = row == 'cnn_stream'
  source, info = data.load('digits', 'train', in_memory=not stream)
  if row.startswith('cnn'):
    kind = 'TFDS array_record, decoded per read' if stream else 'in memory'
    return source, info.image_shape, info.num_classes, f'digits train ({kind}), {len(source)} x 8x8x1'
  arrays = source.fields
  # CIFAR-sized: digits upscaled (nearest) to image_size x image_size, 3 channels, uint8.
  images = arrays['image']                                             # (N, 8, 8, 1)
  idx = np.arange(image_size) * images.shape[1] // image_size
  images = images[:, idx][:, :, idx]
  images = np.ascontiguousarray(np.repeat(images, 3, axis=-1), dtype=np.uint8)
  labels = arrays['label'].astype(np.int32)
  return (data.ArraySource(image=images, label=labels), images.shape[1:], info.num_classes,
          f'ArraySource (digits upscaled), {len(images)} x {image_size}x{image_size}x3 uint8')


def build(model: str, image_shape, num_classes: int, mesh):
  kwargs = {'stem': 'small'} if model.startswith('resnet') else {}
  net = create_model(model, num_classes=num_classes, image_shape=image_shape, seed=0, **kwargs)
  n = num_params(net)
  model_def, params, frozen, batch_stats = train_lib.split_model(net)
  tx = optim.make_optimizer(OPTIMIZER, total_steps=1_000_000)
  state = train_lib.init_state(params, frozen, batch_stats, tx, seed=0)
  state = train_lib.replicate(state, mesh)
  loss_fn = classify.classification_loss(classify.make_preprocess(0.5, 0.5))
  step = train_lib.make_train_step(model_def, tx, loss_fn, mesh=mesh)
  return step, state, n


def bench(row: str, args, mesh):
  model = row.split('_')[0]
  source, image_shape, num_classes, desc = make_source(row, args.image_size)
  step, state, n_params = build(model, image_shape, num_classes, mesh)
  steps = args.steps or DEFAULT_STEPS.get(model, 10)
  repeats = args.repeats or DEFAULT_REPEATS.get(model, 5)
  it = data.train_iterator(source, batch_size=args.batch, seed=0, num_classes=num_classes)
  # The on-device batch goes through the same path, so shapes / dtypes (and
  # hence the compiled executable) are identical in both measurements.
  device_batch = train_lib.shard_batch(next(it), mesh)
  jax.block_until_ready(device_batch)

  t0 = time.perf_counter()
  state, metrics = step(state, device_batch)
  jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - t0

  def run_device(state, k):
    for _ in range(k):
      state, _ = step(state, device_batch)
    return state

  def run_pipe(state, k):
    for _ in range(k):
      state, _ = step(state, train_lib.shard_batch(next(it), mesh))
    return state

  def timed(fn, state, k):
    t = time.perf_counter()
    state = jax.block_until_ready(fn(state, k))
    return state, k / (time.perf_counter() - t)

  # Warm-up (not timed): both paths, so the iterator's threads and buffer are running.
  for fn in (run_device, run_pipe):
    state, _ = timed(fn, state, max(1, min(steps, 3)))

  dev, pipe, ratios = [], [], []
  for r in range(repeats):
    order = (run_device, run_pipe) if r % 2 == 0 else (run_pipe, run_device)
    rates = {}
    for fn in order:
      state, rates[fn] = timed(fn, state, steps)
    dev.append(rates[run_device])
    pipe.append(rates[run_pipe])
    ratios.append(rates[run_pipe] / rates[run_device])

  # The host side alone: how fast the pipeline can produce sharded batches.
  host_n = max(steps, 20)
  t = time.perf_counter()
  for _ in range(host_n):
    jax.block_until_ready(train_lib.shard_batch(next(it), mesh))
  host_rate = host_n / (time.perf_counter() - t)

  dev_sps, pipe_sps = statistics.median(dev), statistics.median(pipe)
  return dict(row=row, desc=desc, params=n_params, steps=steps, repeats=repeats,
              compile_s=compile_s,
              dev_sps=dev_sps, img_s=dev_sps * args.batch, pipe_sps=pipe_sps,
              host_bps=host_rate, ratio=statistics.median(ratios),
              ratio_min=min(ratios), ratio_max=max(ratios),
              loss=float(metrics['loss']), image_shape=image_shape)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--steps', type=int, default=None,
                      help=f'timed steps per chunk (default per model: {DEFAULT_STEPS})')
  parser.add_argument('--repeats', type=int, default=None,
                      help='chunks per measurement, alternating pipeline / on-device '
                      f'(default per model: {DEFAULT_REPEATS})')
  parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=ROWS)
  parser.add_argument('--image-size', type=int, default=32,
                      help='side of the CIFAR-sized images for resnet18')
  args = parser.parse_args()

  mesh = train_lib.make_mesh()
  print(train_lib.device_summary())
  print(f'config: batch={args.batch} repeats={args.repeats or DEFAULT_REPEATS} '
        f'steps/chunk={args.steps or DEFAULT_STEPS} image-size={args.image_size} '
        f'optimizer={OPTIMIZER["name"]}; train_iterator defaults (num_threads=2, prefetch=8)')
  results = []
  for row in args.rows:
    res = bench(row, args, mesh)
    print(f'  {row}: {res["params"]:,} params, {res["desc"]}, steps/chunk={res["steps"]} x {res["repeats"]} repeats, '
          f'final loss {res["loss"]:.3f}', flush=True)
    results.append(res)

  header = (f'{"row":>10} {"image":>8} {"batch":>5} {"compile s":>9} {"dev step/s":>10} '
            f'{"dev img/s":>9} {"pipe step/s":>11} {"host bat/s":>10} {"pipe/dev":>8} '
            f'{"(min-max)":>11}  vs {TARGET}')
  print(header)
  print('-' * len(header))
  for r in results:
    shape = 'x'.join(map(str, r['image_shape']))
    verdict = 'PASS' if r['ratio'] >= TARGET else 'FAIL'
    spread = f'{r["ratio_min"]:.2f}-{r["ratio_max"]:.2f}'
    print(f'{r["row"]:>10} {shape:>8} {args.batch:>5} {r["compile_s"]:>9.2f} '
          f'{r["dev_sps"]:>10.2f} {r["img_s"]:>9.0f} {r["pipe_sps"]:>11.2f} '
          f'{r["host_bps"]:>10.1f} {r["ratio"]:>8.3f} '
          f'{spread:>11}  {verdict}')


if __name__ == '__main__':
  main()
