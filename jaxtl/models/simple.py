"""A small CNN and an MLP: fast models for tiny images and tests."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxtl.models.layers import DropPath, batch_norm, conv, drop_path_rates, group_layers


class ConvUnit(nnx.Module):
  """conv3x3 -> BN -> ReLU, residual when shapes allow (so stochastic depth applies)."""

  def __init__(self, in_ch, ch, drop_path, *, rngs):
    self.conv = conv(in_ch, ch, 3, rngs=rngs)
    self.bn = batch_norm(ch, rngs=rngs)
    self.residual = in_ch == ch
    self.drop_path = DropPath(drop_path if self.residual else 0.0)

  def __call__(self, x, rngs=None):
    y = nnx.relu(self.bn(self.conv(x)))
    return x + self.drop_path(y, rngs) if self.residual else y


class CNNBackbone(nnx.Module):
  """`stages` stages of `depth` conv units; width doubles and 2x2 max-pool between stages."""

  def __init__(self, *, width: float = 1.0, depth: int = 2, stages: int = 2,
               base_channels: int = 32, in_channels: int = 3, drop_path: float = 0.0,
               rngs: nnx.Rngs):
    if depth < 1 or stages < 1:
      raise ValueError(f'cnn depth and stages must be >= 1, got depth={depth}, stages={stages}')
    rates = iter(drop_path_rates(depth * stages, drop_path))
    units, in_ch = [], in_channels
    for s in range(stages):
      ch = max(1, int(round(base_channels * width * 2 ** s)))
      for _ in range(depth):
        units.append(ConvUnit(in_ch, ch, next(rates), rngs=rngs))
        in_ch = ch
    self.units = nnx.List(units)
    self.depth = depth
    self.num_features = in_ch

  def __call__(self, x, rngs=None):
    for i, unit in enumerate(self.units):
      x = unit(x, rngs)
      if (i + 1) % self.depth == 0 and i + 1 < len(self.units) and min(x.shape[1:3]) >= 2:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return jnp.mean(x, axis=(1, 2))

  def layer_groups(self, level: str = 'block') -> list[tuple[str, ...]]:
    """Parameter path prefixes per layer, input -> output (see `layers.group_layers`).

    'block': every conv unit 'units/<i>' (unit 0 is the stem); 'stage': the
    `depth` units of each stage.
    """
    units = [(f'units/{i}',) for i in range(len(self.units))]
    return group_layers([units[i:i + self.depth] for i in range(0, len(units), self.depth)], level)


class MLPBackbone(nnx.Module):
  """Flatten -> [Linear -> ReLU] * len(hidden)."""

  def __init__(self, *, input_size: int, hidden: Sequence[int] = (256, 256),
               width: float = 1.0, rngs: nnx.Rngs):
    sizes = [input_size] + [max(1, int(round(h * width))) for h in hidden]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.num_features = sizes[-1]

  def __call__(self, x, rngs=None):
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return x

  def layer_groups(self, level: str = 'block') -> list[tuple[str, ...]]:
    """Parameter path prefixes per layer, input -> output: 'layers/<i>' (block = stage)."""
    return group_layers([[(f'layers/{i}',)] for i in range(len(self.layers))], level)
