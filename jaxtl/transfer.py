"""Transfer learning on the shared train step: freezing, discriminative and layer-wise
learning rates, gradual unfreezing, and a linear probe on cached features.

Everything here produces rule lists `((regex, multiplier | 'frozen'), ...)` for
`jaxtl.optim` / `jaxtl.train.split_model` and trains through
`classify.train_model`; there is no second train step.

* `transfer_rules(model, backbone_lr, layer_decay, trainable_stages)`: one
  rule per layer of `model.layer_groups('block')` (input -> output order from
  the model, not from sorted names). Layer i of 0..depth (stem 0, head depth)
  gets `decay ** (depth - i)`, times `backbone_lr` below the head; layers of
  the stages below the top `trainable_stages` are frozen.
* Gradual unfreezing (ULMFiT): consecutive phases, phase 0 trains the head,
  each next one unfreezes the next stage down. Every phase is its own
  `train_model` call in `workdir/phase_<p>` (so a killed run resumes inside
  its phase) with fresh optimizer state and learning-rate schedule; weights
  and BatchNorm statistics carry forward.
* Linear probe: when the whole backbone is frozen and augmentation is off,
  backbone features are computed once (eval mode, as the frozen backbone runs
  inside the train step) and a `LinearProbe` (the head alone) trains on them;
  the trained head is copied back into the model.

The digits scenario (`run`): pretrain on source classes (a jaxtl checkpoint in
`workdir/pretrain`), load it with `jaxtl.pretrained` without the head, and
transfer to the target classes with k labeled images per class.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import numpy as np
from flax import nnx

from jaxtl import classify, data, metrics, optim, pretrained
from jaxtl import config as config_lib
from jaxtl import train as train_lib
from jaxtl.models import Classifier

METHODS = ('scratch', 'linear_probe', 'finetune')
Phase = tuple[int, Any]  # (num_steps, trainable_stages: int counted from the head, None = all)


# ------------------------------------------------------------------ rules and phases

def transfer_rules(model: Classifier, *, backbone_lr: float = 1.0, layer_decay: float = 1.0,
                   trainable_stages: int | None = None) -> tuple[optim.Rule, ...]:
  """Per-layer rules for `model`: frozen stages, discriminative and layer-wise lr decay.

  Layer i (of `model.layer_groups('block')`, stem 0 ... head depth) gets
  multiplier `layer_decay ** (depth - i)`, times `backbone_lr` unless it is
  the head. With `trainable_stages` = n, only the top n groups of
  `model.layer_groups('stage')` train (1: head only) and the rest is frozen.
  """
  blocks, stages = model.layer_groups('block'), model.layer_groups('stage')
  if trainable_stages is not None and not 1 <= trainable_stages <= len(stages):
    raise ValueError(f'trainable_stages must be in [1, {len(stages)}] (stages incl. the head), '
                     f'got {trainable_stages}')
  if backbone_lr <= 0:
    raise ValueError(f'backbone_lr must be > 0 (freeze with trainable_stages), got {backbone_lr}')
  stage_of = {prefix: s for s, group in enumerate(stages) for prefix in group}
  orphans = [group for group in blocks if group[0] not in stage_of]
  if orphans:
    raise ValueError(f"layer_groups('block') has groups {orphans[:3]} that no layer_groups('stage') "
                     'group contains; both levels must list the same prefixes.')
  first_trainable = 0 if trainable_stages is None else len(stages) - trainable_stages
  scales = optim.layerwise_lr_decay(len(blocks), layer_decay)
  head = len(blocks) - 1
  values = [optim.FROZEN if stage_of[group[0]] < first_trainable
            else scale * (1.0 if i == head else backbone_lr)
            for i, (group, scale) in enumerate(zip(blocks, scales))]
  return optim.group_rules(blocks, values)


def unfreeze_phases(num_stages: int, total_steps: int, every_steps: int) -> list[Phase]:
  """Gradual unfreezing: one more stage every `every_steps` steps, head first.

  Phase p trains the top p + 1 of `num_stages` stage groups (the head is
  one) for `every_steps` steps; the last phase runs to `total_steps`, with
  everything unfrozen if it gets that far. `every_steps` 0: one phase, all
  trainable.
  """
  if every_steps <= 0:
    return [(total_steps, None)]
  n = min(num_stages, -(-total_steps // every_steps))
  steps = [every_steps] * (n - 1) + [total_steps - every_steps * (n - 1)]
  return [(s, None if p + 1 == num_stages else p + 1) for p, s in enumerate(steps)]


# ------------------------------------------------------------------ training

class LinearProbe(nnx.Module):
  """A Classifier's dropout + head on cached features: (B, F) float32 -> logits (B, K).

  Parameter paths ('head/kernel', 'head/bias') equal the Classifier's.
  """

  def __init__(self, model: Classifier):
    self.dropout = nnx.Dropout(model.dropout.rate)
    self.head = nnx.clone(model.head)

  def __call__(self, features, *, rngs: nnx.Rngs | None = None):
    return self.head(self.dropout(features, rngs=rngs))


def _identity(x, rngs=None):
  del rngs
  return x


@functools.lru_cache(maxsize=8)
def _predictor(model_def: train_lib.ModelDef, mean, std):
  """One jitted predict per architecture and normalisation, shared by every run (one compile)."""
  return train_lib.make_predict(model_def, classify.make_preprocess(mean, std))


def _eval_setup(config, model: Classifier, mesh):
  """(predict, replicated eval variables) of `model`."""
  model_def, *variables = train_lib.split_model(model)
  hashable = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
  predict = _predictor(model_def, hashable(config.data.mean), hashable(config.data.std))
  return predict, train_lib.replicate(tuple(variables), mesh)


def accuracy(config, model: Classifier, source, mesh) -> float:
  """Eval-mode top-1 accuracy of `model` on `source` (records with image, label)."""
  predict, variables = _eval_setup(config, model, mesh)
  return train_lib.evaluate(predict, variables, source, batch_size=config.eval_batch_size,
                            mesh=mesh)['accuracy']


def extract_features(config, model: Classifier, source, mesh) -> np.ndarray:
  """Eval-mode backbone features (N, F) float32 of every image in `source`, in order."""
  predict, variables = _eval_setup(config, model, mesh)
  _, features = train_lib.predict_dataset(predict, variables, source, mesh=mesh,
                                          batch_size=config.eval_batch_size, with_features=True)
  return np.asarray(features, np.float32)


def train_linear_probe(config, model: Classifier, labeled, *, num_steps: int, workdir: str,
                       mesh, seed: int, meta: Any = None, desc: str = 'linear probe') -> Classifier:
  """Trains `model.head` on backbone features computed once; updates `model` in place.

  Same optimizer, batches (iterator seed `seed`) and step as training the
  head through the frozen model without augmentation; the features go in the
  batches' 'image' field.
  """
  features = extract_features(config, model, labeled, mesh)
  labels = data.to_arrays(labeled, keys=('label',))['label']
  iterator = data.train_iterator(data.ArraySource(image=features, label=labels),
                                 batch_size=config.batch_size, seed=seed,
                                 num_classes=model.num_classes)
  probe = LinearProbe(model)
  loss_fn = classify.classification_loss(_identity, label_smoothing=config.label_smoothing)
  state, _, _ = classify.train_model(config, probe, loss_fn, iterator, num_steps=num_steps,
                                     workdir=workdir, mesh=mesh, rules=((r'^head/', 1.0),),
                                     seed=seed, meta=meta, desc=desc)
  params, _, _ = train_lib.eval_variables(state)
  nnx.update(model, params)
  return model


def uses_cached_features(config, trainable_stages: int | None) -> bool:
  """A head-only phase without augmentation trains on cached features (if enabled)."""
  return trainable_stages == 1 and config.cache_features and config.augment.name == 'none'


def train_phases(config, model: Classifier, labeled, *, phases: Sequence[Phase], workdir: str,
                 mesh, seed: int, backbone_lr: float = 1.0, layer_decay: float = 1.0,
                 meta: dict | None = None) -> Classifier:
  """Trains `model` in place through `phases` (see `unfreeze_phases`) on `labeled`.

  One phase runs in `workdir`, several in `workdir/phase_<p>`; each is a
  `train_model` call with its own rules and fresh optimizer state, starting
  from the previous phase's eval variables. Phase p's data and rng seed is
  `seed + 1000 * p`.
  """
  loss_fn = classify.classification_loss(
      classify.make_preprocess(config.data.mean, config.data.std, config.augment),
      label_smoothing=config.label_smoothing)
  for p, (num_steps, trainable) in enumerate(phases):
    phase_dir = workdir if len(phases) == 1 else os.path.join(workdir, f'phase_{p}')
    phase_seed = seed + 1000 * p
    cached = uses_cached_features(config, trainable)
    phase_meta = {**(meta or {}), 'phase': p, 'steps': num_steps, 'trainable_stages': trainable,
                  'cached_features': cached}
    desc = f'phase {p}' if len(phases) > 1 else 'train'
    if cached:
      train_linear_probe(config, model, labeled, num_steps=num_steps, workdir=phase_dir, mesh=mesh,
                         seed=phase_seed, meta=phase_meta, desc=desc)
      continue
    rules = transfer_rules(model, backbone_lr=backbone_lr, layer_decay=layer_decay,
                           trainable_stages=trainable)
    iterator = data.train_iterator(labeled, batch_size=config.batch_size, seed=phase_seed,
                                   num_classes=model.num_classes)
    state, _, _ = classify.train_model(config, model, loss_fn, iterator, num_steps=num_steps,
                                       workdir=phase_dir, mesh=mesh, rules=rules, seed=phase_seed,
                                       meta=phase_meta, desc=desc)
    nnx.update(model, *train_lib.eval_variables(state))
  return model


# ------------------------------------------------------------------ the digits scenario

def class_subset(arrays: dict[str, np.ndarray], classes: Sequence[int]) -> data.ArraySource:
  """Records whose label is in `classes`, relabelled to its index in `classes`."""
  classes = list(classes)
  keep = np.isin(arrays['label'], classes)
  labels = np.array([classes.index(c) for c in arrays['label'][keep]], np.int32)
  return data.ArraySource(image=arrays['image'][keep], label=labels)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """max(1, N // batch): k-shot sets may be smaller than one batch."""
  return max(1, num_examples // batch_size)


def with_optimizer(config, **overrides):
  """A copy of `config` with `optimizer` keys (e.g. learning_rate) and top-level keys replaced."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    if key in config.optimizer:
      config.optimizer[key] = value
    else:
      config[key] = value
  return config


def validate(config) -> None:
  """Config errors that are cheap to catch before any training."""
  unknown = [m for m in config.methods if m not in METHODS]
  if not config.methods or unknown or len(set(config.methods)) != len(config.methods):
    raise ValueError(f'methods must be distinct names from {METHODS}, got {tuple(config.methods)}')
  if set(config.source_classes) & set(config.target_classes) or not config.target_classes:
    raise ValueError(f'target_classes {tuple(config.target_classes)} must be non-empty and disjoint '
                     f'from source_classes {tuple(config.source_classes)}')
  if not config.shots or min(config.shots) < 1:
    raise ValueError(f'shots must be labeled images per class >= 1, got {tuple(config.shots)}')
  if config.param_rules:
    raise ValueError('transfer builds its rules from the scratch / linear_probe / finetune blocks; '
                     f'param_rules must be (), got {config.param_rules}')
  f = config.finetune
  if f.unfreeze_every < 0 or f.backbone_lr <= 0 or not 0 < f.layer_decay <= 1:
    raise ValueError('finetune needs unfreeze_every >= 0, backbone_lr > 0, 0 < layer_decay <= 1; got '
                     f'{f.unfreeze_every}, {f.backbone_lr}, {f.layer_decay}')
  classify.make_preprocess(config.data.mean, config.data.std, config.augment)


def describe(config, method: str) -> str:
  """One-line summary of what `method` trains, for the results table."""
  if method == 'scratch':
    return 'random init, all layers 1x'
  if method == 'linear_probe':
    cached = uses_cached_features(config, 1)
    return 'pretrained, head only' + (' (cached features)' if cached else '')
  f = config.finetune
  parts = [f'pretrained, backbone {f.backbone_lr:g}x']
  if f.layer_decay < 1:
    parts.append(f'LLRD {f.layer_decay:g}')
  if f.unfreeze_every:
    parts.append(f'unfreeze a stage / {f.unfreeze_every} ep')
  return ', '.join(parts)


PRETRAIN_KEYS = ('seed', 'data', 'model', 'optimizer', 'ema_decay', 'augment', 'label_smoothing',
                 'source_classes', 'pretrain')


def _meta(config, keys: Sequence[str] | None = None, **extra) -> dict:
  """What must match to resume a run: `keys` of the config (default: all but bookkeeping and
  the other methods' blocks), plus `extra`."""
  return config_lib.run_meta(config, keys=keys, skip=('methods', 'shots') + METHODS, **extra)


def pretrain(config, train_arrays, test_arrays, workdir: str, *, mesh) -> float:
  """Supervised run on config.source_classes, checkpointed in `workdir`; source test accuracy."""
  p = config.pretrain
  source = class_subset(train_arrays, config.source_classes)
  info = data.DatasetInfo('source', len(config.source_classes), source[0]['image'].shape)
  cfg = with_optimizer(config, learning_rate=p.learning_rate, batch_size=p.batch_size)
  model = classify.build_model(config.model, info, seed=config.seed)
  iterator = data.train_iterator(source, batch_size=p.batch_size, seed=config.seed,
                                 num_classes=info.num_classes)
  loss_fn = classify.classification_loss(
      classify.make_preprocess(config.data.mean, config.data.std, config.augment),
      label_smoothing=config.label_smoothing)
  num_steps = p.num_epochs * steps_per_epoch(len(source), p.batch_size)
  state, _, _ = classify.train_model(
      cfg, model, loss_fn, iterator, num_steps=num_steps, workdir=workdir, mesh=mesh,
      meta=_meta(config, PRETRAIN_KEYS, role='pretrain'), desc='pretrain')
  nnx.update(model, *train_lib.eval_variables(state))
  return accuracy(config, model, class_subset(test_arrays, config.source_classes), mesh)


def transfer_model(config, method: str, info: data.DatasetInfo, *, seed: int,
                   pretrained_path: str) -> Classifier:
  """A fresh target model; for pretrained methods with the backbone (not the head) loaded."""
  model = classify.build_model(config.model, info, seed=seed)
  if method != 'scratch':
    pretrained.load_pretrained(model, pretrained_path, dont_load=(r'^head/',))
  return model


def method_phases(config, method: str, model: Classifier, num_labeled: int) -> list[Phase]:
  """The phases `method` trains for `num_labeled` examples (num_epochs of its block)."""
  epoch = steps_per_epoch(num_labeled, config.batch_size)
  total = config[method].num_epochs * epoch
  if method == 'linear_probe':
    return [(total, 1)]
  if method == 'finetune':
    num_stages = len(model.layer_groups('stage'))
    return unfreeze_phases(num_stages, total, config.finetune.unfreeze_every * epoch)
  return [(total, None)]


def run(config, workdir: str, *, mesh=None, log: Callable = print) -> dict:
  """Pretraining, then every method x shots x seed; returns test accuracies and the setup.

  {'pretrain_accuracy': float | None, 'pretrained': path,
   'accuracy': {shots: {method: [accuracy in [0, 1] per seed]}}}
  """
  validate(config)
  mesh = mesh or train_lib.make_mesh()
  data_dir = config.data.data_dir or None
  train_source, _ = data.load(config.data.name, config.data.train_split, data_dir=data_dir)
  test_source, _ = data.load(config.data.name, config.data.test_split, data_dir=data_dir)
  train_arrays, test_arrays = data.to_arrays(train_source), data.to_arrays(test_source)
  target_train = class_subset(train_arrays, config.target_classes)
  target_test = class_subset(test_arrays, config.target_classes)
  info = data.DatasetInfo('target', len(config.target_classes), target_train[0]['image'].shape)

  path, source_accuracy = config.pretrained, None
  if not path:
    path = os.path.join(workdir, 'pretrain')
    source_accuracy = pretrain(config, train_arrays, test_arrays, path, mesh=mesh)
    log(f'pretrained on classes {tuple(config.source_classes)}: source test accuracy '
        f'{100 * source_accuracy:.2f}% ({path})')
  # Fails here, before any transfer run, if `path` does not fit the model.
  transfer_model(config, 'finetune', info, seed=config.seed, pretrained_path=path)

  labels = target_train.fields['label']
  results = {}
  for k in config.shots:
    results[k] = {m: [] for m in config.methods}
    for seed in config.seeds:
      idx, _ = data.stratified_split(labels, per_class=k, seed=seed)
      labeled = data.ArraySource(image=target_train.fields['image'][idx], label=labels[idx])
      for method in config.methods:
        model = transfer_model(config, method, info, seed=seed, pretrained_path=path)
        cfg = with_optimizer(config, learning_rate=config[method].learning_rate)
        settings = {'backbone_lr': config.finetune.backbone_lr,
                    'layer_decay': config.finetune.layer_decay} if method == 'finetune' else {}
        train_phases(cfg, model, labeled, phases=method_phases(config, method, model, len(labeled)),
                     workdir=os.path.join(workdir, f'k_{k}', method, f'seed_{seed}'), mesh=mesh,
                     seed=seed, meta=_meta(config, method=method, block=config[method].to_dict(),
                                           shots=k, seed=seed), **settings)
        results[k][method].append(accuracy(config, model, target_test, mesh))
        log(f'k={k} seed {seed} {method}: test accuracy {100 * results[k][method][-1]:.2f}%')
  return {'pretrain_accuracy': source_accuracy, 'pretrained': path, 'accuracy': results}


def results_table(config, results: dict) -> str:
  """Rows: methods; columns: what each trains, test accuracy (mean +- std %) per k."""
  shots = list(results['accuracy'])
  rows = [(m, describe(config, m), *[metrics.mean_std(results['accuracy'][k][m]) for k in shots])
          for m in config.methods]
  source = results['pretrain_accuracy']
  pretrained = results['pretrained'] + ('' if source is None else f', {100 * source:.2f}% on its test set')
  title = (f'Transfer {config.data.name} classes {tuple(config.source_classes)} -> '
           f'{tuple(config.target_classes)}, {config.model.name} {dict(config.model.kwargs)}; '
           f'pretrained: {pretrained}\n'
           f'Test accuracy on the target classes (%), mean +- std over seeds {tuple(config.seeds)}')
  return title + '\n' + metrics.table(rows, ['method', 'trains', *[f'k={k}' for k in shots]])
