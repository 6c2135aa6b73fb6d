"""ResNet (He et al. 2016) in Flax NNX, torchvision parameter layout.

Parameter paths follow torchvision's names under `backbone` so that
`jaxtl.pretrained` maps `layer1.0.conv1.weight` to
`backbone/layer1/0/conv1/kernel`. Width and depth multipliers let a Noisy
Student round grow its student.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxtl.models.layers import DropPath, batch_norm, conv, drop_path_rates, group_layers

STAGE_BLOCKS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, in_ch: int, ch: int, stride: int, drop_path: float, *, rngs: nnx.Rngs):
    self.conv1 = conv(in_ch, ch, 3, stride, rngs=rngs)
    self.bn1 = batch_norm(ch, rngs=rngs)
    self.conv2 = conv(ch, ch, 3, rngs=rngs)
    self.bn2 = batch_norm(ch, rngs=rngs, zero_init=True)
    self.downsample = _downsample(in_ch, ch, stride, rngs=rngs)
    self.drop_path = DropPath(drop_path)

  def __call__(self, x, rngs=None):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(_shortcut(self.downsample, x) + self.drop_path(y, rngs))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, in_ch: int, ch: int, stride: int, drop_path: float, *, rngs: nnx.Rngs):
    out = ch * self.expansion
    self.conv1 = conv(in_ch, ch, 1, rngs=rngs)
    self.bn1 = batch_norm(ch, rngs=rngs)
    self.conv2 = conv(ch, ch, 3, stride, rngs=rngs)
    self.bn2 = batch_norm(ch, rngs=rngs)
    self.conv3 = conv(ch, out, 1, rngs=rngs)
    self.bn3 = batch_norm(out, rngs=rngs, zero_init=True)
    self.downsample = _downsample(in_ch, out, stride, rngs=rngs)
    self.drop_path = DropPath(drop_path)

  def __call__(self, x, rngs=None):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return nnx.relu(_shortcut(self.downsample, x) + self.drop_path(y, rngs))


def _downsample(in_ch, out_ch, stride, *, rngs):
  if stride == 1 and in_ch == out_ch:
    return None
  return nnx.List([conv(in_ch, out_ch, 1, stride, rngs=rngs), batch_norm(out_ch, rngs=rngs)])


def _shortcut(downsample, x):
  if downsample is None:
    return x
  return downsample[1](downsample[0](x))


class ResNetBackbone(nnx.Module):
  """Stem + 4 stages; returns globally average-pooled features (B, C)."""

  def __init__(self, block: str, stage_blocks: Sequence[int], *, width: float = 1.0,
               stem: str = 'imagenet', in_channels: int = 3, drop_path: float = 0.0,
               rngs: nnx.Rngs):
    if stem not in ('imagenet', 'small'):
      raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
    block_cls = BasicBlock if block == 'basic' else Bottleneck
    widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    self.stem = stem
    if stem == 'imagenet':  # 7x7/2 conv + 3x3/2 max-pool, for >= 64 px inputs.
      self.conv1 = conv(in_channels, widths[0], 7, 2, rngs=rngs)
    else:  # 3x3/1 conv, no pooling, for 8-32 px inputs.
      self.conv1 = conv(in_channels, widths[0], 3, 1, rngs=rngs)
    self.bn1 = batch_norm(widths[0], rngs=rngs)
    rates = iter(drop_path_rates(sum(stage_blocks), drop_path))
    in_ch = widths[0]
    for i, (ch, n) in enumerate(zip(widths, stage_blocks)):
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(in_ch, ch, stride, next(rates), rngs=rngs))
        in_ch = ch * block_cls.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.num_features = in_ch

  def __call__(self, x, rngs=None):
    x = nnx.relu(self.bn1(self.conv1(x)))
    if self.stem == 'imagenet':
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(1, 5):
      for block in getattr(self, f'layer{i}'):
        x = block(x, rngs)
    return jnp.mean(x, axis=(1, 2))

  def layer_groups(self, level: str = 'block') -> list[tuple[str, ...]]:
    """Parameter path prefixes per layer, input -> output (see `layers.group_layers`).

    Stem ('conv1', 'bn1') first; then per block 'layer<i>/<j>' ('block') or
    per stage all blocks of 'layer<i>' ('stage').
    """
    stages = [[('conv1', 'bn1')]] + [
        [(f'layer{i}/{j}',) for j in range(len(getattr(self, f'layer{i}')))] for i in range(1, 5)]
    return group_layers(stages, level)


def scaled_blocks(depth: int, depth_multiplier: float) -> tuple[str, tuple[int, ...]]:
  """Block kind and per-stage block counts for `depth`, scaled by a multiplier."""
  if depth not in STAGE_BLOCKS:
    raise ValueError(f'ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}')
  kind, blocks = STAGE_BLOCKS[depth]
  return kind, tuple(max(1, math.ceil(n * depth_multiplier)) for n in blocks)
