"""Shared layers: stochastic depth and helpers used by every model family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class DropPath(nnx.Module):
  """Stochastic depth: drops a residual branch per example, rescales survivors.

  Toggled like `nnx.Dropout` through its `deterministic` attribute
  (`model.train()` / `model.eval()`). Draws from the 'dropout' stream of the
  `rngs` passed at call time.
  """

  def __init__(self, rate: float):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f'drop_path rate must be in [0, 1), got {rate}')
    self.rate = rate
    self.deterministic = False

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    """x: (B, ...) residual branch output; returns the same shape and dtype."""
    if self.deterministic or self.rate == 0.0:
      return x
    if rngs is None:
      raise ValueError('DropPath in train mode needs `rngs` with a dropout stream.')
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(rngs.dropout(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


def drop_path_rates(num_blocks: int, final_rate: float) -> list[float]:
  """Linear decay of survival probability with block index (Huang et al. 2016).

  Block l of L (1-based) is dropped with rate l / L * final_rate, so the last
  block survives with probability 1 - final_rate (0.8 in Noisy Student).
  """
  return [final_rate * (i + 1) / num_blocks for i in range(num_blocks)]


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
  """Bias-free conv with torch-style symmetric padding (kernel // 2)."""
  pad = kernel // 2
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=False,
      kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
      rngs=rngs)


def batch_norm(ch: int, *, rngs: nnx.Rngs, zero_init: bool = False) -> nnx.BatchNorm:
  """BatchNorm with torch's defaults (momentum 0.1 -> 0.9 here, eps 1e-5)."""
  return nnx.BatchNorm(
      ch, momentum=0.9, epsilon=1e-5,
      scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones,
      rngs=rngs)


LEVELS = ('block', 'stage')


def group_layers(stages, level: str) -> list[tuple[str, ...]]:
  """Layer groups from a backbone's stages, in input -> output order.

  `stages`: per stage, its blocks, each a tuple of parameter path prefixes
  relative to the backbone. level 'block': every block is its own group;
  'stage': the blocks of a stage form one group.
  """
  if level == 'block':
    return [tuple(block) for stage in stages for block in stage]
  if level == 'stage':
    return [tuple(p for block in stage for p in block) for stage in stages]
  raise ValueError(f'level must be one of {LEVELS}, got {level!r}')
