"""Cost of distillation: the fused loss, and online / cached distillation steps.

Part ``loss``: forward + backward (``jax.value_and_grad`` w.r.t. the student
logits) of

* ``jit``: ``jax.jit`` of ``jaxtl.losses.distillation_loss`` with labels, and
* ``eager``: a reference written as separate softmax / log / sum ``jnp`` ops,
  executed eagerly op by op (no ``jit``), as a NumPy-style implementation
  would run,

at batch 4096 x 1000 classes float32: median time, achieved memory throughput
(student + teacher logits read, gradient written) and the speedup.

Part ``steps``: time per step of the library's real code paths, on one
on-device batch of random uint8 images and labels (``train.shard_batch``),
for a teacher larger than the student (``--setup``: 'cifar', ResNet-18 small
stem teacher / width-0.5 ResNet-18 student at 32x32x3; 'digits', a quick
width-2 / width-0.5 ``cnn`` pair at 8x8x1):

* student step: ``make_train_step(student_def, tx, classification_loss(...))``;
* teacher forward: ``make_predict(teacher.model_def, ...)``, the jitted
  eval-mode forward of the (larger) teacher on the same images;
* online distillation step: ``make_train_step`` with
  ``distill.distillation_loss_fn(..., teachers=[teacher.model_def])``, the
  replicated teacher variables passed as the step's extra argument;
* cached distillation step: the same loss fn without ``teachers``, the batch
  carrying 'teacher_logits' float32 (B, 1, C), the teacher forward's logits
  (what ``distill.cache_teacher_logits`` stores).

Targets: online / (student step + teacher forward) <= 1.1 (running the teacher
inside the step costs no more than running it separately), and cached /
student step <= 1.1 (cached soft targets make a step cost only the student).
Every step starts from the same freshly initialised student, so the first
online and cached losses must agree; their difference is printed. compile s
is the wall time of a first call (trace + compile + one call).

Both parts alternate their measurements (A B .. B A, order flipped every
repeat) after one warm-up round, so machine noise hits all alike; each timed
chunk ends with ``block_until_ready``. Times are medians over repeats, ratios
medians of per-repeat ratios.

Usage (from the repository root):

  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/distill.py
  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/distill.py --part steps \\
      --setup digits --steps 10 --repeats 3
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import classify, distill, losses, optim
from jaxtl import train as train_lib
from jaxtl.models import create_model, num_params

TARGET = 1.1
NUM_CLASSES = 10
OPTIMIZER = {'name': 'momentum', 'learning_rate': 0.05, 'momentum': 0.9, 'nesterov': True,
             'weight_decay': 5e-4, 'schedule': 'constant'}
# (model name, kwargs) of teacher and student per setup, and the default timed
# steps per chunk and repeats (a few minutes in all on a 2-core CPU).
SETUPS = {
    'cifar': dict(image_shape=(32, 32, 3), teacher=('resnet18', {'stem': 'small'}),
                  student=('resnet18', {'stem': 'small', 'width': 0.5}), steps=1, repeats=5),
    'digits': dict(image_shape=(8, 8, 1), teacher=('cnn', {'width': 2.0}),
                   student=('cnn', {'width': 0.5}), steps=20, repeats=7),
}


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


def alternate(runs, repeats):
  """{name: [seconds per call of runs[name]()]}, one round per repeat, order flipped every round."""
  names = list(runs)
  times = {name: [] for name in names}
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      t = time.perf_counter()
      jax.block_until_ready(runs[name]())
      times[name].append(time.perf_counter() - t)
  return times


def bench_loss(args):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  shape = (args.loss_batch, args.classes)
  student = 3.0 * jax.random.normal(k1, shape, jnp.float32)
  teacher = 3.0 * jax.random.normal(k2, shape, jnp.float32)
  labels = jax.random.randint(k3, (args.loss_batch,), 0, args.classes)
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

  runs = {'jit': lambda: fused(*inputs), 'eager': lambda: unfused(*inputs)}
  alternate(runs, 1)
  times = {k: statistics.median(v) for k, v in alternate(runs, args.loss_repeats).items()}
  n_bytes = 3 * args.loss_batch * args.classes * 4

  print(f'== (1) distillation_loss forward+backward, batch={args.loss_batch} '
        f'classes={args.classes} float32, T={args.temperature} alpha={args.alpha}, with labels; '
        f'median of {args.loss_repeats} alternated repeats after 1 warm-up round')
  print(f'bytes counted: read student + teacher logits, write gradient = '
        f'3 * {args.loss_batch} * {args.classes} * 4 B = {n_bytes / 1e6:.1f} MB')
  print(f'{"implementation":<34}{"time (ms)":>12}{"GB/s":>10}')
  for name, label in (('jit', 'jit(distillation_loss)'), ('eager', 'unfused reference, eager')):
    print(f'{label:<34}{times[name] * 1e3:>12.3f}{n_bytes / times[name] / 1e9:>10.2f}')
  print(f'speedup (eager / jit): {times["eager"] / times["jit"]:.2f}x')
  print(f'agreement: |loss diff| = {value_diff:.2e}, max |grad diff| = {grad_diff:.2e}')


def bench_steps(args, mesh):
  setup = SETUPS[args.setup]
  steps, repeats = args.steps or setup['steps'], args.repeats or setup['repeats']
  shape = setup['image_shape']
  rng = np.random.default_rng(0)
  batch = train_lib.shard_batch({
      'image': rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8),
      'label': rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)}, mesh)

  def build(role):
    name, kwargs = setup[role]
    return create_model(name, num_classes=NUM_CLASSES, image_shape=shape, seed=0, **kwargs)

  teacher_model = build('teacher')
  teacher = distill.Teacher.from_model(teacher_model)
  n_params = {'teacher': num_params(teacher_model), 'student': num_params(build('student'))}
  print(f'== (2) distillation steps, setup={args.setup}: ' + ', '.join(
      f'{role} {setup[role][0]} {setup[role][1]} ({n:,} params)' for role, n in n_params.items()))
  teacher_vars = train_lib.replicate(teacher.variables, mesh)
  preprocess = classify.make_preprocess(0.5, 0.5)
  predict = train_lib.make_predict(teacher.model_def, preprocess)
  tx = optim.make_optimizer(OPTIMIZER, total_steps=1_000_000)

  def fresh_state():
    """The replicated initial student state; one per step, as each step donates its state."""
    _, params, frozen, batch_stats = train_lib.split_model(build('student'))
    return train_lib.replicate(train_lib.init_state(params, frozen, batch_stats, tx, seed=0), mesh)

  student_def = train_lib.split_model(build('student'))[0]
  hyper = dict(temperature=args.temperature, alpha=args.alpha)
  make_step = lambda loss_fn: train_lib.make_train_step(student_def, tx, loss_fn, mesh=mesh)

  t = time.perf_counter()
  logits, _ = jax.block_until_ready(predict(teacher_vars, batch['image']))
  compile_s = {'teacher forward': time.perf_counter() - t}
  cached_batch = train_lib.shard_batch(
      {**batch, distill.TEACHER_LOGITS: np.asarray(logits)[:, None]}, mesh)

  def forward_chunk():
    for _ in range(steps):
      out = predict(teacher_vars, batch['image'])
    return out

  def step_chunk(step, state, *inputs):
    def run():
      nonlocal state
      for _ in range(steps):
        state, _ = step(state, *inputs)
      return state
    return run

  step_args = {
      'student step': (make_step(classify.classification_loss(preprocess)), batch),
      'online distillation step': (make_step(distill.distillation_loss_fn(
          preprocess, teachers=[teacher.model_def], **hyper)), batch, teacher_vars),
      'cached distillation step': (make_step(distill.distillation_loss_fn(preprocess, **hyper)),
                                   cached_batch),
  }
  runs, first_loss = {'teacher forward': forward_chunk}, {}
  for name, (step, *inputs) in step_args.items():
    state = fresh_state()
    t = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, *inputs))
    compile_s[name] = time.perf_counter() - t
    first_loss[name] = float(metrics['loss'])
    runs[name] = step_chunk(step, state, *inputs)

  alternate(runs, 1)
  times = alternate(runs, repeats)
  per_step = {name: statistics.median(ts) / steps for name, ts in times.items()}
  ratios = {
      'online / (student step + teacher forward)': [
          o / (s + f) for o, s, f in zip(times['online distillation step'],
                                         times['student step'], times['teacher forward'])],
      'cached / student step': [
          c / s for c, s in zip(times['cached distillation step'], times['student step'])],
  }

  print(f'batch={args.batch} x {"x".join(map(str, shape))} uint8 random images, {NUM_CLASSES} '
        f'classes, T={args.temperature} alpha={args.alpha}, optimizer={OPTIMIZER["name"]}; '
        f'{steps} step(s)/chunk, median of {repeats} alternated repeats after 1 warm-up round')
  print(f'{"measurement":<28}{"compile s":>10}{"ms/step":>11}{"img/s":>9}')
  for name, sec in per_step.items():
    print(f'{name:<28}{compile_s[name]:>10.2f}{sec * 1e3:>11.1f}{args.batch / sec:>9.0f}')
  print(f'{"ratio":<44}{"median":>7}{"(min-max)":>12}  vs <= {TARGET}')
  for name, rs in ratios.items():
    median = statistics.median(rs)
    verdict = 'PASS' if median <= TARGET else 'FAIL'
    print(f'{name:<44}{median:>7.3f}{f"{min(rs):.2f}-{max(rs):.2f}":>12}  {verdict}')
  diff = abs(first_loss['online distillation step'] - first_loss['cached distillation step'])
  print(f'agreement: first-step loss online {first_loss["online distillation step"]:.6f}, '
        f'cached {first_loss["cached distillation step"]:.6f}, |diff| = {diff:.2e}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['loss', 'steps', 'all'], default='all')
  parser.add_argument('--temperature', type=float, default=4.0)
  parser.add_argument('--alpha', type=float, default=0.9)
  parser.add_argument('--loss-batch', type=int, default=4096, help='(1) rows of logits')
  parser.add_argument('--classes', type=int, default=1000, help='(1) columns of logits')
  parser.add_argument('--loss-repeats', type=int, default=10, help='(1) repeats')
  parser.add_argument('--setup', choices=sorted(SETUPS), default='cifar',
                      help='(2) teacher / student / image shape, see SETUPS')
  parser.add_argument('--batch', type=int, default=128, help='(2) global batch size')
  parser.add_argument('--steps', type=int, default=None,
                      help='(2) timed steps per chunk (default per setup)')
  parser.add_argument('--repeats', type=int, default=None,
                      help='(2) chunks per measurement (default per setup)')
  args = parser.parse_args()

  mesh = train_lib.make_mesh()
  print(train_lib.device_summary())
  print(f'config: {vars(args)}')
  if args.part in ('loss', 'all'):
    bench_loss(args)
  if args.part in ('steps', 'all'):
    bench_steps(args, mesh)


if __name__ == '__main__':
  main()
