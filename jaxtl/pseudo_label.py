"""Pseudo-labels: a teacher's eval-mode predictions turned into training targets.

As in Noisy Student (Xie et al. 2020): soft targets softmax(logits / T) or hard
one-hot targets (optionally label-smoothed); drop examples whose max
probability is below a threshold; then balance classes, duplicating examples
of rare classes and keeping the most confident examples of frequent ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxtl import data


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
  """Targets for a subset (with repeats) of an unlabeled source."""
  indices: np.ndarray     # int64 (M,) into the unlabeled source; repeats when balanced.
  targets: np.ndarray     # float32 (M, K) target distributions.
  confidence: np.ndarray  # float32 (M,) teacher max probability at T = 1.


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def make_targets(teacher_logits: np.ndarray, *, mode: str = 'soft', temperature: float = 1.0,
                 label_smoothing: float = 0.0) -> np.ndarray:
  """(N, K) logits -> (N, K) float32 targets: 'soft' softmax(z / T) or 'hard' one-hot."""
  if temperature <= 0:
    raise ValueError(f'Pseudo-label temperature must be > 0, got {temperature}')
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
  k = teacher_logits.shape[-1]
  if mode == 'soft':
    targets = softmax(teacher_logits, temperature)
  elif mode == 'hard':
    targets = np.eye(k, dtype=np.float32)[np.argmax(teacher_logits, -1)]
  else:
    raise ValueError(f"Pseudo-label mode must be 'soft' or 'hard', got {mode!r}")
  return ((1.0 - label_smoothing) * targets + label_smoothing / k).astype(np.float32)


def select(confidence: np.ndarray, predicted: np.ndarray, num_classes: int, *,
           threshold: float = 0.0, balance: bool = False, per_class: int = 0) -> np.ndarray:
  """Indices kept after confidence filtering and (optional) class balancing.

  Balancing brings every class that kept at least one example to `per_class`
  examples (0 = the mean kept count per class): the most confident first,
  cycling through a class's examples again when it has too few.
  """
  kept = np.flatnonzero(confidence >= threshold)
  if len(kept) == 0:
    raise ValueError(f'Confidence threshold {threshold} filtered out all {len(confidence)} '
                     f'unlabeled examples (max confidence {confidence.max():.3f}).')
  if not balance:
    return kept
  by_class = [kept[predicted[kept] == c] for c in range(num_classes)]
  present = [idx for idx in by_class if len(idx)]
  target = per_class or int(round(np.mean([len(idx) for idx in present])))
  out = []
  for idx in by_class:
    if len(idx):
      ranked = idx[np.argsort(-confidence[idx], kind='stable')]
      out.append(np.resize(ranked, target))  # np.resize cycles: duplicates rare classes.
  return np.sort(np.concatenate(out), kind='stable')


def pseudo_label(teacher_logits: np.ndarray, *, mode: str = 'soft', temperature: float = 1.0,
                 label_smoothing: float = 0.0, threshold: float = 0.0, balance: bool = False,
                 per_class: int = 0) -> PseudoLabels:
  """Targets, filtering and balancing from the teacher's (N, K) logits on unlabeled data."""
  if len(teacher_logits) == 0:
    raise ValueError('The unlabeled set is empty: nothing to pseudo-label.')
  probs = softmax(teacher_logits)
  confidence, predicted = probs.max(-1), probs.argmax(-1)
  indices = select(confidence, predicted, teacher_logits.shape[-1], threshold=threshold,
                   balance=balance, per_class=per_class)
  targets = make_targets(teacher_logits[indices], mode=mode, temperature=temperature,
                         label_smoothing=label_smoothing)
  return PseudoLabels(indices.astype(np.int64), targets, confidence[indices])


def report(labels: PseudoLabels, num_classes: int,
           hidden_labels: np.ndarray | None = None) -> dict[str, Any]:
  """Kept count per class, mean confidence and (if true labels exist) accuracy."""
  predicted = labels.targets.argmax(-1)
  out = {'kept': int(len(labels.indices)),
         'unique_kept': int(len(np.unique(labels.indices))),
         'kept_per_class': np.bincount(predicted, minlength=num_classes).tolist(),
         'mean_confidence': float(labels.confidence.mean())}
  if hidden_labels is not None:
    out['accuracy'] = float(np.mean(predicted == np.asarray(hidden_labels)[labels.indices]))
  return out


class PseudoLabeledSource(Sequence[dict]):
  """Records {'image', 'target'} of `source[indices[i]]` with `targets[i]`, lazily."""

  def __init__(self, source: Sequence[dict], labels: PseudoLabels):
    self.source, self.labels = source, labels

  def __len__(self) -> int:
    return len(self.labels.indices)

  def __getitem__(self, i):
    record = self.source[int(self.labels.indices[i])]
    return {'image': record['image'], 'target': self.labels.targets[i]}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = data.gather(self.source, self.labels.indices[indices])
    return {'image': batch['image'], 'target': self.labels.targets[indices]}
