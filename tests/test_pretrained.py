"""Tests for jaxtl.pretrained: torchvision ResNet conversion and jaxtl checkpoint loading."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtl import pretrained, train
from jaxtl.checkpoint import Checkpointer
from jaxtl.models import create_model
from jaxtl.optim import path_str

IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 10


def flat_vars(tree):
  """{'/'-path: np.ndarray} of the Param and BatchStat variables of a model or an nnx.State."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Any(nnx.Param, nnx.BatchStat))
  return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(tree)}


def max_rel_error(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


# ------------------------------------------------------------------ torch ResNets

@pytest.fixture(scope='module')
def torch_resnets(tmp_path_factory):
  """{arch: (torch model, state dict path by format, input NCHW float32, torch logits)}."""
  torch = pytest.importorskip('torch')
  from safetensors.torch import save_file
  from torch_resnet import random_resnet  # tests/ is on sys.path (pytest's prepend import mode)
  torch.set_num_threads(2)
  out, root = {}, tmp_path_factory.mktemp('torch')
  for i, arch in enumerate(('resnet18', 'resnet50')):
    model = random_resnet(arch, NUM_CLASSES, seed=i)
    sd = model.state_dict()
    files = {'safetensors': root / f'{arch}.safetensors', 'pth': root / f'{arch}.pth'}
    save_file({k: v.contiguous() for k, v in sd.items()}, files['safetensors'])
    torch.save(sd, files['pth'])
    x = torch.randn(2, 3, *IMAGE_SHAPE[:2], generator=torch.Generator().manual_seed(i))
    with torch.no_grad():
      logits = model(x).numpy()
    out[arch] = (model, files, x.numpy(), logits)
  return out


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_torchvision_resnet_logits_match_torch(torch_resnets, arch, fmt):
  _, files, x, expected = torch_resnets[arch]
  model = create_model(arch, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, seed=3)
  pretrained.load_pretrained(model, files[fmt], dont_load=())
  model.eval()
  logits = model(jnp.asarray(x.transpose(0, 2, 3, 1)))
  err = max_rel_error(logits, expected)
  print(f'{arch} {fmt}: max relative error {err:.2e}')
  assert logits.dtype == jnp.float32
  assert err <= 1e-4


def test_converted_resnet_is_a_distillation_teacher(torch_resnets):
  from jaxtl import distill
  _, files, x, expected = torch_resnets['resnet18']
  model = create_model('resnet18', num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, seed=3)
  teacher = distill.load_teacher(model, files['safetensors'])
  logits = distill.teacher_forward([teacher.model_def], [teacher.variables],
                                   jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert logits.shape == (1, 2, NUM_CLASSES)
  assert max_rel_error(logits[0], expected) <= 1e-4
  with pytest.raises(ValueError, match='predict 10 classes but the student has 5'):
    distill.load_teacher(create_model('resnet18', num_classes=5, image_shape=IMAGE_SHAPE),
                         files['safetensors'])


def test_state_dict_formats_agree_and_convert(torch_resnets, tmp_path):
  torch = pytest.importorskip('torch')
  model, files, _, _ = torch_resnets['resnet18']
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  wrapped = tmp_path / 'wrapped.pt'
  torch.save({'state_dict': model.state_dict(), 'epoch': 3}, wrapped)
  for path in (files['safetensors'], files['pth'], wrapped):
    loaded = pretrained.load_state_dict(path)
    assert loaded.keys() == sd.keys()
    for k in sd:
      np.testing.assert_array_equal(loaded[k], sd[k])
  w = pretrained.from_torchvision_resnet(sd)
  assert not any('num_batches_tracked' in k for k in w)
  np.testing.assert_array_equal(w['backbone/conv1/kernel'], sd['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(w['backbone/layer2/0/downsample/1/var'],
                                sd['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(w['backbone/layer1/1/bn2/scale'], sd['layer1.1.bn2.weight'])
  np.testing.assert_array_equal(w['head/kernel'], sd['fc.weight'].T)
  assert list(pretrained.from_torchvision_resnet({'foo.bar.weight': np.ones(3)})) == [
      'backbone/foo/bar/scale']


def test_default_dont_load_keeps_new_head(torch_resnets):
  torch_model, files, _, _ = torch_resnets['resnet18']
  model = create_model('resnet18', num_classes=7, image_shape=IMAGE_SHAPE, seed=5)
  fresh = flat_vars(create_model('resnet18', num_classes=7, image_shape=IMAGE_SHAPE, seed=5))
  weights = pretrained.from_torchvision_resnet(pretrained.load_state_dict(files['safetensors']))
  loaded = pretrained.merge_weights(model, weights)
  got = flat_vars(model)
  assert set(loaded) == set(got) - {'head/kernel', 'head/bias'}
  for name in ('head/kernel', 'head/bias'):
    np.testing.assert_array_equal(got[name], fresh[name])
  for name in loaded:
    np.testing.assert_array_equal(got[name], weights[name])
  assert not np.array_equal(got['backbone/bn1/mean'], fresh['backbone/bn1/mean'])
  np.testing.assert_array_equal(got['backbone/bn1/mean'],
                                torch_model.bn1.running_mean.numpy())


def test_wrong_architecture_lists_every_problem_and_changes_nothing(torch_resnets):
  _, files, _, _ = torch_resnets['resnet50']
  model = create_model('resnet18', num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE)
  before = flat_vars(model)
  with pytest.raises(ValueError) as info:
    pretrained.load_pretrained(model, files['pth'], dont_load=())
  msg = str(info.value)
  assert 'backbone/layer1/0/conv1/kernel: checkpoint (1, 1, 64, 64) vs model (3, 3, 64, 64)' in msg
  assert 'head/kernel: checkpoint (2048, 10) vs model (512, 10)' in msg
  assert 'backbone/layer1/0/conv3/kernel: in the checkpoint but not in the model' in msg
  assert 'backbone/layer4/2/bn3/var: in the checkpoint but not in the model' in msg
  # conv1 fits in both architectures, yet nothing was written.
  after = flat_vars(model)
  for name in before:
    np.testing.assert_array_equal(after[name], before[name])


def test_missing_weight_and_unmatched_dont_load(torch_resnets):
  _, files, _, _ = torch_resnets['resnet18']
  weights = pretrained.from_torchvision_resnet(pretrained.load_state_dict(files['safetensors']))
  del weights['backbone/layer3/1/bn1/mean']
  model = create_model('resnet18', num_classes=3, image_shape=IMAGE_SHAPE)
  with pytest.raises(ValueError, match=r'layer3/1/bn1/mean: in the model \(256,\) but not in the '
                     r'checkpoint') as info:
    pretrained.merge_weights(model, weights, dont_load=(r'^head/', r'^classifier/'))
  assert "dont_load regex '^classifier/' matches no model variable" in str(info.value)
  assert "'^head/' matches no" not in str(info.value)


@pytest.mark.parametrize('name, content', [
    ('random.pth', np.random.default_rng(0).bytes(4096)),
    ('random.safetensors', np.random.default_rng(1).bytes(4096)),
    ('config.json', json.dumps({'num_classes': 10}).encode()),
    ('config.pth', json.dumps({'num_classes': 10}).encode()),
    ('missing.safetensors', None),
])
def test_not_a_checkpoint_file(tmp_path, name, content):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  model = create_model('resnet18', num_classes=3, image_shape=IMAGE_SHAPE)
  with pytest.raises(ValueError, match='expected|not a') as info:
    pretrained.load_pretrained(model, path)
  assert str(path) in str(info.value)


# ------------------------------------------------------------------ jaxtl checkpoints

def _saved_cnn(workdir, *, ema, steps=(1, 5)):
  """Saves a cnn TrainState (distinct values per step) under workdir; returns the states."""
  model = create_model('cnn', num_classes=5, image_shape=(8, 8, 1), seed=0)
  _, params, frozen, batch_stats = train.split_model(
      model, [(r'^backbone/units/0/', 'frozen'), ('.*', 1.0)])
  base = train.init_state(params, frozen, batch_stats, optax.adam(1e-3), seed=0, ema=ema)
  checkpointer = Checkpointer(str(workdir / 'checkpoints'))
  states = {}
  for step in steps:
    shift = lambda tree, d: jax.tree.map(lambda x: x + d, tree)
    states[step] = base.replace(
        step=jnp.asarray(step, jnp.int32), params=shift(base.params, step),
        frozen=shift(base.frozen, 10 * step), batch_stats=shift(base.batch_stats, 100 * step),
        ema_params=None if not ema else shift(base.params, -step))
    checkpointer.save(step, states[step])
  checkpointer.wait()
  checkpointer.close()
  return states


def _check_loaded(model, fresh, state, params):
  got = flat_vars(model)
  expected = {**flat_vars(params), **flat_vars(state.frozen), **flat_vars(state.batch_stats)}
  assert any(k.startswith('backbone/units/0/') for k in flat_vars(state.frozen))
  for name, value in got.items():
    if name.startswith('head/'):
      np.testing.assert_array_equal(value, fresh[name])
    else:
      np.testing.assert_array_equal(value, expected[name])
      assert not np.array_equal(value, fresh[name])


@pytest.mark.parametrize('where', ['workdir', 'checkpoints', 'step'])
def test_jaxtl_checkpoint_round_trip(tmp_path, where):
  states = _saved_cnn(tmp_path, ema=False)
  path = {'workdir': tmp_path, 'checkpoints': tmp_path / 'checkpoints',
          'step': tmp_path / 'checkpoints' / '1'}[where]
  step = 1 if where == 'step' else 5  # latest by default
  model = create_model('cnn', num_classes=3, image_shape=(8, 8, 1), seed=1)
  fresh = flat_vars(create_model('cnn', num_classes=3, image_shape=(8, 8, 1), seed=1))
  assert pretrained.load_pretrained(model, path) is model
  _check_loaded(model, fresh, states[step], states[step].params)


def test_jaxtl_checkpoint_prefers_ema(tmp_path):
  states = _saved_cnn(tmp_path, ema=True, steps=(2,))
  fresh = flat_vars(create_model('cnn', num_classes=3, image_shape=(8, 8, 1), seed=1))
  for use_ema, params in ((True, states[2].ema_params), (False, states[2].params)):
    model = create_model('cnn', num_classes=3, image_shape=(8, 8, 1), seed=1)
    pretrained.load_pretrained(model, tmp_path, use_ema=use_ema)
    _check_loaded(model, fresh, states[2], params)


def test_directory_without_checkpoint(tmp_path):
  (tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1').mkdir(parents=True)
  model = create_model('cnn', num_classes=3, image_shape=(8, 8, 1))
  with pytest.raises(FileNotFoundError, match='No jaxtl checkpoint') as info:
    pretrained.load_pretrained(model, tmp_path)
  assert str(tmp_path) in str(info.value)
