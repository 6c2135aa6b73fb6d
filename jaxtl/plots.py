"""Figures saved next to experiment results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def accuracy_per_round(runs: dict, path: str, *, baseline: dict | None = None) -> str:
  """Test accuracy per round (mean and per-seed points) for Noisy Student runs.

  runs: {seed: [round result dicts with 'round' and 'test_accuracy']}.
  baseline: same shape, drawn dashed (e.g. the noise-free pseudo-label run).
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for label, group, style in (('Noisy Student', runs, '-o'), ('pseudo-label, no noise', baseline, '--s')):
    if not group:
      continue
    acc = np.array([[r['test_accuracy'] for r in rounds] for rounds in group.values()])
    x = np.arange(acc.shape[1])
    ax.plot(x, acc.mean(0), style, label=label)
    for row in acc:
      ax.plot(x, row, '.', color=ax.lines[-1].get_color(), alpha=0.4)
  ax.set_xlabel('round (0 = supervised teacher)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_xticks(np.arange(acc.shape[1]))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def accuracy_vs_shots(curves: dict, path: str, *, title: str = '') -> str:
  """Test accuracy (mean +- std over seeds) against labeled images per class, one line per method.

  curves: {label: {shots k: [accuracy in [0, 1] per seed]}}.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for label, by_shots in curves.items():
    shots = sorted(by_shots, key=int)
    acc = [100 * np.asarray(by_shots[k]) for k in shots]
    ax.errorbar([int(k) for k in shots], [a.mean() for a in acc], yerr=[a.std() for a in acc],
                marker='o', capsize=3, label=label)
  ax.set_xscale('log')
  ticks = sorted({int(k) for by_shots in curves.values() for k in by_shots})
  ax.set_xticks(ticks, [str(k) for k in ticks])
  ax.set_xlabel('labeled images per class (k)')
  ax.set_ylabel('test accuracy (%)')
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
