"""The one train step every technique builds on, over an explicit state pytree.

`make_train_step(model_def, tx, loss_fn)` returns a jitted, pure
`train_step(state, batch, *extra) -> (state, metrics)`. Fine-tuning,
distillation and self-training differ only in the `loss_fn` they plug in
(and the optimizer / frozen set they build); `extra` carries whatever else
the loss reads (e.g. a teacher's variables for online distillation).

Data parallelism: the batch is sharded over the 'data' axis of a
`jax.make_mesh` mesh, the state is replicated, and `jax.jit` inserts the
cross-device reductions (pmap semantics on the current JAX API). BatchNorm
statistics are computed over the global batch, so N devices give the same
result as one device for the same global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtl import optim

Batch = Mapping[str, jax.Array]
# loss_fn(model, batch, rngs, *extra) -> (scalar loss, {name: scalar metric}).
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree that orbax saves as is."""
  step: jax.Array          # int32 ()
  params: nnx.State        # trainable nnx.Param leaves
  frozen: nnx.State        # frozen nnx.Param leaves: no gradient, no optimizer state
  batch_stats: nnx.State   # nnx.BatchStat leaves (BatchNorm running statistics)
  opt_state: Any
  ema_params: nnx.State | None  # EMA of `params`, used for eval when enabled
  rng: jax.Array           # uint32 (2,) base key; step key = fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static graph definitions of a model in train and eval mode.

  In `train_def`, submodules whose parameters are all frozen (and the
  parameter-free modules inside them) run in inference mode: their
  BatchNorm uses and keeps its running statistics, dropout is off.
  """
  train_def: nnx.GraphDef
  eval_def: nnx.GraphDef

  def merge(self, *states: nnx.State, train: bool = False) -> nnx.Module:
    """A fresh module from states; copies so that NNX may mutate it under jax transforms."""
    return nnx.merge(self.train_def if train else self.eval_def, *states, copy=True)


def split_model(model: nnx.Module, rules: Sequence[optim.Rule] = ()):
  """Splits `model` into (ModelDef, trainable params, frozen params, batch stats).

  `rules` are (regex, multiplier | 'frozen') pairs over parameter paths (see
  `jaxtl.optim`); with no rules everything is trainable.
  """
  all_params = nnx.state(model, nnx.Param)
  is_frozen = optim.frozen_filter(rules, all_params) if rules else (lambda path, _: False)
  frozen_paths = {p for p, v in nnx.to_flat_state(all_params) if is_frozen(p, v)}
  model.train()
  for path, module in nnx.iter_modules(model):
    own = [p for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))]
    if own and all(tuple(path) + tuple(p) in frozen_paths for p in own):
      module.eval()
  filters = (nnx.All(nnx.Param, nnx.Not(is_frozen)), nnx.Param, nnx.BatchStat)
  train_def, params, frozen, batch_stats = nnx.split(model, *filters)
  model.eval()
  eval_def, *_ = nnx.split(model, *filters)
  return ModelDef(train_def, eval_def), params, frozen, batch_stats


def init_state(params, frozen, batch_stats, tx: optax.GradientTransformation, *,
               seed: int, ema: bool = False) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, batch_stats=batch_stats,
      opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      rng=jax.random.PRNGKey(seed))


def eval_variables(state: TrainState) -> tuple[nnx.State, nnx.State, nnx.State]:
  """(params, frozen, batch_stats) to evaluate or label with: EMA params if kept."""
  params = state.params if state.ema_params is None else state.ema_params
  return params, state.frozen, state.batch_stats


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                    ema_decay: float = 0.0, mesh: jax.sharding.Mesh | None = None):
  """Jitted `train_step(state, batch, *extra) -> (state, metrics)`.

  Gradients are taken w.r.t. `state.params` only. Randomness comes from
  `fold_in(state.rng, state.step)`, split into the 'dropout' and 'augment'
  streams of the `nnx.Rngs` handed to `loss_fn`, so a resumed run repeats an
  uninterrupted one exactly. A step whose loss or gradients are not finite
  leaves the state unchanged (but counts the step) and reports
  `metrics['finite'] = False`; `jaxtl.loop` stops there.
  """
  def train_step(state: TrainState, batch: Batch, *extra):
    key = jax.random.fold_in(state.rng, state.step)

    def objective(params, batch_stats):
      model = model_def.merge(params, state.frozen, batch_stats, train=True)
      rngs = nnx.Rngs(dropout=jax.random.fold_in(key, 0), augment=jax.random.fold_in(key, 1))
      loss, metrics = loss_fn(model, batch, rngs, *extra)
      return loss, (metrics, nnx.state(model, nnx.BatchStat))

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, state.batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats), opt_state=keep(opt_state, state.opt_state),
        ema_params=None if ema is None else keep(ema, state.ema_params))
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads), 'finite': finite}
    return new_state, metrics

  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))


# ------------------------------------------------------------------ devices

def device_summary() -> str:
  """One line naming the jax version, backend, devices and host CPUs (for benchmark headers)."""
  import os
  return (f'jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} '
          f'device(s): {jax.devices()[0].device_kind}; host CPUs {os.cpu_count()}')


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """1-D mesh with axis 'data' over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places every leaf of `tree` on all devices of `mesh` (replicated)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh):
  """Host-local numpy batch -> global jax.Arrays sharded over 'data' (leading axis).

  Works across hosts via `jax.make_array_from_process_local_data`.
  """
  sharding = NamedSharding(mesh, P('data'))
  n = mesh.devices.size

  def put(x):
    x = np.asarray(x)
    if (x.shape[0] * jax.process_count()) % n:
      raise ValueError(f'Global batch size {x.shape[0] * jax.process_count()} is not divisible '
                       f'by the {n} devices of the mesh.')
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, dict(batch))


# ------------------------------------------------------------------ inference

def make_predict(model_def: ModelDef, preprocess: Callable[[jax.Array], jax.Array]):
  """Jitted `predict(variables, images) -> (logits (B, K) float32, features (B, F))`.

  `variables` = `eval_variables(state)`; eval mode: no dropout, no noise.
  """
  @jax.jit
  def predict(variables, images):
    model = model_def.merge(*variables, train=False)
    logits, features = model(preprocess(images), return_features=True)
    return logits.astype(jnp.float32), features
  return predict


def predict_dataset(predict, variables, source, *, batch_size: int, mesh: jax.sharding.Mesh,
                    with_features: bool = False):
  """Eval-mode logits (N, K) [and features (N, F)] for every record of `source`, in order."""
  from jaxtl import data
  outputs = []
  for batch in data.eval_batches(source, batch_size=batch_size, keys=('image',)):
    mask = batch.pop('mask')
    logits, feats = predict(variables, shard_batch(batch, mesh)['image'])
    out = (logits, feats) if with_features else (logits,)
    out = [multihost_utils.process_allgather(o, tiled=True) for o in out]
    full_mask = multihost_utils.process_allgather(mask, tiled=True) if jax.process_count() > 1 else mask
    outputs.append([np.asarray(o)[full_mask] for o in out])
  stacked = [np.concatenate(parts) for parts in zip(*outputs)]
  return tuple(stacked) if with_features else stacked[0]


def evaluate(predict, variables, source, *, batch_size: int, mesh: jax.sharding.Mesh,
             labels: np.ndarray | None = None) -> dict[str, float]:
  """Top-1 accuracy and mean cross-entropy over `source` (labels from records by default)."""
  from jaxtl import data, losses
  logits = predict_dataset(predict, variables, source, batch_size=batch_size, mesh=mesh)
  if labels is None:
    labels = data.to_arrays(source, keys=('label',))['label']
  labels = np.asarray(labels)
  return {'accuracy': float(np.mean(np.argmax(logits, -1) == labels)),
          'loss': float(losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))}
