import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl import classify, data, loop, optim
from jaxtl import train as train_lib
from jaxtl.checkpoint import Checkpointer
from jaxtl.models import create_model

OPT = dict(name='momentum', learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
           warmup_steps=2, schedule='cosine')


def _digits_batches(n_batches, batch_size=32, seed=0):
  train, info = data.load('digits', 'train')
  it = data.train_iterator(train, batch_size=batch_size, seed=seed, num_classes=info.num_classes)
  return [next(it) for _ in range(n_batches)], info


def _setup(rules=(), ema=False, dropout=0.0, drop_path=0.0, model='cnn', total_steps=20):
  kwargs = dict(base_channels=8, drop_path=drop_path) if model == 'cnn' else dict(hidden=(32,))
  net = create_model(model, num_classes=10, image_shape=(8, 8, 1), dropout=dropout, **kwargs)
  model_def, params, frozen, stats = train_lib.split_model(net, rules)
  mult = optim.lr_multipliers(rules, params) if rules else None
  tx = optim.make_optimizer(OPT, total_steps, mult)
  state = train_lib.init_state(params, frozen, stats, tx, seed=0, ema=ema)
  loss_fn = classify.classification_loss(classify.make_preprocess(0.5, 0.5))
  return model_def, tx, state, loss_fn


def _run(mesh, batches, **kw):
  model_def, tx, state, loss_fn = _setup(total_steps=len(batches), **kw)
  step = train_lib.make_train_step(model_def, tx, loss_fn, mesh=mesh, ema_decay=0.9)
  state = train_lib.replicate(state, mesh)
  history = []
  for b in batches:
    state, m = step(state, train_lib.shard_batch(b, mesh))
    history.append(jax.device_get(m))
  return state, history


def test_training_reduces_loss():
  batches, _ = _digits_batches(60)
  _, history = _run(train_lib.make_mesh(), batches)
  first, last = np.mean([h['loss'] for h in history[:5]]), np.mean([h['loss'] for h in history[-5:]])
  assert last < 0.5 * first, (first, last)
  assert all(h['finite'] for h in history)


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8
  batches, _ = _digits_batches(6)
  s8, h8 = _run(train_lib.make_mesh(), batches, dropout=0.3, drop_path=0.2, ema=True)
  s1, h1 = _run(train_lib.make_mesh(jax.devices()[:1]), batches, dropout=0.3, drop_path=0.2, ema=True)
  for a, b in zip(h8, h1):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['accuracy'], b['accuracy'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.device_get(s8), jax.device_get(s1))


def test_frozen_params_are_untouched_and_have_no_optimizer_state():
  rules = ((r'^backbone/', 'frozen'), (r'^head/', 10.0))
  batches, _ = _digits_batches(5)
  model_def, tx, state, loss_fn = _setup(rules=rules)
  frozen_before = jax.device_get(state.frozen)
  stats_before = jax.device_get(state.batch_stats)
  assert {p.split('/')[0] for p in optim.param_paths(state.params)} == {'head'}
  opt_leaves = jax.tree.leaves(state.opt_state)
  assert sum(x.size for x in opt_leaves) <= 2 * sum(x.size for x in jax.tree.leaves(state.params)) + 10
  step = train_lib.make_train_step(model_def, tx, loss_fn)
  head_before = jax.device_get(state.params)
  for b in batches:
    state, _ = step(state, b)
  jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.device_get(state.frozen))
  # BatchNorm inside the frozen backbone runs in inference mode: statistics unchanged.
  jax.tree.map(np.testing.assert_array_equal, stats_before, jax.device_get(state.batch_stats))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), head_before, jax.device_get(state.params))
  assert all(jax.tree.leaves(changed))


def test_rules_errors_name_the_problem():
  net = create_model('mlp', num_classes=3, image_shape=(2, 2, 1), hidden=(4,))
  with pytest.raises(ValueError, match=r"regex\(es\) \['\^nothing'\] match no parameter"):
    train_lib.split_model(net, ((r'^nothing', 'frozen'), ('.*', 1.0)))
  with pytest.raises(ValueError, match=r'covered by no param rule.*head/bias'):
    train_lib.split_model(net, ((r'^backbone/', 'frozen'),))
  with pytest.raises(ValueError, match='multiplier >= 0'):
    train_lib.split_model(net, (('.*', 'frozn'),))


def test_weight_decay_skips_biases_and_norm_scales():
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,)), 'scale': jnp.ones((2,))}
  tx = optim.make_optimizer(dict(name='sgd', learning_rate=1.0, weight_decay=0.5, schedule='constant'), 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)
  np.testing.assert_allclose(updates['scale'], 0.0)
  with pytest.raises(ValueError, match="optimizer.name must be"):
    optim.make_optimizer(dict(name='adam_typo', learning_rate=1.0), 10)


def test_lr_multipliers_scale_updates():
  params = {'backbone': {'w': jnp.ones((2, 2))}, 'head': {'w': jnp.ones((2, 2))}}
  mult = optim.lr_multipliers(((r'^backbone/', 0.1), ('.*', 1.0)), params)
  tx = optim.make_optimizer(dict(name='sgd', learning_rate=1.0, schedule='constant'), 10, mult)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['backbone']['w'], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['w'], -1.0)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  model_def, tx, state, loss_fn = _setup(model='mlp')
  batches, _ = _digits_batches(12)

  def poisoned(model, batch, rngs):
    loss, m = loss_fn(model, batch, rngs)
    return jnp.where(batch['label'][0] >= 0, loss, jnp.nan) * jnp.where(batch['poison'][0], jnp.nan, 1.0), m

  for i, b in enumerate(batches):
    b['poison'] = np.full(len(b['label']), i == 7)
  step = train_lib.make_train_step(model_def, tx, poisoned)
  ckpt = Checkpointer(str(tmp_path / 'ckpt'))
  class ListIterator:
    def __init__(self):
      self.i = 0
    def __next__(self):
      self.i += 1
      return batches[self.i - 1]
    def get_state(self):
      return {'i': self.i}
    def set_state(self, s):
      self.i = s['i']

  mesh = train_lib.make_mesh()
  with pytest.raises(FloatingPointError, match='at step 8.*Last good checkpoint: step 5'):
    loop.fit(state, step, ListIterator(), num_steps=12, mesh=mesh, checkpointer=ckpt,
             log_every=5, checkpoint_every=5)
  assert ckpt.latest_step() == 5
  ckpt.close()


def test_ema_tracks_params():
  batches, _ = _digits_batches(3)
  state, _ = _run(train_lib.make_mesh(), batches, ema=True)
  params, ema = jax.device_get(state.params), jax.device_get(state.ema_params)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, ema))
  assert max(diffs) > 0
  assert train_lib.eval_variables(state)[0] is state.ema_params
