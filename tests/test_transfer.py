"""Transfer learning: layer order, LLRD, gradual unfreezing, cached linear probe, experiment, bad input."""

import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs import transfer_base
from jaxtl import classify, data, metrics, optim, pretrained, transfer
from jaxtl import train as train_lib
from jaxtl.checkpoint import Checkpointer
from jaxtl.models import Classifier, create_model
from jaxtl.models.simple import CNNBackbone
from jaxtl.optim import path_str


def tiny_config():
  c = transfer_base.get_config()
  c.seeds, c.shots = (0,), (2,)
  c.model.kwargs.base_channels, c.model.kwargs.width = 8, 0.5
  c.pretrain.num_epochs = 2
  c.scratch.num_epochs = c.linear_probe.num_epochs = c.finetune.num_epochs = 4
  c.finetune.unfreeze_every, c.finetune.layer_decay = 1, 0.5
  c.batch_size, c.eval_batch_size, c.log_every = 8, 128, 5
  return c


def flat_vars(model):
  """{'/'-path: np.ndarray} of a model's Param and BatchStat variables."""
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def labeled_digits(per_class, classes=(5, 6, 7, 8, 9), seed=0):
  source, _ = data.load('digits', 'train')
  subset = transfer.class_subset(data.to_arrays(source), classes)
  idx, _ = data.stratified_split(subset.fields['label'], per_class=per_class, seed=seed)
  return data.ArraySource(image=subset.fields['image'][idx], label=subset.fields['label'][idx])


def group_of(path, groups):
  hits = [i for i, g in enumerate(groups) if any(path.startswith(p + '/') for p in g)]
  assert len(hits) == 1, (path, hits)
  return hits[0]


MODELS = {
    'cnn': dict(base_channels=4, depth=12, stages=1),
    'mlp': dict(hidden=(4, 4, 4)),
    'resnet18': dict(width=0.0625, stem='small'),
    'wide_resnet': dict(depth=10, width=1),
}


def abstract_model(name):
  """Shapes only (no initializer compiles): enough for paths and rules."""
  return nnx.eval_shape(lambda: create_model(name, num_classes=3, image_shape=(8, 8, 3), **MODELS[name]))


def variable_paths(model):
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  return [path_str(p) for p, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize('name', sorted(MODELS))
def test_layer_groups_cover_every_variable_once_in_model_order(name):
  model = abstract_model(name)
  blocks, stages = model.layer_groups('block'), model.layer_groups('stage')
  for path in variable_paths(model):
    group_of(path, blocks), group_of(path, stages)
  assert blocks[-1] == stages[-1] == ('head',)
  expected = {
      'cnn': [(f'backbone/units/{i}',) for i in range(12)],
      'mlp': [(f'backbone/layers/{i}',) for i in range(3)],
      'resnet18': [('backbone/conv1', 'backbone/bn1')] + [
          (f'backbone/layer{i}/{j}',) for i in range(1, 5) for j in range(2)],
      'wide_resnet': [('backbone/conv1',), ('backbone/group1/0',), ('backbone/group2/0',),
                      ('backbone/group3/0', 'backbone/bn')],
  }[name]
  assert blocks[:-1] == expected
  assert [len(s) for s in stages[:-1]] == {'cnn': [12], 'mlp': [1, 1, 1], 'resnet18': [2, 2, 2, 2, 2],
                                           'wide_resnet': [1, 1, 1, 2]}[name]
  if name == 'wide_resnet':  # NNX flattening sorts names: the last layer's 'bn' comes first.
    assert variable_paths(model)[0].startswith('backbone/bn/')
  with pytest.raises(ValueError, match='level must be one of'):
    model.layer_groups('blocks')


@pytest.mark.parametrize('name', ['cnn', 'wide_resnet'])
def test_llrd_multipliers_follow_decay_in_model_order(name):
  model = abstract_model(name)
  params = nnx.state(model, nnx.Param)
  blocks = model.layer_groups('block')
  depth = len(blocks) - 1
  assert depth == {'cnn': 12, 'wide_resnet': 4}[name]
  for backbone_lr in (1.0, 0.1):
    rules = transfer.transfer_rules(model, layer_decay=0.7, backbone_lr=backbone_lr)
    mult = optim.lr_multipliers(rules, params)
    for path, m in zip(optim.param_paths(params), jax.tree.leaves(mult)):
      i = group_of(path, blocks)
      want = 0.7 ** (depth - i) * (1.0 if i == depth else backbone_lr)
      assert m == pytest.approx(want, rel=1e-12), path
  assert optim.layerwise_lr_decay(3, 0.5) == [0.25, 0.5, 1.0]
  # The optimizer applies them: plain SGD, unit gradients -> update = -lr * multiplier.
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  tx = optim.make_optimizer(dict(name='sgd', learning_rate=1.0, schedule='constant'), 10, mult)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(mult)):
    np.testing.assert_allclose(u, -m, rtol=1e-6)


def test_trainable_stages_freeze_from_the_bottom():
  model = abstract_model('resnet18')
  stages = model.layer_groups('stage')  # stem, layer1..layer4, head
  for n in range(1, len(stages) + 1):
    table = optim.resolve_rules(optim.param_paths(nnx.state(model, nnx.Param)),
                                transfer.transfer_rules(model, trainable_stages=n))
    frozen = {group_of(p, stages) for p, v in table.items() if v == optim.FROZEN}
    assert frozen == set(range(len(stages) - n)), n
  with pytest.raises(ValueError, match=r'trainable_stages must be in \[1, 6\]'):
    transfer.transfer_rules(model, trainable_stages=0)


def test_unfreeze_phases():
  assert transfer.unfreeze_phases(3, 30, 10) == [(10, 1), (10, 2), (10, None)]
  assert transfer.unfreeze_phases(3, 35, 10) == [(10, 1), (10, 2), (15, None)]
  assert transfer.unfreeze_phases(4, 25, 10) == [(10, 1), (10, 2), (5, 3)]  # Ends before the stem thaws.
  assert transfer.unfreeze_phases(3, 30, 0) == [(30, None)]


def test_gradual_unfreezing_phases_freeze_the_right_params(tmp_path):
  config = tiny_config()
  model = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=8)
  initial = flat_vars(model)
  phases = transfer.unfreeze_phases(len(model.layer_groups('stage')), 12, 4)
  assert phases == [(4, 1), (4, 2), (4, None)]
  transfer.train_phases(config, model, labeled_digits(4), phases=phases, workdir=str(tmp_path),
                        mesh=train_lib.make_mesh(), seed=0, layer_decay=0.5)
  got = [pretrained.load_checkpoint_weights(tmp_path / f'phase_{p}') for p in range(3)]
  stage0 = lambda k: k.startswith(('backbone/units/0/', 'backbone/units/1/'))
  # Phase 0: head only, on cached features: the checkpoint holds nothing else.
  assert set(got[0]) == {'head/kernel', 'head/bias'}
  assert not np.array_equal(got[0]['head/kernel'], initial['head/kernel'])
  # Phase 1: stage 0 bit-identical (params and BN statistics); stage 1 and head trained.
  assert set(got[1]) == set(initial)
  for k, v in got[1].items():
    assert np.array_equal(v, initial[k]) == stage0(k), k
  # Phase 2: everything trains, starting from phase 1's weights.
  changed = {k for k, v in got[2].items() if not np.array_equal(v, got[1][k])}
  assert changed == set(initial), set(initial) - changed
  final = flat_vars(model)
  for k, v in got[2].items():
    np.testing.assert_array_equal(final[k], v)


def test_cached_linear_probe_equals_head_trained_through_frozen_model(tmp_path, monkeypatch):
  config = tiny_config()
  labeled, mesh, steps = labeled_digits(8), train_lib.make_mesh(), 12
  build = lambda: create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=8,
                               dropout=0.3, seed=1)
  # Full model, backbone frozen, no augmentation: the backbone runs in every step.
  full = build()
  before = flat_vars(full)
  loss_fn = classify.classification_loss(classify.make_preprocess(0.5, 0.5))
  iterator = data.train_iterator(labeled, batch_size=8, seed=3, num_classes=5)
  state, _, _ = classify.train_model(
      config, full, loss_fn, iterator, num_steps=steps, workdir=str(tmp_path / 'full'), mesh=mesh,
      rules=transfer.transfer_rules(full, trainable_stages=1), seed=3)
  # Cached: features once, then the head alone through the same train step.
  calls = []
  predict_dataset = train_lib.predict_dataset
  monkeypatch.setattr(train_lib, 'predict_dataset',
                      lambda *a, **k: calls.append(len(a[2])) or predict_dataset(*a, **k))
  probe = transfer.train_linear_probe(config, build(), labeled, num_steps=steps,
                                      workdir=str(tmp_path / 'probe'), mesh=mesh, seed=3)
  assert calls == [len(labeled)]
  head = jax.device_get(state.params['head'])
  np.testing.assert_allclose(probe.head.kernel.get_value(), head['kernel'].get_value(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(probe.head.bias.get_value(), head['bias'].get_value(), rtol=1e-4, atol=1e-6)
  assert not np.allclose(probe.head.kernel.get_value(), before['head/kernel'])
  after = flat_vars(probe)
  for k, v in before.items():  # Backbone params and BN statistics untouched.
    if not k.startswith('head/'):
      np.testing.assert_array_equal(after[k], v)
  frozen = {**jax.device_get(state.frozen), **jax.device_get(state.batch_stats)}
  for k, v in {path_str(p): x for p, x in nnx.to_flat_state(nnx.State(frozen))}.items():
    np.testing.assert_array_equal(np.asarray(v.get_value()), before[k])


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('transfer'))
  return workdir, transfer.run(tiny_config(), workdir, log=lambda *_: None)


def test_experiment_runs_every_method_and_resumes(finished):
  workdir, results = finished
  accuracy = results['accuracy'][2]
  assert list(accuracy) == list(transfer.METHODS)
  assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in accuracy.values())
  assert results['pretrain_accuracy'] > 0.5  # 22 steps on 5 classes.
  assert sorted(os.listdir(os.path.join(workdir, 'k_2', 'finetune', 'seed_0'))) == [
      'phase_0', 'phase_1', 'phase_2']
  table = transfer.results_table(tiny_config(), results)
  for method in transfer.METHODS:
    assert method in table
  assert 'k=2' in table and 'backbone 0.1x, LLRD 0.5, unfreeze a stage / 1 ep' in table
  logged = metrics.read_jsonl(os.path.join(workdir, 'pretrain', 'metrics.jsonl'))
  mtime = os.path.getmtime(os.path.join(workdir, 'pretrain', 'metrics.jsonl'))
  again = transfer.run(tiny_config(), workdir, log=lambda *_: None)
  assert again['accuracy'] == results['accuracy']
  assert os.path.getmtime(os.path.join(workdir, 'pretrain', 'metrics.jsonl')) == mtime, logged[-1]


def untrained_checkpoint(workdir, width):
  """A jaxtl checkpoint of a fresh width-`width` digits CNN (no training needed to load it)."""
  model = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=8, width=width)
  _, params, frozen, stats = train_lib.split_model(model)
  state = train_lib.init_state(params, frozen, stats, optax.sgd(0.1), seed=0)
  checkpointer = Checkpointer(str(workdir / 'checkpoints'), async_save=False)
  checkpointer.save(1, state)
  checkpointer.close()
  return str(workdir)


def test_bad_pretrained_weights_fail_before_training_and_overwrite_nothing(tmp_path):
  source = untrained_checkpoint(tmp_path / 'pretrain', width=0.5)
  other = tiny_config()
  other.pretrained = source
  other.model.kwargs.width = 1.0  # Another architecture than the checkpoint's.
  with pytest.raises(ValueError, match=r'(?s)Cannot load weights.*checkpoint \(3, 3, 1, 4\) vs model'):
    transfer.run(other, str(tmp_path / 'a'), log=lambda *_: None)
  assert not os.path.exists(tmp_path / 'a')
  model = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=8)
  before = flat_vars(model)
  (tmp_path / 'notes.txt').write_text('not weights')
  (tmp_path / 'fake.safetensors').write_bytes(b'\x00' * 64)
  with pytest.raises(ValueError, match='unknown suffix'):
    pretrained.load_pretrained(model, tmp_path / 'notes.txt')
  with pytest.raises(ValueError, match='not a valid safetensors file'):
    pretrained.load_pretrained(model, tmp_path / 'fake.safetensors')
  with pytest.raises(FileNotFoundError, match='No jaxtl checkpoint'):
    pretrained.load_pretrained(model, tmp_path)
  with pytest.raises(ValueError, match=r'(?s)Cannot load weights.*backbone/units/0/conv/kernel'):
    pretrained.load_pretrained(model, source)  # width 0.5 checkpoint vs width 1 model.
  for k, v in flat_vars(model).items():
    np.testing.assert_array_equal(v, before[k])
  other = tiny_config()
  other.pretrained = str(tmp_path / 'notes.txt')
  with pytest.raises(ValueError, match='unknown suffix'):
    transfer.run(other, str(tmp_path / 'b'), log=lambda *_: None)
  assert not os.path.exists(tmp_path / 'b')
  # The untrained width-0.5 checkpoint fits the tiny config's model: loads, head kept.
  fits = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=8, width=0.5, seed=7)
  head = fits.head.kernel.get_value()
  pretrained.load_pretrained(fits, source, dont_load=(r'^head/',))
  np.testing.assert_array_equal(fits.head.kernel.get_value(), head)


def test_bad_rules_and_configs_are_named(monkeypatch):
  model = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), base_channels=4)
  groups = CNNBackbone.layer_groups
  drop_stem = lambda self, level='block': groups(self, level)[level == 'block':]
  monkeypatch.setattr(CNNBackbone, 'layer_groups', drop_stem)
  with pytest.raises(ValueError, match=r'covered by no param rule.*backbone/units/0/'):
    train_lib.split_model(model, transfer.transfer_rules(model, trainable_stages=1))
  monkeypatch.setattr(CNNBackbone, 'layer_groups',
                      lambda self, level='block': groups(self, level) + [('unit/9',)])
  with pytest.raises(ValueError, match=r"\['\^backbone/unit/9/'\] match no parameter"):
    train_lib.split_model(model, transfer.transfer_rules(model, layer_decay=0.5))
  drop_stage = lambda self, level='block': groups(self, level)[level == 'stage':]
  monkeypatch.setattr(CNNBackbone, 'layer_groups', drop_stage)
  with pytest.raises(ValueError, match=r"no layer_groups\('stage'\) group contains"):
    transfer.transfer_rules(model)
  monkeypatch.undo()
  with pytest.raises(TypeError, match='no layer_groups'):
    transfer.transfer_rules(Classifier(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 2, 2, rngs=nnx.Rngs(0)))
  for key, value, message in [('methods', ('scratch', 'probe'), 'methods must be'),
                              ('target_classes', (4, 5), 'disjoint'),
                              ('shots', (0,), 'shots must be'),
                              ('param_rules', (('.*', 1.0),), 'param_rules must be')]:
    c = tiny_config()
    c[key] = value
    with pytest.raises(ValueError, match=message):
      transfer.validate(c)
