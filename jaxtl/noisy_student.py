"""Noisy Student self-training (Xie et al. 2020), built from the shared pieces.

Round 0 trains a teacher on the labeled set. Each round r >= 1: the teacher,
un-noised (eval mode, EMA weights if kept), pseudo-labels the unlabeled set;
an equal-or-larger student is trained with noise (RandAugment, dropout,
stochastic depth) on labeled + pseudo-labeled batches; the student becomes
the next teacher. Every round lives in `workdir/round_<r>/` with its own
checkpoints, so a killed job resumes inside the round it was in, and
finished rounds are restored, never retrained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl import classify, data, losses, pseudo_label
from jaxtl import config as config_lib
from jaxtl import train as train_lib
from jaxtl.models import num_params


def self_training_loss(preprocess: Callable, *, unlabeled_weight: float):
  """Loss fn over {'labeled': {image, label}, 'unlabeled': {image, target}} batches.

  CE(labeled) + unlabeled_weight * CE(unlabeled, pseudo-label targets), both
  halves noised by `preprocess` and passed through the model in one batch (so
  BatchNorm sees them together, as in the paper).
  """
  def loss_fn(model, batch, rngs):
    labeled, unlabeled = batch['labeled'], batch['unlabeled']
    n = labeled['image'].shape[0]
    images = jnp.concatenate([labeled['image'], unlabeled['image']])
    logits = model(preprocess(images, rngs), rngs=rngs)
    labeled_loss = losses.softmax_cross_entropy(logits[:n], labeled['label'])
    unlabeled_loss = losses.softmax_cross_entropy(logits[n:], unlabeled['target'])
    return labeled_loss + unlabeled_weight * unlabeled_loss, {
        'labeled_loss': labeled_loss, 'unlabeled_loss': unlabeled_loss,
        'accuracy': losses.accuracy(logits[:n], labeled['label'])}
  return loss_fn


@dataclasses.dataclass
class Model:
  """A trained model as a teacher: how to run it and with which variables."""
  predict: Callable
  variables: tuple
  num_params: int
  description: str
  seconds: dict  # 'train' (wall time of fit) and 'input' (of it, waiting for batches).


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _pseudo_labels(config, teacher: Model, unlabeled, mesh, path: str):
  """The round's pseudo-labels, computed once and stored (npz, atomically) in the round dir."""
  if os.path.exists(path):
    with np.load(path) as f:
      return pseudo_label.PseudoLabels(f['indices'], f['targets'], f['confidence'])
  logits = train_lib.predict_dataset(teacher.predict, teacher.variables, unlabeled,
                                     batch_size=config.eval_batch_size, mesh=mesh)
  p = config.pseudo_label
  labels = pseudo_label.pseudo_label(
      logits, mode=p.mode, temperature=p.temperature, label_smoothing=p.label_smoothing,
      threshold=p.threshold, balance=p.balance, per_class=p.per_class)
  if jax.process_index() == 0:
    tmp = f'{path}.tmp.{os.getpid()}.npz'
    np.savez(tmp, indices=labels.indices, targets=labels.targets, confidence=labels.confidence)
    os.replace(tmp, path)
  return labels


def student_kwargs(config, round_index: int) -> tuple[str, dict]:
  """Model name and kwargs of round `round_index`'s student (teacher kwargs + overrides + noise)."""
  name = config.student.model or config.model.name
  base = {} if config.student.model else dict(config.model.kwargs)
  kwargs = {**base, **dict(config.student.kwargs[round_index - 1])}
  kwargs['dropout'] = config.student.dropout
  if config.student.drop_path:
    kwargs['drop_path'] = config.student.drop_path
  return name, kwargs


def validate(config) -> None:
  """Config errors that are cheap to catch before any training."""
  if config.num_rounds < 1:
    raise ValueError(f'num_rounds must be >= 1, got {config.num_rounds}')
  if len(config.student.kwargs) != config.num_rounds:
    raise ValueError(f'student.kwargs has {len(config.student.kwargs)} entries but num_rounds is '
                     f'{config.num_rounds}: give one (possibly empty) dict per round.')
  if config.unlabeled_ratio <= 0:
    raise ValueError(f'unlabeled_ratio must be > 0, got {config.unlabeled_ratio}')
  classify.make_preprocess(config.data.mean, config.data.std, config.student.augment)
  if config.student.growth not in ('any', 'equal_or_larger', 'larger'):
    raise ValueError(f"student.growth must be 'any', 'equal_or_larger' or 'larger', got "
                     f'{config.student.growth!r}')


def check_growth(rule: str, teacher_params: int, student_params: int, round_index: int) -> None:
  ok = {'any': True, 'equal_or_larger': student_params >= teacher_params,
        'larger': student_params > teacher_params}[rule]
  if not ok:
    raise ValueError(f'Round {round_index}: the student has {student_params:,} parameters, the '
                     f'teacher {teacher_params:,}; student.growth={rule!r} forbids that.')


def run(config, workdir: str, *, seed: int, mesh=None, log: Callable = print) -> list[dict]:
  """Teacher + `config.num_rounds` Noisy Student rounds for one seed; one result dict per round."""
  validate(config)
  mesh = mesh or train_lib.make_mesh()
  split = classify.load_labeled_split(config, seed=seed)
  info, test_source, labeled, unlabeled = split.info, split.test, split.labeled, split.unlabeled
  if len(unlabeled) == 0:
    raise ValueError('The unlabeled set is empty: every training example is labeled.')
  hidden = unlabeled.fields['hidden_label']
  evaluate = lambda m: 100 * train_lib.evaluate(m.predict, m.variables, test_source,
                                                batch_size=config.eval_batch_size, mesh=mesh)['accuracy']
  meta = lambda r: config_lib.run_meta(config, seed=seed, round=r)
  log(f'seed {seed}: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(test_source)} test')

  # Round 0: the supervised teacher, trained here or loaded from config.teacher_checkpoint.
  teacher_model = classify.build_model(config.model, info, seed=seed)
  if config.teacher_checkpoint:
    teacher = _load_teacher(config, teacher_model, info)
  else:
    teacher = _train(config, teacher_model, workdir, 0, seed, mesh, meta(0),
                     loss_fn=classify.classification_loss(
                         classify.make_preprocess(config.data.mean, config.data.std, config.augment),
                         label_smoothing=config.label_smoothing),
                     iterator=data.train_iterator(labeled, batch_size=config.batch_size, seed=seed,
                                                  num_classes=info.num_classes),
                     num_steps=config.teacher_steps,
                     description=f'{config.model.name} {dict(config.model.kwargs)}')
  results = [{'round': 0, 'role': 'teacher', 'model': teacher.description,
              'params': teacher.num_params, 'test_accuracy': evaluate(teacher),
              'seconds': teacher.seconds}]
  log(f'round 0 teacher: test accuracy {results[0]["test_accuracy"]:.2f}%')

  for r in range(1, config.num_rounds + 1):
    round_dir = os.path.join(workdir, f'round_{r}')
    os.makedirs(round_dir, exist_ok=True)
    start = time.perf_counter()
    labels = _pseudo_labels(config, teacher, unlabeled, mesh, os.path.join(round_dir, 'pseudo_labels.npz'))
    label_seconds = time.perf_counter() - start
    report = pseudo_label.report(labels, info.num_classes, hidden)
    name, kwargs = student_kwargs(config, r)
    student_model = classify.build_model(config.model, info, seed=seed + r, name=name, **kwargs)
    check_growth(config.student.growth, teacher.num_params, num_params(student_model), r)
    if config.student.init_from_teacher:
      from jaxtl import optim, pretrained
      weights = {p: x for state in teacher.variables
                 for p, x in zip(optim.param_paths(state), jax.tree.leaves(state))}
      pretrained.merge_weights(student_model, weights, dont_load=())
    pseudo_source = pseudo_label.PseudoLabeledSource(unlabeled, labels)
    iterator = data.ZipIterator(
        labeled=data.train_iterator(labeled, batch_size=config.batch_size, seed=seed + 1000 * r,
                                    num_classes=info.num_classes),
        unlabeled=data.train_iterator(pseudo_source, batch_size=config.batch_size * config.unlabeled_ratio,
                                      seed=seed + 1000 * r + 1))
    preprocess = classify.make_preprocess(config.data.mean, config.data.std, config.student.augment)
    student = _train(config, student_model, workdir, r, seed + r, mesh, meta(r),
                     loss_fn=self_training_loss(preprocess, unlabeled_weight=config.unlabeled_ratio),
                     iterator=iterator, num_steps=config.student_steps,
                     description=f'{name} {kwargs}')
    results.append({'round': r, 'role': 'student', 'model': student.description,
                    'params': student.num_params, 'teacher_accuracy': results[-1]['test_accuracy'],
                    'pseudo_label_accuracy': 100 * report['accuracy'],
                    'pseudo_labels_kept': report['kept'], 'unique_kept': report['unique_kept'],
                    'kept_per_class': report['kept_per_class'],
                    'mean_confidence': report['mean_confidence'],
                    'test_accuracy': evaluate(student),
                    'seconds': {**student.seconds, 'pseudo_label': label_seconds}})
    log(f'round {r} student: pseudo-label acc {results[-1]["pseudo_label_accuracy"]:.2f}%, '
        f'test accuracy {results[-1]["test_accuracy"]:.2f}% (teacher {results[-2]["test_accuracy"]:.2f}%)')
    _write_json_atomic(os.path.join(round_dir, 'result.json'), results[-1])
    teacher = student
  return results


def _load_teacher(config, model, info) -> Model:
  """The teacher of round 1 from a jaxtl checkpoint or a torchvision/timm file (all weights)."""
  from jaxtl import pretrained
  count = num_params(model)
  pretrained.load_pretrained(model, config.teacher_checkpoint, dont_load=())
  model_def, params, frozen, batch_stats = train_lib.split_model(model)
  predict = train_lib.make_predict(model_def, classify.make_preprocess(config.data.mean, config.data.std))
  return Model(predict, (params, frozen, batch_stats), count,
               f'{config.model.name} from {config.teacher_checkpoint}', {'train': 0.0, 'input': 0.0})


def _train(config, model, workdir, round_index, seed, mesh, meta, *, loss_fn, iterator, num_steps,
           description) -> Model:
  count = num_params(model)
  iterator = data.TimedIterator(iterator)
  start = time.perf_counter()
  state, _, predict = classify.train_model(
      config, model, loss_fn, iterator, num_steps=num_steps, mesh=mesh, seed=seed, meta=meta,
      workdir=os.path.join(workdir, f'round_{round_index}'), desc=f'round {round_index}')
  seconds = {'train': time.perf_counter() - start, 'input': iterator.seconds}
  return Model(predict, train_lib.eval_variables(state), count, description, seconds)
