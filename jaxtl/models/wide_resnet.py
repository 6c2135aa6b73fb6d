"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation, FixMatch variant."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtl.models.layers import DropPath, batch_norm, conv, drop_path_rates, group_layers


class WideBlock(nnx.Module):

  def __init__(self, in_ch, ch, stride, drop_path, *, rngs):
    self.bn1 = batch_norm(in_ch, rngs=rngs)
    self.conv1 = conv(in_ch, ch, 3, stride, rngs=rngs)
    self.bn2 = batch_norm(ch, rngs=rngs)
    self.conv2 = conv(ch, ch, 3, rngs=rngs)
    self.shortcut = None if (in_ch == ch and stride == 1) else conv(in_ch, ch, 1, stride, rngs=rngs)
    self.drop_path = DropPath(drop_path)

  def __call__(self, x, rngs=None):
    y = nnx.relu(self.bn1(x))
    shortcut = x if self.shortcut is None else self.shortcut(y)
    y = self.conv1(y)
    y = self.conv2(nnx.relu(self.bn2(y)))
    return shortcut + self.drop_path(y, rngs)


class WideResNetBackbone(nnx.Module):
  """WRN-depth-k: 3 groups of (depth - 4) / 6 blocks, widths 16k, 32k, 64k."""

  def __init__(self, depth: int = 28, width: float = 2, *, in_channels: int = 3,
               drop_path: float = 0.0, rngs: nnx.Rngs):
    if (depth - 4) % 6 or depth < 10:
      raise ValueError(f'WideResNet depth must be 6n + 4 (e.g. 28), got {depth}')
    n = (depth - 4) // 6
    widths = [int(round(c * width)) for c in (16, 32, 64)]
    self.conv1 = conv(in_channels, 16, 3, rngs=rngs)
    rates = iter(drop_path_rates(3 * n, drop_path))
    in_ch = 16
    for i, ch in enumerate(widths):
      blocks = []
      for j in range(n):
        blocks.append(WideBlock(in_ch, ch, 2 if (i > 0 and j == 0) else 1, next(rates), rngs=rngs))
        in_ch = ch
      setattr(self, f'group{i + 1}', nnx.List(blocks))
    self.bn = batch_norm(in_ch, rngs=rngs)
    self.num_features = in_ch

  def __call__(self, x, rngs=None):
    x = self.conv1(x)
    for i in range(1, 4):
      for block in getattr(self, f'group{i}'):
        x = block(x, rngs)
    return jnp.mean(nnx.relu(self.bn(x)), axis=(1, 2))

  def layer_groups(self, level: str = 'block') -> list[tuple[str, ...]]:
    """Parameter path prefixes per layer, input -> output (see `layers.group_layers`).

    Stem 'conv1' first; then per block 'group<i>/<j>' ('block') or per stage
    all blocks of 'group<i>' ('stage'). The final pre-pooling 'bn' belongs
    to the last block.
    """
    stages = [[('conv1',)]] + [
        [(f'group{i}/{j}',) for j in range(len(getattr(self, f'group{i}')))] for i in range(1, 4)]
    stages[-1][-1] += ('bn',)
    return group_layers(stages, level)
