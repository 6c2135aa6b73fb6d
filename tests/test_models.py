import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtl import optim
from jaxtl.models import create_model, num_params
from jaxtl.models.layers import drop_path_rates

CASES = [
    ('resnet18', dict(stem='small'), (16, 16, 3)),
    ('resnet50', dict(width=0.25), (32, 32, 3)),
    ('wide_resnet', dict(depth=10, width=1), (16, 16, 3)),
    ('cnn', dict(base_channels=8), (8, 8, 1)),
    ('mlp', dict(hidden=(16,)), (8, 8, 1)),
]


@pytest.mark.parametrize('name,kwargs,shape', CASES)
def test_registry_models_have_backbone_head_and_features(name, kwargs, shape):
  model = create_model(name, num_classes=7, image_shape=shape, **kwargs)
  model.eval()
  x = jnp.ones((2,) + shape)
  logits, feats = nnx.jit(lambda m, x: m(x, return_features=True))(model, x)
  assert logits.shape == (2, 7) and feats.shape == (2, model.num_features)
  paths = optim.param_paths(nnx.state(model, nnx.Param))
  assert {p.split('/')[0] for p in paths} == {'backbone', 'head'}
  np.testing.assert_allclose(model.head(feats), logits, rtol=1e-5, atol=1e-5)


def test_noise_is_on_in_train_mode_only():
  model = create_model('resnet18', num_classes=3, image_shape=(8, 8, 1), stem='small',
                       width=0.25, dropout=0.5, drop_path=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  forward = nnx.jit(lambda m, x, key: m(x, rngs=nnx.Rngs(dropout=key)))
  model.eval()
  a, b = forward(model, x, jax.random.key(0)), forward(model, x, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  model.train()
  c, d = forward(model, x, jax.random.key(0)), forward(model, x, jax.random.key(1))
  assert not np.allclose(c, d)
  with pytest.raises(ValueError, match='rngs'):
    nnx.jit(lambda m, x: m(x))(model, x)


def test_width_and_depth_multipliers_grow_the_student():
  small = create_model('resnet18', num_classes=10, image_shape=(8, 8, 1), stem='small', width=0.25)
  wide = create_model('resnet18', num_classes=10, image_shape=(8, 8, 1), stem='small', width=0.5)
  deep = create_model('resnet18', num_classes=10, image_shape=(8, 8, 1), stem='small', width=0.25,
                      depth_multiplier=2)
  assert num_params(small) < num_params(wide)
  assert num_params(small) < num_params(deep)
  assert len(deep.backbone.layer1) == 4
  cnn1 = create_model('cnn', num_classes=10, image_shape=(8, 8, 1))
  cnn2 = create_model('cnn', num_classes=10, image_shape=(8, 8, 1), width=2, depth=3)
  assert num_params(cnn2) > 3 * num_params(cnn1)


def test_stochastic_depth_decays_linearly():
  np.testing.assert_allclose(drop_path_rates(4, 0.2), [0.05, 0.1, 0.15, 0.2])
  model = create_model('cnn', num_classes=2, image_shape=(8, 8, 1), depth=2, stages=2, drop_path=0.2)
  rates = [u.drop_path.rate for u in model.backbone.units]
  assert rates[-1] == pytest.approx(0.2) and rates[1] == pytest.approx(0.1)


def test_bad_model_configs_are_named():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet19'.*resnet18"):
    create_model('resnet19', num_classes=2, image_shape=(8, 8, 1))
  with pytest.raises(ValueError, match=r"unknown argument\(s\) \['widht'\]"):
    create_model('cnn', num_classes=2, image_shape=(8, 8, 1), widht=2)
  with pytest.raises(ValueError, match='depth must be 6n'):
    create_model('wide_resnet', num_classes=2, image_shape=(8, 8, 1), depth=27)
  with pytest.raises(ValueError, match='dropout'):
    create_model('cnn', num_classes=2, image_shape=(8, 8, 1), dropout=1.5)
