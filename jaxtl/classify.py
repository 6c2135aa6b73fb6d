"""Building blocks shared by every experiment: preprocessing, the classification
loss, a model from config, and `train_model`, which wires model + optimizer +
data + the shared train step + checkpoints + the loop together.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtl import data, losses, optim, randaugment
from jaxtl import train as train_lib
from jaxtl.checkpoint import Checkpointer
from jaxtl.loop import fit
from jaxtl.metrics import MetricWriter
from jaxtl.models import Classifier, create_model


def make_preprocess(mean, std, augment: Any = None) -> Callable:
  """`preprocess(images uint8 (B, H, W, C), rngs=None) -> float32 (B, H, W, C)`.

  With `augment.name == 'randaugment'` and `rngs` given, applies RandAugment
  on device (stream 'augment') before scaling to [0, 1] and normalising.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  name = 'none' if augment is None else augment['name']
  if name not in ('none', 'randaugment'):
    raise ValueError(f"augment.name must be 'none' or 'randaugment', got {name!r}")
  ops = (tuple(augment.get('ops', ())) or randaugment.OPS) if augment is not None else ()
  unknown = [op for op in ops if op not in randaugment.OPS]
  if unknown:
    raise ValueError(f'Unknown augmentation op(s) {unknown}; valid ops: {list(randaugment.OPS)}')

  def preprocess(images, rngs: nnx.Rngs | None = None):
    if name == 'randaugment' and rngs is not None:
      # On CPU a per-example loop runs only the chosen ops; vmap runs all 14 and selects.
      images = randaugment.randaugment_batch(
          rngs.augment(), images, num_ops=augment['num_ops'], magnitude=augment['magnitude'],
          random_magnitude=augment['random_magnitude'], ops=ops,
          sequential=jax.default_backend() == 'cpu')
    return (images.astype(jnp.float32) / 255.0 - mean) / std
  return preprocess


def classification_loss(preprocess: Callable, *, label_smoothing: float = 0.0):
  """Loss fn for `make_train_step`: CE of the model on (image, label) batches."""
  def loss_fn(model, batch, rngs):
    logits = model(preprocess(batch['image'], rngs), rngs=rngs)
    loss = losses.softmax_cross_entropy(logits, batch['label'], label_smoothing=label_smoothing)
    return loss, {'accuracy': losses.accuracy(logits, batch['label'])}
  return loss_fn


@dataclasses.dataclass(frozen=True)
class LabeledSplit:
  """A config's train split divided into labeled / unlabeled parts, and its test split."""
  info: data.DatasetInfo
  test: Sequence[dict]           # the test split, a random-access source
  labeled: data.ArraySource      # image uint8 (N_l, H, W, C), label (N_l,)
  unlabeled: data.ArraySource    # image, hidden_label (for evaluation only)


def load_labeled_split(config, *, seed: int) -> LabeledSplit:
  """`config.data`'s splits, the train split divided by `config.labeled` (stratified, seeded).

  `config.labeled.per_class` > 0 labels that many images per class, else
  `config.labeled.fraction` of each class.
  """
  data_dir = config.data.data_dir or None
  train_source, info = data.load(config.data.name, config.data.train_split, data_dir=data_dir)
  test_source, _ = data.load(config.data.name, config.data.test_split, data_dir=data_dir)
  arrays = data.to_arrays(train_source)
  split = config.labeled
  labeled_idx, unlabeled_idx = data.stratified_split(
      arrays['label'], per_class=split.per_class or None,
      fraction=None if split.per_class else split.fraction, seed=seed)
  labeled, unlabeled = data.split_labeled_unlabeled(arrays, labeled_idx, unlabeled_idx)
  return LabeledSplit(info, test_source, labeled, unlabeled)


def build_model(model_cfg, info: data.DatasetInfo, *, seed: int, name: str | None = None,
                **overrides) -> Classifier:
  """The model a config's `model` block describes (name / kwargs overridable), for `info`."""
  kwargs = {**dict(model_cfg.kwargs), **overrides}
  dropout = kwargs.pop('dropout', model_cfg.dropout)
  return create_model(name or model_cfg.name, num_classes=info.num_classes,
                      image_shape=info.image_shape, seed=seed, dropout=dropout, **kwargs)


def train_model(config, model: Classifier, loss_fn, iterator, *, num_steps: int, workdir: str,
                mesh: jax.sharding.Mesh, rules: Sequence[optim.Rule] = (),
                eval_source=None, extra: tuple = (), meta: Any = None, desc: str = 'train',
                seed: int | None = None):
  """Trains `model` with `loss_fn` on `iterator` for `num_steps`; resumes from workdir.

  `rules` (default config.param_rules) freeze / scale parameters; `seed`
  (default config.seed) seeds dropout, stochastic depth and augmentation.

  Returns (state, model_def, predict): `predict(eval_variables(state), images)`
  gives eval-mode logits and features.
  """
  rules = tuple(rules or config.param_rules)
  model_def, params, frozen, batch_stats = train_lib.split_model(model, rules)
  multipliers = optim.lr_multipliers(rules, params) if rules else None
  tx = optim.make_optimizer(config.optimizer, num_steps, multipliers)
  state = train_lib.init_state(params, frozen, batch_stats, tx,
                               seed=config.seed if seed is None else seed, ema=config.ema_decay > 0)
  step = train_lib.make_train_step(model_def, tx, loss_fn, ema_decay=config.ema_decay, mesh=mesh)
  preprocess = make_preprocess(config.data.mean, config.data.std)
  predict = train_lib.make_predict(model_def, preprocess)
  eval_fn = None
  if eval_source is not None:
    eval_fn = lambda s: train_lib.evaluate(predict, train_lib.eval_variables(s), eval_source,
                                           batch_size=config.eval_batch_size, mesh=mesh)
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints)
  writer = MetricWriter(workdir)
  try:
    state = fit(state, step, iterator, num_steps=num_steps, mesh=mesh, checkpointer=checkpointer,
                writer=writer, log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                eval_fn=eval_fn, eval_every=None if eval_fn is None else num_steps,
                extra=extra, meta=meta, desc=desc)
  finally:
    writer.close()
    checkpointer.close()
  return state, model_def, predict
