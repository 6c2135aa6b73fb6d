"""Backbone + dropout + linear head: the shape every jaxtl model shares."""

from __future__ import annotations

import jax
from flax import nnx


class Classifier(nnx.Module):
  """`backbone` maps images (B, H, W, C) to features (B, F); `head` maps to logits.

  Transfer learning addresses the two parts by parameter path
  (`backbone/...`, `head/...`). Dropout before the head is Noisy Student's
  classifier noise; it and the backbone's stochastic depth are active only in
  train mode (`model.train()`), and then need `rngs` with a 'dropout' stream.
  """

  def __init__(self, backbone: nnx.Module, num_features: int, num_classes: int, *,
               dropout: float = 0.0, rngs: nnx.Rngs):
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    self.backbone = backbone
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(num_features, num_classes, rngs=rngs)
    self.num_features = num_features
    self.num_classes = num_classes

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
               return_features: bool = False):
    """x: (B, H, W, C) float -> logits (B, num_classes) [, features (B, F)]."""
    features = self.backbone(x, rngs)
    logits = self.head(self.dropout(features, rngs=rngs))
    return (logits, features) if return_features else logits

  def layer_groups(self, level: str = 'block') -> list[tuple[str, ...]]:
    """Full parameter path prefixes per layer, input -> output; the head is the last group.

    `level` 'block' (stem = layer 0, every block its own layer) or 'stage'
    (stem, then each stage); from the backbone's own `layer_groups`, since
    NNX state flattening sorts names ('units/10' before 'units/2').
    """
    if not hasattr(self.backbone, 'layer_groups'):
      raise TypeError(f'{type(self.backbone).__name__} has no layer_groups(level) method; add one '
                      'returning its parameter path prefixes per layer, input -> output.')
    groups = self.backbone.layer_groups(level)
    return [tuple(f'backbone/{p}' for p in group) for group in groups] + [('head',)]
