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
