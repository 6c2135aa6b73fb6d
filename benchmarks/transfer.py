"""Step cost of transfer learning: full fine-tuning vs head-only vs cached-feature linear probe.

For one model (default ResNet-18 with the small-image stem, 10 classes) on
CIFAR-sized 32x32x3 uint8 random images at one batch size, three modes:

* full: fine-tuning everything, ``transfer.transfer_rules(model,
  backbone_lr=0.1)`` (backbone at 0.1x the head's learning rate);
* head: head-only training through the frozen backbone,
  ``transfer_rules(model, trainable_stages=1)``: the backbone's params sit in
  ``state.frozen`` (no gradients, no optimizer state) and its BatchNorm runs
  in eval mode. Target: step time <= 0.5x the full step;
* probe: ``transfer.LinearProbe`` (the head alone) on backbone features
  cached once with ``transfer.extract_features``, with rules
  ``((r'^head/', 1.0),)`` and loss ``classification_loss(transfer._identity)``,
  as ``transfer.train_linear_probe`` trains it. Target: >= 10x faster per
  epoch than full fine-tuning after the first epoch.

An epoch of ``--epoch`` images is ``epoch // batch`` steps in every mode, so
its time is that many median step times and the per-epoch speedup over full
fine-tuning equals the per-step one. The probe's first epoch also pays the
one-off feature extraction of the epoch's images (reported warm: predict is
compiled beforehand on one padded batch, whose time is printed separately).

Also reported: trainable parameters and optimizer state bytes (``x.nbytes``
summed over ``jax.tree.leaves(state.opt_state)``), with and without freezing.

Every mode is built as ``classify.train_model`` builds it: ``split_model`` ->
``lr_multipliers`` -> ``make_optimizer`` -> ``init_state`` -> ``replicate``
-> ``make_train_step(model_def, tx, loss_fn, mesh=mesh)``; each mode starts
from its own freshly built model (same seed), since the step donates its
state. An epoch of batches is put on device once and cycled, so the step is
timed, not the input pipeline.

The modes alternate in chunks (full head probe, then probe head full, ...)
after one warm-up chunk each, so machine noise hits all alike; each chunk
ends with ``block_until_ready`` on the state. Step times are medians over
``--repeats`` chunks; ratios are medians of the per-repeat ratios.

Usage (from the repository root):

  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/transfer.py
  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/transfer.py \\
      --model cnn --epoch 512 --steps 5 --repeats 3
"""

import argparse
import itertools
import statistics
import time

import jax
import numpy as np

from jaxtl import classify, config as config_lib, data, optim, transfer
from jaxtl import train as train_lib
from jaxtl.models import create_model

TARGET_HEAD = 0.5    # head-only step / full step: at most
TARGET_PROBE = 10.0  # full epoch / probe epoch: at least
NUM_CLASSES = 10
OPTIMIZER = {'name': 'momentum', 'learning_rate': 0.05, 'momentum': 0.9, 'nesterov': True,
             'weight_decay': 5e-4, 'schedule': 'constant'}
# Full / head steps per chunk when --steps is not given: a ResNet-18 full step
# at batch 128 takes ~10 s on a loaded 2-core CPU, so its default run stays
# within a few minutes.
DEFAULT_STEPS = {'cnn': 10, 'resnet18': 1}
DEFAULT_REPEATS = {'cnn': 5, 'resnet18': 5}


class Mode:
  """One real train step with its state, cycling over on-device batches."""

  def __init__(self, net, rules, loss_fn, batches, mesh):
    model_def, params, frozen, batch_stats = train_lib.split_model(net, rules)
    tx = optim.make_optimizer(OPTIMIZER, total_steps=1_000_000,
                              multipliers=optim.lr_multipliers(rules, params))
    self.state = train_lib.replicate(
        train_lib.init_state(params, frozen, batch_stats, tx, seed=0), mesh)
    self.step = train_lib.make_train_step(model_def, tx, loss_fn, mesh=mesh)
    self.trainable = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.frozen = sum(x.size for x in jax.tree.leaves(self.state.frozen))
    self.opt_bytes = sum(x.nbytes for x in jax.tree.leaves(self.state.opt_state))
    self.batches = itertools.cycle(batches)
    self.compile_s = self.run(1)  # trace + XLA compile + one step
    self.step_s, self.ratios = [], []  # per chunk: step seconds, / the full step

  def run(self, k: int) -> float:
    """Seconds for k steps."""
    t = time.perf_counter()
    for _ in range(k):
      self.state, self.metrics = self.step(self.state, next(self.batches))
    jax.block_until_ready(self.state)
    return time.perf_counter() - t


def on_device(fields: dict, steps: int, batch: int, mesh) -> list:
  """`steps` consecutive batches of `fields`, sharded onto the mesh."""
  batches = [train_lib.shard_batch({k: v[i * batch:(i + 1) * batch] for k, v in fields.items()},
                                   mesh) for i in range(steps)]
  return jax.block_until_ready(batches)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet18', choices=['resnet18', 'cnn'])
  parser.add_argument('--batch', type=int, default=128, help='global batch size')
  parser.add_argument('--epoch', type=int, default=1024, help='images per epoch (N)')
  parser.add_argument('--steps', type=int, default=None,
                      help=f'full / head steps per chunk (default per model: {DEFAULT_STEPS})')
  parser.add_argument('--probe-steps', type=int, default=None,
                      help='probe steps per chunk (default: one epoch)')
  parser.add_argument('--repeats', type=int, default=None,
                      help=f'chunks per mode (default per model: {DEFAULT_REPEATS})')
  parser.add_argument('--image-size', type=int, default=32)
  args = parser.parse_args()
  if args.epoch < args.batch:
    parser.error(f'--epoch {args.epoch} must be >= --batch {args.batch}')
  epoch_steps = args.epoch // args.batch
  steps = args.steps or DEFAULT_STEPS[args.model]
  probe_steps = args.probe_steps or epoch_steps
  repeats = args.repeats or DEFAULT_REPEATS[args.model]
  image_shape = (args.image_size, args.image_size, 3)

  mesh = train_lib.make_mesh()
  config = config_lib.base_config()
  print(train_lib.device_summary())
  print(f'config: model={args.model} image={"x".join(map(str, image_shape))} uint8 (random) '
        f'classes={NUM_CLASSES} batch={args.batch} epoch={args.epoch} images ({epoch_steps} steps) '
        f'steps/chunk full,head={steps} probe={probe_steps} repeats={repeats} '
        f'optimizer={OPTIMIZER["name"]} eval_batch_size={config.eval_batch_size}')

  kwargs = {'stem': 'small'} if args.model.startswith('resnet') else {}
  new_net = lambda: create_model(args.model, num_classes=NUM_CLASSES, image_shape=image_shape,
                                 seed=0, **kwargs)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.epoch, *image_shape), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, args.epoch).astype(np.int32)
  batches = on_device({'image': images, 'label': labels}, epoch_steps, args.batch, mesh)
  image_loss = classify.classification_loss(classify.make_preprocess(0.5, 0.5))

  net = new_net()
  full = Mode(net, transfer.transfer_rules(net, backbone_lr=0.1), image_loss, batches, mesh)
  net = new_net()
  head = Mode(net, transfer.transfer_rules(net, trainable_stages=1), image_loss, batches, mesh)

  net, source = new_net(), data.ArraySource(image=images, label=labels)
  t = time.perf_counter()  # compile predict on one image (padded to the same eval batch shape)
  transfer.extract_features(config, net, data.ArraySource(image=images[:1], label=labels[:1]), mesh)
  extract_compile_s = time.perf_counter() - t
  t = time.perf_counter()
  features = transfer.extract_features(config, net, source, mesh)
  extract_s = time.perf_counter() - t
  probe = Mode(transfer.LinearProbe(net), ((r'^head/', 1.0),),
               classify.classification_loss(transfer._identity),
               on_device({'image': features, 'label': labels}, epoch_steps, args.batch, mesh), mesh)

  modes = {'full': (full, steps), 'head': (head, steps), 'probe': (probe, probe_steps)}
  for mode, k in modes.values():  # warm-up, not timed
    mode.run(k)
  for r in range(repeats):
    order = list(modes.values()) if r % 2 == 0 else list(modes.values())[::-1]
    for mode, k in order:
      mode.step_s.append(mode.run(k) / k)
    for mode, _ in modes.values():
      mode.ratios.append(mode.step_s[-1] / full.step_s[-1])

  for name, (mode, _) in modes.items():
    print(f'  {name}: {mode.trainable:,} trainable + {mode.frozen:,} frozen params, compile '
          f'{mode.compile_s:.2f} s, final loss {float(mode.metrics["loss"]):.3f}')
  print(f'  probe features: {features.shape[1]} per image, extraction of {args.epoch} images '
        f'{extract_s:.2f} s warm (predict compile + 1 batch: {extract_compile_s:.2f} s)')

  num = lambda x: f'{x:.3f}' if x < 10 else f'{x:.0f}'
  header = (f'{"mode":>5} {"trainable":>10} {"opt state B":>12} {"step ms":>9} {"x full step":>11} '
            f'{"epoch s":>8} {"x faster":>8} {"one-off s":>9} {"target":>13} {"(min-max)":>11}  verdict')
  print(header)
  print('-' * len(header))
  for name, (mode, _) in modes.items():
    step_s, speedups = statistics.median(mode.step_s), [1 / x for x in mode.ratios]
    ratio, speedup = statistics.median(mode.ratios), statistics.median(speedups)
    target, spread, verdict = '-', '', ''
    if name == 'head':
      target, values, ok = f'<= {TARGET_HEAD:g}x step', mode.ratios, ratio <= TARGET_HEAD
    elif name == 'probe':
      target, values, ok = f'>= {TARGET_PROBE:g}x epoch', speedups, speedup >= TARGET_PROBE
    if target != '-':
      spread, verdict = f'{num(min(values))}-{num(max(values))}', 'PASS' if ok else 'FAIL'
    one_off = f'{extract_s:.2f}' if mode is probe else '-'
    print(f'{name:>5} {mode.trainable:>10,} {mode.opt_bytes:>12,} {1e3 * step_s:>9.2f} '
          f'{ratio:>11.3g} {epoch_steps * step_s:>8.3f} {num(speedup):>8} {one_off:>9} '
          f'{target:>13} {spread:>11}  {verdict}')


if __name__ == '__main__':
  main()
