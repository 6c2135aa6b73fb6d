import numpy as np
import pytest

from jaxtl import pseudo_label as pl


def _logits():
  # 6 examples, 3 classes; predicted classes 0,0,0,0,1,2 with varying confidence.
  return np.log(np.array([
      [0.90, 0.05, 0.05], [0.60, 0.20, 0.20], [0.80, 0.10, 0.10], [0.34, 0.33, 0.33],
      [0.10, 0.70, 0.20], [0.05, 0.05, 0.90]]))


def test_targets_soft_hard_and_smoothing():
  z = _logits()
  soft = pl.make_targets(z, mode='soft')
  np.testing.assert_allclose(soft, np.exp(z) / np.exp(z).sum(-1, keepdims=True), rtol=1e-6)
  hot = pl.make_targets(z, mode='soft', temperature=4.0)
  assert np.all(hot.max(-1) < soft.max(-1))  # Higher T flattens.
  hard = pl.make_targets(z, mode='hard', label_smoothing=0.3)
  np.testing.assert_allclose(hard[0], [0.8, 0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(hard.sum(-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='temperature must be > 0'):
    pl.make_targets(z, temperature=0.0)
  with pytest.raises(ValueError, match="mode must be 'soft' or 'hard'"):
    pl.make_targets(z, mode='sharp')


def test_threshold_and_balance_like_the_paper():
  z = _logits()
  labels = pl.pseudo_label(z, mode='hard', threshold=0.5)
  np.testing.assert_array_equal(labels.indices, [0, 1, 2, 4, 5])  # 0.34 dropped.
  balanced = pl.pseudo_label(z, mode='hard', threshold=0.5, balance=True, per_class=2)
  counts = np.bincount(balanced.targets.argmax(-1), minlength=3)
  np.testing.assert_array_equal(counts, [2, 2, 2])
  # Frequent class 0 keeps its two most confident (0 and 2), rare classes are duplicated.
  np.testing.assert_array_equal(balanced.indices, [0, 2, 4, 4, 5, 5])
  mean_balanced = pl.pseudo_label(z, threshold=0.5, balance=True)
  assert len(mean_balanced.indices) == 3 * 2  # round(mean(3, 1, 1)) = 2 per class.


def test_report_and_source():
  z = _logits()
  labels = pl.pseudo_label(z, mode='soft', threshold=0.5)
  rep = pl.report(labels, 3, hidden_labels=np.array([0, 1, 0, 0, 1, 1]))
  assert rep['kept'] == 5 and rep['kept_per_class'] == [3, 1, 1]
  assert rep['accuracy'] == pytest.approx(3 / 5)
  assert 0.5 < rep['mean_confidence'] < 1.0
  source = [{'image': np.full((2, 2, 1), i, np.uint8), 'hidden_label': 0} for i in range(6)]
  ps = pl.PseudoLabeledSource(source, labels)
  assert len(ps) == 5 and set(ps[3]) == {'image', 'target'}
  assert ps[3]['image'][0, 0, 0] == 4
  np.testing.assert_allclose(ps[3]['target'], labels.targets[3])


def test_bad_inputs():
  with pytest.raises(ValueError, match='unlabeled set is empty'):
    pl.pseudo_label(np.zeros((0, 3)))
  with pytest.raises(ValueError, match='filtered out all 6'):
    pl.pseudo_label(_logits(), threshold=0.95)
