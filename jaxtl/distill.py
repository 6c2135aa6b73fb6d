"""Knowledge distillation (Hinton et al. 2015): a student learns a frozen teacher's soft targets.

Two ways to feed the teacher, both through the one shared train step
(`jaxtl.train.make_train_step`) with a loss fn from `distillation_loss_fn`:

* online ("function matching", Beyer et al. 2022): the teacher runs inside the
  jitted step, in eval mode and under `stop_gradient`, on the same augmented
  images as the student; its variables arrive through the step's `extra`.
* cached: the teacher's eval-mode logits are computed once over the data set
  (no augmentation, `cache_teacher_logits`) and read from the batch's
  'teacher_logits' field (`TeacherLogitsSource`), so a step costs only the
  student.

Several teachers are combined by averaging their temperature-softened
probabilities (`ensemble_logits`). Labeled examples get the KD + CE loss,
unlabeled ones the pure T^2 KL term (`losses.distillation_loss`), so a few
labels can be mixed with teacher soft targets on the unlabeled rest.

The digits scenario (`run`, `experiments/distill.py`): teacher(s) trained on
the labeled split or loaded, then the same student (same init, batches and
seed) with cross entropy only and distilled for each (temperature, alpha).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtl import classify, data, losses, metrics, pretrained
from jaxtl import config as config_lib
from jaxtl import train as train_lib
from jaxtl.models import Classifier, create_model, num_params

TEACHER_LOGITS = 'teacher_logits'


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: its graph definitions and eval variables (params, frozen, batch_stats)."""
  model_def: train_lib.ModelDef
  variables: tuple[nnx.State, nnx.State, nnx.State]

  @classmethod
  def from_state(cls, model_def: train_lib.ModelDef, state: train_lib.TrainState) -> 'Teacher':
    """The teacher a finished training run gives (EMA weights if kept)."""
    return cls(model_def, train_lib.eval_variables(state))

  @classmethod
  def from_model(cls, model: Classifier) -> 'Teacher':
    model_def, params, frozen, batch_stats = train_lib.split_model(model)
    return cls(model_def, (params, frozen, batch_stats))


def load_teacher(model: Classifier, path: str) -> Teacher:
  """`model` (the teacher's architecture, the student's classes) with every weight from `path`.

  `path`: a jaxtl workdir, checkpoints dir or step dir, or a torchvision /
  timm ResNet file (see `pretrained.read_weights`). Every variable, head
  included, is loaded (`dont_load=()`). Raises ValueError when the weights'
  head predicts another number of classes than `model`.
  """
  weights = pretrained.read_weights(path)
  head = weights.get('head/bias')
  if head is not None and head.shape[0] != model.num_classes:
    raise ValueError(f'The teacher weights {path} predict {head.shape[0]} classes but the '
                     f'student has {model.num_classes}: distillation needs the same classes.')
  pretrained.merge_weights(model, weights, dont_load=())
  return Teacher.from_model(model)


def ensemble_logits(teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Logits whose softmax at `temperature` is the teachers' mean softened probabilities.

  teacher_logits: float (K, ..., C) for K teachers -> float32 (..., C),
  `T * log(mean_k softmax(t_k / T))` (the one teacher's logits when K == 1), so
  that `losses.distillation_loss` of them is KL(ensemble || student).
  """
  if teacher_logits.shape[0] == 1:
    return teacher_logits[0].astype(jnp.float32)
  return temperature * jnp.log(losses.ensemble_soft_targets(teacher_logits, temperature))


def teacher_forward(teachers: Sequence[train_lib.ModelDef], variables: Sequence[tuple],
                    images: jax.Array) -> jax.Array:
  """Eval-mode logits float32 (K, B, C) of K teachers on preprocessed images (B, H, W, C), no gradient."""
  if len(teachers) != len(variables):
    raise ValueError(f'{len(teachers)} teacher definitions but {len(variables)} teacher variable '
                     'sets were passed to the step (as its `extra` arguments).')
  logits = [d.merge(*v, train=False)(images).astype(jnp.float32) for d, v in zip(teachers, variables)]
  return jax.lax.stop_gradient(jnp.stack(logits))


def check_hyperparameters(temperature: float, alpha: float) -> None:
  """Raises the ValueError of `losses.distillation_loss` for a bad temperature or alpha, now."""
  losses.distillation_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32),
                           temperature=temperature, alpha=alpha)


def _parts(batch: Mapping) -> list[Mapping]:
  """A flat batch, or the named sub-batches of a `data.ZipIterator` batch, as a list."""
  return [batch] if 'image' in batch else [batch[k] for k in sorted(batch)]


def distillation_loss_fn(preprocess: Callable, *, temperature: float, alpha: float,
                         teachers: Sequence[train_lib.ModelDef] = ()) -> train_lib.LossFn:
  """Loss fn for `make_train_step`: the student distils K teachers' soft targets.

  A batch is `{'image': uint8 (B, H, W, C), 'label'?: int (B,),
  'teacher_logits'?: float32 (B, K, C)}` or a dict of such sub-batches (e.g.
  `{'labeled': ..., 'unlabeled': ...}` from a `data.ZipIterator`), all passed
  through the student as one batch. A (sub-)batch with labels contributes
  `distillation_loss(s, t, label; T, alpha)` per example, one without the pure
  `T^2 KL`; the loss is the mean over all examples.

  With `teachers` (their eval `ModelDef`s) the loss is online: the step's extra
  arguments are one variables tuple per teacher (`Teacher.variables`), and the
  teachers see the student's augmented input. Without, the batches must carry
  cached 'teacher_logits'.
  """
  check_hyperparameters(temperature, alpha)
  teachers = tuple(teachers)

  def loss_fn(model, batch, rngs, *teacher_variables):
    parts = _parts(batch)
    sizes = np.cumsum([p['image'].shape[0] for p in parts])[:-1]
    images = preprocess(jnp.concatenate([p['image'] for p in parts]), rngs)
    student = model(images, rngs=rngs)
    if teachers:
      teacher = teacher_forward(teachers, teacher_variables, images)
    else:
      teacher = jnp.swapaxes(jnp.concatenate([p[TEACHER_LOGITS] for p in parts]), 0, 1)
    teacher = ensemble_logits(teacher, temperature)
    total, metrics = 0.0, {}
    for part, s, t in zip(parts, jnp.split(student, sizes), jnp.split(teacher, sizes)):
      total += s.shape[0] * losses.distillation_loss(
          s, t, part.get('label'), temperature=temperature, alpha=alpha)
      if 'label' in part:
        metrics['accuracy'] = losses.accuracy(s, part['label'])
    metrics['kd_loss'] = temperature**2 * losses.kl_divergence(student, teacher, temperature=temperature)
    metrics['teacher_agreement'] = losses.accuracy(student, teacher)
    return total / student.shape[0], metrics
  return loss_fn


def cache_teacher_logits(teachers: Sequence[Teacher], source: Sequence[dict], preprocess: Callable,
                         *, batch_size: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """Eval-mode logits float32 (N, K, C) of K teachers over `source` (no augmentation), in order."""
  logits = [train_lib.predict_dataset(train_lib.make_predict(t.model_def, preprocess), t.variables,
                                      source, batch_size=batch_size, mesh=mesh) for t in teachers]
  return np.stack(logits, axis=1)


class TeacherLogitsSource(Sequence[dict]):
  """Records `{key: source[i][key] for key in keys, 'teacher_logits': logits[i] (K, C)}`, lazily."""

  def __init__(self, source: Sequence[dict], logits: np.ndarray, keys: Sequence[str] = ('image', 'label')):
    if len(source) != len(logits):
      raise ValueError(f'{len(logits)} cached teacher logits for {len(source)} records.')
    self.source, self.logits, self.keys = source, logits, tuple(keys)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i):
    record = self.source[int(i)]
    return {**{k: record[k] for k in self.keys}, TEACHER_LOGITS: self.logits[i]}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = data.gather(self.source, indices)
    return {**{k: batch[k] for k in self.keys}, TEACHER_LOGITS: self.logits[indices]}


# ------------------------------------------------------------------ the digits scenario

def validate(config) -> None:
  """Config errors that are cheap to catch before any training."""
  if config.distill.mode not in ('cached', 'online'):
    raise ValueError(f"distill.mode must be 'cached' or 'online', got {config.distill.mode!r}")
  if not config.distill.settings:
    raise ValueError('distill.settings is empty: give at least one (temperature, alpha).')
  for temperature, alpha in config.distill.settings:
    check_hyperparameters(temperature, alpha)
  if not config.teacher.checkpoints and config.teacher.num < 1:
    raise ValueError(f'teacher.num must be >= 1, got {config.teacher.num}')
  classify.make_preprocess(config.data.mean, config.data.std, config.augment)


def _student(config, info, seed):
  s = config.student
  return create_model(s.model, num_classes=info.num_classes, image_shape=info.image_shape,
                      seed=seed, dropout=s.dropout, **s.kwargs)


def _kd_sources(config, split, cache: Callable):
  """Student sources (labeled, unlabeled or None) of `split`; in cached mode with the
  teachers' logits (N, K, C), computed once by `cache(source)`."""
  labeled = split.labeled
  unlabeled = data.ArraySource(image=split.unlabeled.fields['image']) if len(split.unlabeled) else None
  if config.distill.mode == 'online':
    return labeled, unlabeled
  return (TeacherLogitsSource(labeled, cache(labeled)),
          unlabeled and TeacherLogitsSource(unlabeled, cache(unlabeled), keys=('image',)))


def run(config, workdir: str, *, seed: int, mesh=None, log=print) -> list[dict]:
  """Teacher(s), CE-only student and one KD student per setting, for one seed: one dict per row."""
  validate(config)
  mesh = mesh or train_lib.make_mesh()
  split = classify.load_labeled_split(config, seed=seed)
  info, test_source = split.info, split.test
  labeled, unlabeled = split.labeled, split.unlabeled
  test_labels = data.to_arrays(test_source, keys=('label',))['label']
  log(f'seed {seed}: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(test_source)} test')
  preprocess = classify.make_preprocess(config.data.mean, config.data.std, config.augment)
  plain = classify.make_preprocess(config.data.mean, config.data.std)
  ce_loss = classify.classification_loss(preprocess, label_smoothing=config.label_smoothing)
  labeled_batches = lambda: data.train_iterator(labeled, batch_size=config.batch_size, seed=seed,
                                                num_classes=info.num_classes)
  rows = []

  def train(name, model, loss_fn, iterator, num_steps, model_seed, extra=()):
    start = time.perf_counter()
    state, model_def, predict = classify.train_model(
        config, model, loss_fn, iterator, num_steps=num_steps, mesh=mesh, seed=model_seed,
        workdir=os.path.join(workdir, name), extra=extra, desc=name,
        meta=config_lib.run_meta(config, seed=seed, run=name))
    return state, model_def, predict, time.perf_counter() - start

  def report(name, model, test_pred, seconds, temperature=None, alpha=None):
    rows.append({'model': name, 'temperature': temperature, 'alpha': alpha,
                 'params': num_params(model), 'seconds': seconds,
                 'test_accuracy': float(np.mean(test_pred == test_labels)),
                 'agreement': float(np.mean(test_pred == teacher_pred))})
    log(f'{name} T={temperature} alpha={alpha}: test accuracy {100 * rows[-1]["test_accuracy"]:.2f}%, '
        f'agreement with the teacher {100 * rows[-1]["agreement"]:.2f}%')

  # Teacher(s), trained on the labeled set or loaded.
  teachers, start = [], time.perf_counter()
  for k in range(len(config.teacher.checkpoints) or config.teacher.num):
    teacher_model = classify.build_model(config.model, info, seed=seed + 100 * k)
    if config.teacher.checkpoints:
      teachers.append(load_teacher(teacher_model, config.teacher.checkpoints[k]))
    else:
      state, model_def, *_ = train(f'teacher_{k}', teacher_model, ce_loss, labeled_batches(),
                                   config.teacher.steps, seed + 100 * k)
      teachers.append(Teacher.from_state(model_def, state))
  cache = lambda src: cache_teacher_logits(teachers, src, plain,
                                                   batch_size=config.eval_batch_size, mesh=mesh)
  teacher_pred = np.argmax(losses.ensemble_soft_targets(cache(test_source).swapaxes(0, 1), 1.0), -1)
  report('teacher', teacher_model, teacher_pred, time.perf_counter() - start)

  def evaluate(state, predict):
    logits = train_lib.predict_dataset(predict, train_lib.eval_variables(state), test_source,
                                       batch_size=config.eval_batch_size, mesh=mesh)
    return np.argmax(logits, -1)

  # The student, cross entropy on the labeled set only.
  model = _student(config, info, seed)
  state, _, predict, seconds = train('student_ce', model, ce_loss, labeled_batches(),
                                     config.student.steps, seed)
  report('student CE only', model, evaluate(state, predict), seconds)

  # The same student (same init, labeled batches and seed), distilled.
  online = config.distill.mode == 'online'
  extra = tuple(train_lib.replicate(t.variables, mesh) for t in teachers) if online else ()
  kd_labeled, kd_unlabeled = _kd_sources(config, split, cache)
  for temperature, alpha in config.distill.settings:
    iterator = data.train_iterator(kd_labeled, batch_size=config.batch_size, seed=seed,
                                   num_classes=info.num_classes)
    if kd_unlabeled is not None:
      iterator = data.ZipIterator(labeled=iterator, unlabeled=data.train_iterator(
          kd_unlabeled, batch_size=config.batch_size * config.distill.unlabeled_ratio, seed=seed + 1))
    loss_fn = distillation_loss_fn(
        preprocess, temperature=temperature, alpha=alpha,
        teachers=[t.model_def for t in teachers] if online else ())
    model = _student(config, info, seed)
    state, _, predict, seconds = train(f'student_kd_T{temperature:g}_alpha{alpha:g}', model,
                                       loss_fn, iterator, config.student.steps, seed, extra)
    report('student KD', model, evaluate(state, predict), seconds, temperature, alpha)
  return rows


def results_table(config, runs: Mapping[int, list[dict]]) -> str:
  """One row per model of `run` (teacher, CE only, KD per setting), mean +- std over seeds."""
  seeds = list(runs)
  rows = []
  for i, row in enumerate(runs[seeds[0]]):
    per_seed = [runs[s][i] for s in seeds]
    fmt = lambda v: '-' if v is None else f'{v:g}'
    rows.append((row['model'], fmt(row['temperature']), fmt(row['alpha']), f'{row["params"]:,}',
                 metrics.mean_std([r['test_accuracy'] for r in per_seed]),
                 metrics.mean_std([r['agreement'] for r in per_seed]),
                 f'{np.mean([r["seconds"] for r in per_seed]):.1f}'))
  title = (f'Distillation on {config.data.name}, labeled {config.labeled.to_dict()}, '
           f'{config.distill.mode} teacher logits, seeds {tuple(seeds)} (mean +- std, %)')
  return title + '\n' + metrics.table(
      rows, ['model', 'T', 'alpha', 'params', 'test acc', 'agrees w/ teacher', 'train s'])
