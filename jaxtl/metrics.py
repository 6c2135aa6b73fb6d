"""Metric sinks: JSON lines, TensorBoard event files (tensorboardX, TF-free), tables."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import jax


class MetricWriter:
  """Appends `{'step': s, **scalars}` to workdir/metrics.jsonl and TensorBoard events."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.is_main = jax.process_index() == 0
    self.tb = None
    if tensorboard and self.is_main:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = '') -> None:
    if not self.is_main:
      return
    scalars = {f'{prefix}{k}': float(v) for k, v in scalars.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, int(step))
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
  """Plain-text table with right-aligned columns (floats formatted to 4 digits)."""
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  cells = [list(map(str, header))] + [[fmt(v) for v in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: '  '.join(c.rjust(w) for c, w in zip(r, widths))
  return '\n'.join([line(cells[0]), '  '.join('-' * w for w in widths)] + [line(r) for r in cells[1:]])


def mean_std(values: Sequence[float]) -> str:
  """'mean +- std' in percent for accuracies in [0, 1]."""
  import numpy as np
  v = 100 * np.asarray(values, dtype=float)
  return f'{v.mean():.2f} +- {v.std():.2f}'
