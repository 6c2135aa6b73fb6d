"""The base experiment config every `experiments/configs/*.py` starts from.

Configs are locked `ml_collections.ConfigDict`s: a misspelt key in a config
file or in a `--config.key=value` override raises an error naming the key.
"""

from __future__ import annotations

import json
from typing import Sequence

import ml_collections

# Keys that change how a run is driven or logged, not what it computes: a checkpoint
# written under other values of them is resumed (e.g. a run extended to more seeds).
BOOKKEEPING = ('seeds', 'log_every', 'checkpoint_every', 'keep_checkpoints', 'eval_batch_size')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(
      name='digits',          # 'digits' (bundled, offline) or any prepared TFDS name.
      data_dir='',            # '' = $JAXTL_DATA_DIR or ~/.cache/jaxtl/tensorflow_datasets.
      train_split='train',
      test_split='test',
      mean=0.5, std=0.5,      # Per-channel (tuple) or scalar, on images scaled to [0, 1].
      in_memory=True,         # train.py: decode the train split once; False streams it from
                              # array_record each epoch (splits larger than host memory).
  )
  c.model = dict(name='cnn', dropout=0.0, kwargs=ml_collections.ConfigDict())
  c.optimizer = dict(
      name='momentum', learning_rate=0.05, momentum=0.9, nesterov=True, b1=0.9, b2=0.999,
      weight_decay=5e-4, grad_clip_norm=0.0, warmup_steps=0, schedule='cosine')
  c.ema_decay = 0.0           # > 0 keeps an EMA of the weights, used for eval and labeling.
  c.param_rules = ()          # ((regex, lr multiplier | 'frozen'), ...), first match wins.
  c.augment = dict(name='none', num_ops=2, magnitude=10, random_magnitude=False, ops=())  # () = all 14 ops.
  c.label_smoothing = 0.0
  c.batch_size = 64
  c.num_epochs = 30
  c.num_steps = 0             # > 0 overrides num_epochs.
  c.eval_batch_size = 256
  c.log_every = 20
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks `config`: setting a key it does not have, model kwargs included, then raises.

  A config file lists every model kwarg it may override (`model.kwargs`).
  """
  config.lock()
  return config


def run_meta(config: ml_collections.ConfigDict, *, keys: Sequence[str] | None = None,
             skip: Sequence[str] = (), **extra) -> dict:
  """The record a checkpoint keeps of its run; `jaxtl.loop.fit` refuses to resume on a mismatch.

  {'config': the top-level entries of `config` named in `keys` (default:
  all but `BOOKKEEPING` and `skip`), **extra}.
  """
  cfg = json.loads(config.to_json())
  keep = (lambda k: k in keys) if keys is not None else (lambda k: k not in (*BOOKKEEPING, *skip))
  return {'config': {k: v for k, v in cfg.items() if keep(k)}, **extra}


def num_train_steps(config, num_examples: int) -> int:
  """config.num_steps if > 0, else num_epochs * (num_examples // batch_size)."""
  if config.num_steps > 0:
    return int(config.num_steps)
  per_epoch = num_examples // config.batch_size
  if per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the {num_examples} training examples.')
  return int(config.num_epochs * per_epoch)
