"""Model registry: every model is a `Classifier` built by name + kwargs from a config.

>>> model = create_model('resnet18', num_classes=10, image_shape=(32, 32, 3), stem='small')
>>> model.backbone, model.head   # named parts that transfer learning addresses
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import jax
from flax import nnx

from jaxtl.models.classifier import Classifier
from jaxtl.models.layers import DropPath
from jaxtl.models.resnet import ResNetBackbone, scaled_blocks
from jaxtl.models.simple import CNNBackbone, MLPBackbone
from jaxtl.models.wide_resnet import WideResNetBackbone

__all__ = ['Classifier', 'DropPath', 'create_model', 'register', 'MODELS', 'num_params']


def _resnet(depth):
  def build(image_shape, rngs, *, width=1.0, depth_multiplier=1.0, stem='imagenet',
            drop_path=0.0):
    kind, blocks = scaled_blocks(depth, depth_multiplier)
    return ResNetBackbone(kind, blocks, width=width, stem=stem, in_channels=image_shape[-1],
                          drop_path=drop_path, rngs=rngs)
  return build


def _wide_resnet(image_shape, rngs, *, depth=28, width=2, drop_path=0.0):
  return WideResNetBackbone(depth, width, in_channels=image_shape[-1], drop_path=drop_path,
                            rngs=rngs)


def _cnn(image_shape, rngs, *, width=1.0, depth=2, stages=2, base_channels=32, drop_path=0.0):
  return CNNBackbone(width=width, depth=depth, stages=stages, base_channels=base_channels,
                     in_channels=image_shape[-1], drop_path=drop_path, rngs=rngs)


def _mlp(image_shape, rngs, *, hidden=(256, 256), width=1.0):
  size = 1
  for d in image_shape:
    size *= d
  return MLPBackbone(input_size=size, hidden=tuple(hidden), width=width, rngs=rngs)


MODELS: dict[str, Callable[..., nnx.Module]] = {
    **{f'resnet{d}': _resnet(d) for d in (18, 34, 50, 101, 152)},
    'wide_resnet': _wide_resnet,
    'cnn': _cnn,
    'mlp': _mlp,
}


def register(name: str, backbone_fn: Callable[..., nnx.Module]) -> None:
  """Adds `backbone_fn(image_shape, rngs, **kwargs) -> backbone with .num_features`."""
  MODELS[name] = backbone_fn


def create_model(name: str, *, num_classes: int, image_shape: tuple[int, int, int],
                 seed: int | jax.Array = 0, dropout: float = 0.0, **kwargs: Any) -> Classifier:
  """Builds registered model `name` for images of `image_shape` (H, W, C).

  kwargs go to the backbone (width, depth_multiplier, drop_path, stem, ...);
  unknown names or kwargs raise a ValueError that lists the valid choices.
  """
  if name not in MODELS:
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(f'Unknown model {name!r}.{hint} Registered models: {sorted(MODELS)}')
  fn = MODELS[name]
  accepted = [p for p in inspect.signature(fn).parameters if p not in ('image_shape', 'rngs')]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(f'Model {name!r} got unknown argument(s) {unknown}; it accepts {accepted} '
                     'plus num_classes, image_shape, seed and dropout.')
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'dropout must be in [0, 1), got {dropout}')
  rngs = nnx.Rngs(params=seed)
  backbone = fn(tuple(image_shape), rngs, **kwargs)
  return Classifier(backbone, backbone.num_features, num_classes, dropout=dropout, rngs=rngs)


def num_params(model: nnx.Module) -> int:
  """Number of scalar parameters (nnx.Param leaves) of `model`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
