"""Knowledge distillation: online and cached teachers, ensembles, label mixing, checkpoints, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import distill as distill_config
from jaxtl import classify, data, distill, losses, optim
from jaxtl import train as train_lib
from jaxtl.checkpoint import Checkpointer
from jaxtl.models import create_model

OPT = dict(name='momentum', learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.0,
           warmup_steps=0, schedule='constant')
AUGMENT = dict(name='randaugment', num_ops=2, magnitude=15, random_magnitude=False,
               ops=('rotate', 'translate_x', 'shear_y'))
PLAIN = classify.make_preprocess(0.5, 0.5)


@pytest.fixture(scope='module')
def digits():
  train, _ = data.load('digits', 'train')
  return data.to_arrays(train)


def _teacher(seed, num_classes=10):
  """A tiny CNN teacher with dropout, non-trivial BatchNorm running statistics and confident logits."""
  model = create_model('cnn', num_classes=num_classes, image_shape=(8, 8, 1), seed=seed,
                       dropout=0.5, base_channels=4, depth=1)
  teacher = distill.Teacher.from_model(model)
  params, frozen, stats = teacher.variables
  stats = jax.tree.map(lambda x: 2.0 * x + 0.3, stats)  # mean 0.3, var 2.3
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: 30.0 * x if 'head' in str(path) else x, params)
  return distill.Teacher(teacher.model_def, (params, frozen, stats))


def _student(seed=1):
  net = create_model('mlp', num_classes=10, image_shape=(8, 8, 1), seed=seed, hidden=(32,))
  model_def, params, frozen, stats = train_lib.split_model(net)
  tx = optim.make_optimizer(OPT, 100)
  return model_def, tx, train_lib.init_state(params, frozen, stats, tx, seed=0)


def _eval_logits(teacher, images):
  return teacher.model_def.merge(*teacher.variables)(images)


def test_online_step_matches_manual_computation_and_leaves_the_teacher_alone(digits):
  mesh = train_lib.make_mesh()
  preprocess = classify.make_preprocess(0.5, 0.5, AUGMENT)
  teacher = _teacher(0)
  before = jax.tree.map(np.array, teacher.variables)
  model_def, tx, state = _student()
  batch = {'image': digits['image'][:16], 'label': digits['label'][:16]}
  loss_fn = distill.distillation_loss_fn(preprocess, temperature=3.0, alpha=0.7,
                                         teachers=[teacher.model_def])

  # Manual: the step's rngs, the augmented images, teacher in eval mode on the same images.
  key = jax.random.fold_in(state.rng, state.step)
  rngs = nnx.Rngs(dropout=jax.random.fold_in(key, 0), augment=jax.random.fold_in(key, 1))
  images = preprocess(jnp.asarray(batch['image']), rngs)
  assert not np.allclose(images, PLAIN(batch['image']))  # Really augmented.
  student = model_def.merge(state.params, state.frozen, state.batch_stats, train=True)
  student_logits = student(images, rngs=rngs)
  expected = losses.distillation_loss(student_logits, _eval_logits(teacher, images), batch['label'],
                                      temperature=3.0, alpha=0.7)
  unaugmented_teacher = losses.distillation_loss(
      student_logits, _eval_logits(teacher, PLAIN(batch['image'])), batch['label'],
      temperature=3.0, alpha=0.7)
  assert abs(float(expected) - float(unaugmented_teacher)) > 1e-3

  # No gradient reaches the teacher; the student gets one.
  def loss_of_teacher(variables):
    rngs = nnx.Rngs(dropout=jax.random.fold_in(key, 0), augment=jax.random.fold_in(key, 1))
    student = model_def.merge(state.params, state.frozen, state.batch_stats, train=True)
    return loss_fn(student, batch, rngs, variables)[0]
  grads = jax.grad(loss_of_teacher)(teacher.variables)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))

  two = distill.distillation_loss_fn(PLAIN, temperature=1.0, alpha=0.5,
                                     teachers=[teacher.model_def] * 2)
  with pytest.raises(ValueError, match='2 teacher definitions but 1 teacher variable'):
    two(student, batch, None, teacher.variables)

  step = train_lib.make_train_step(model_def, tx, loss_fn, mesh=mesh)
  params_before = jax.tree.map(np.array, state.params)
  new_state, metrics = step(train_lib.replicate(state, mesh), train_lib.shard_batch(batch, mesh),
                            train_lib.replicate(teacher.variables, mesh))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher.variables)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params_before),
                                                   jax.tree.leaves(new_state.params)))


def test_cached_logits_equal_teacher_predictions_and_cached_step_equals_online(digits):
  mesh = train_lib.make_mesh()
  teachers = [_teacher(0), _teacher(1)]
  source = data.ArraySource(image=digits['image'][:20], label=digits['label'][:20])
  cached = distill.cache_teacher_logits(teachers, source, PLAIN, batch_size=16, mesh=mesh)
  assert cached.shape == (20, 2, 10) and cached.dtype == np.float32
  for k, t in enumerate(teachers):
    np.testing.assert_allclose(cached[:, k], _eval_logits(t, PLAIN(digits['image'][:20])), atol=1e-5)
  records = distill.TeacherLogitsSource(source, cached)
  assert set(records[3]) == {'image', 'label', 'teacher_logits'}
  np.testing.assert_array_equal(records[3]['teacher_logits'], cached[3])

  batch = {k: np.stack([records[i][k] for i in range(16)]) for k in records[0]}
  losses_by_mode = []
  for teacher_defs, extra, b in (([t.model_def for t in teachers], [t.variables for t in teachers],
                                  {k: v for k, v in batch.items() if k != 'teacher_logits'}),
                                 ((), [], batch)):
    model_def, tx, state = _student()
    loss_fn = distill.distillation_loss_fn(PLAIN, temperature=2.0, alpha=0.5, teachers=teacher_defs)
    step = train_lib.make_train_step(model_def, tx, loss_fn, mesh=mesh)
    _, metrics = step(train_lib.replicate(state, mesh), train_lib.shard_batch(b, mesh),
                      *train_lib.replicate(extra, mesh))
    losses_by_mode.append(float(metrics['loss']))
  np.testing.assert_allclose(*losses_by_mode, rtol=1e-5)


def test_ensemble_of_two_teachers_averages_probabilities():
  t = jax.random.normal(jax.random.key(0), (2, 5, 7)) * 3
  s = jax.random.normal(jax.random.key(1), (5, 7))
  probs = jax.nn.softmax(distill.ensemble_logits(t, 2.0) / 2.0)
  np.testing.assert_allclose(probs, (jax.nn.softmax(t[0] / 2) + jax.nn.softmax(t[1] / 2)) / 2, atol=1e-6)
  np.testing.assert_array_equal(distill.ensemble_logits(t[:1], 2.0), t[0])
  # The loss of the ensemble: T^2 KL(mean teacher probabilities || student).
  p = np.asarray(probs, np.float64)
  log_q = np.asarray(jax.nn.log_softmax(s / 2.0), np.float64)
  manual = 4.0 * np.mean(np.sum(p * (np.log(p) - log_q), -1))
  model = lambda images, rngs=None: s
  loss_fn = distill.distillation_loss_fn(lambda x, rngs: x, temperature=2.0, alpha=0.3)
  loss, metrics = loss_fn(model, {'image': jnp.zeros((5, 1)), 'teacher_logits': t.swapaxes(0, 1)}, None)
  np.testing.assert_allclose(loss, manual, rtol=1e-5)
  np.testing.assert_allclose(metrics['kd_loss'], manual, rtol=1e-5)


def test_labeled_examples_add_cross_entropy_unlabeled_ones_pure_kd():
  s = jax.random.normal(jax.random.key(0), (6, 4))
  t = jax.random.normal(jax.random.key(1), (6, 1, 4))
  y = jnp.array([0, 3])
  model = lambda images, rngs=None: s
  loss_fn = distill.distillation_loss_fn(lambda x, rngs: x, temperature=4.0, alpha=0.25)
  batch = {'labeled': {'image': jnp.zeros((2, 1)), 'label': y, 'teacher_logits': t[:2]},
           'unlabeled': {'image': jnp.zeros((4, 1)), 'teacher_logits': t[2:]}}
  loss, metrics = loss_fn(model, batch, None)
  labeled = 0.25 * 16 * losses.kl_divergence(s[:2], t[:2, 0], temperature=4.0) + \
      0.75 * losses.softmax_cross_entropy(s[:2], y)
  unlabeled = 16 * losses.kl_divergence(s[2:], t[2:, 0], temperature=4.0)
  np.testing.assert_allclose(loss, (2 * labeled + 4 * unlabeled) / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics['accuracy'], losses.accuracy(s[:2], y))


def test_student_trained_with_kd_follows_the_teacher_not_the_labels(digits):
  """Toy teacher: class (y + 3) mod 10 with confidence; pure KD must learn its mapping."""
  mesh = train_lib.make_mesh()
  wrong = (digits['label'] + 3) % 10
  logits = 6.0 * np.eye(10, dtype=np.float32)[wrong][:, None]
  source = distill.TeacherLogitsSource(data.ArraySource(image=digits['image']), logits, keys=('image',))
  iterator = data.train_iterator(source, batch_size=64, seed=0)
  model_def, tx, state = _student()
  step = train_lib.make_train_step(model_def, tx, distill.distillation_loss_fn(
      PLAIN, temperature=2.0, alpha=0.5), mesh=mesh)
  predict = train_lib.make_predict(model_def, PLAIN)

  def agreement(s):
    pred = np.argmax(predict(train_lib.eval_variables(s), digits['image'][:512])[0], -1)
    return np.mean(pred == wrong[:512]), np.mean(pred == digits['label'][:512])

  state = train_lib.replicate(state, mesh)
  before, _ = agreement(state)
  history = []
  for _ in range(80):
    state, m = step(state, train_lib.shard_batch(next(iterator), mesh))
    history.append(float(m['kd_loss']))
  after, true_accuracy = agreement(state)
  assert before < 0.3 and after > 0.85 and true_accuracy < 0.1, (before, after, true_accuracy)
  assert np.mean(history[-10:]) < 0.3 * np.mean(history[:10])


def _save_checkpoint(path, model):
  model_def, params, frozen, stats = train_lib.split_model(model)
  state = train_lib.init_state(params, frozen, stats, optim.make_optimizer(OPT, 10), seed=0)
  checkpointer = Checkpointer(os.path.join(path, 'checkpoints'))
  checkpointer.save(1, state)
  checkpointer.close()
  return distill.Teacher(model_def, train_lib.eval_variables(state))


def test_teacher_checkpoint_loads_and_other_number_of_classes_is_named(tmp_path, digits):
  make = lambda k, seed: create_model('cnn', num_classes=k, image_shape=(8, 8, 1), seed=seed,
                                      base_channels=4, depth=1)
  saved = _save_checkpoint(str(tmp_path / 'ten'), make(10, 0))
  loaded = distill.load_teacher(make(10, 5), str(tmp_path / 'ten'))
  images = PLAIN(digits['image'][:8])
  np.testing.assert_allclose(_eval_logits(loaded, images), _eval_logits(saved, images), atol=1e-6)
  _save_checkpoint(str(tmp_path / 'five'), make(5, 0))
  with pytest.raises(ValueError, match='predict 5 classes but the student has 10'):
    distill.load_teacher(make(10, 0), str(tmp_path / 'five'))


def test_bad_temperature_or_alpha_is_named_by_losses():
  with pytest.raises(ValueError, match=r'temperature must be finite and > 0, got 0'):
    distill.distillation_loss_fn(PLAIN, temperature=0.0, alpha=0.5)
  with pytest.raises(ValueError, match=r'alpha must be in \[0, 1\], got 1.5'):
    distill.distillation_loss_fn(PLAIN, temperature=2.0, alpha=1.5)
  c = distill_config.get_config()
  c.distill.settings = ((4.0, 0.9), (float('inf'), 0.5))
  with pytest.raises(ValueError, match='temperature must be finite'):
    distill.validate(c)


def test_experiment_online_end_to_end(tmp_path):
  c = distill_config.get_config()
  c.teacher.steps, c.student.steps = 10, 10
  c.model.kwargs.width, c.model.kwargs.base_channels = 0.5, 4
  c.distill.mode, c.distill.settings = 'online', ((2.0, 0.5),)
  c.eval_batch_size, c.log_every = 120, 5
  rows = distill.run(c, str(tmp_path), seed=0, log=lambda *_: None)
  assert [r['model'] for r in rows] == ['teacher', 'student CE only', 'student KD']
  assert rows[2]['temperature'] == 2.0 and rows[0]['agreement'] == 1.0
  assert all(0.0 <= r['test_accuracy'] <= 1.0 for r in rows)
  assert rows[1]['params'] == rows[2]['params'] != rows[0]['params']
  assert os.path.exists(tmp_path / 'teacher_0' / 'checkpoints')
  logged = open(tmp_path / 'student_kd_T2_alpha0.5' / 'metrics.jsonl').read()
  assert 'teacher_agreement' in logged and 'kd_loss' in logged
