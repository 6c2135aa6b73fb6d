"""The training loop: data -> train_step -> metrics, checkpoints, preemption, resume.

`fit` drives any `jaxtl.train.make_train_step` step. Rerunning with the same
checkpoint directory resumes from the latest checkpoint (state and data
iterator), so a run killed at any point ends exactly where an
uninterrupted run would. SIGTERM saves a checkpoint and exits (code 143).
A non-finite loss stops the run with the step named; checkpoints are only
written after the steps before them were checked finite.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import tqdm

from jaxtl import train as train_lib
from jaxtl.checkpoint import Checkpointer
from jaxtl.metrics import MetricWriter


class Preempted(SystemExit):
  """Raised after the checkpoint on SIGTERM was saved; exit code 143."""

  def __init__(self, step: int):
    print(f'\nPreempted at step {step}; checkpoint saved. Rerun the same command to resume.',
          file=sys.stderr)
    super().__init__(143)


class _SigtermFlag:

  def __init__(self):
    self.raised = False
    self.previous = None

  def __enter__(self):
    try:
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not in the main thread: rely on orbax's preemption check only.
      self.previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def _flatten(tree, prefix=''):
  if isinstance(tree, str) and tree.startswith('{'):
    try:
      tree = json.loads(tree)
    except ValueError:
      pass
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix.rstrip('.'): tree}


def _check_same_run(saved: Any, current: Any, directory: str) -> None:
  """Refuses to resume a checkpoint written by a different config / round."""
  saved, current = _flatten(saved or {}), _flatten(json.loads(json.dumps(current or {})))
  diff = {k: (saved.get(k), current.get(k)) for k in saved.keys() | current.keys()
          if saved.get(k) != current.get(k)}
  if diff:
    lines = '\n'.join(f'  {k}: checkpoint {a!r} vs now {b!r}' for k, (a, b) in sorted(diff.items())[:12])
    raise ValueError(f'The checkpoint in {directory} was written by a different run:\n{lines}\n'
                     'Use a new --workdir, or rerun with the original config to resume.')


def _summarise(pending, last_good: int | None):
  """Host copies of pending step metrics; raises on the first non-finite step."""
  steps, metrics = zip(*pending)
  metrics = jax.device_get(list(metrics))
  for step, m in zip(steps, metrics):
    if not bool(m['finite']):
      where = f'step {last_good}' if last_good is not None else 'none yet'
      raise FloatingPointError(
          f'Loss or gradients became NaN/inf at step {step} (loss={float(m["loss"])}); the state '
          f'of that step was not applied. Last good checkpoint: {where}.')
  keys = [k for k in metrics[0] if k != 'finite']
  return {k: float(np.mean([m[k] for m in metrics])) for k in keys}


def fit(state: train_lib.TrainState, train_step: Callable, iterator: Iterator, *,
        num_steps: int, mesh: jax.sharding.Mesh, checkpointer: Checkpointer | None = None,
        writer: MetricWriter | None = None, log_every: int = 50, checkpoint_every: int = 500,
        eval_fn: Callable[[train_lib.TrainState], Mapping[str, float]] | None = None,
        eval_every: int | None = None, extra: tuple = (), meta: Any = None,
        desc: str = 'train') -> train_lib.TrainState:
  """Runs `train_step` until `state.step == num_steps`, resuming if a checkpoint exists.

  `iterator` yields host-local numpy batches and has get_state/set_state;
  `extra` is passed to every step (e.g. teacher variables).
  """
  state = train_lib.replicate(state, mesh)
  if checkpointer is not None and checkpointer.latest_step() is not None:
    _check_same_run(checkpointer.restore_meta(), meta, checkpointer.directory)
    state, data_state, _ = checkpointer.restore(state)
    iterator.set_state(data_state)
  step = int(jax.device_get(state.step))
  last_good = checkpointer.latest_step() if checkpointer else None
  pending, summary = [], {}
  # Only host 0 draws a bar; there, tqdm's own default (TQDM_DISABLE=1 turns it off) applies.
  quiet = {} if jax.process_index() == 0 else {'disable': True}
  bar = tqdm.tqdm(total=num_steps, initial=step, desc=desc, mininterval=2.0, leave=False,
                  dynamic_ncols=True, **quiet)
  try:
    with _SigtermFlag() as sigterm:
      while step < num_steps:
        state, metrics = train_step(state, train_lib.shard_batch(next(iterator), mesh), *extra)
        step += 1
        pending.append((step, metrics))
        preempted = sigterm.raised or (checkpointer is not None and checkpointer.reached_preemption(step))
        save = checkpointer is not None and (step % checkpoint_every == 0 or step == num_steps or preempted)
        if save or step % log_every == 0 or step == num_steps:
          summary = _summarise(pending, last_good)
          pending = []
          if writer:
            writer.write(step, summary, prefix=f'{desc}/')
          bar.set_postfix({k: f'{v:.4g}' for k, v in summary.items() if k in ('loss', 'accuracy')})
        bar.update(1)
        if save:
          checkpointer.save(step, state, iterator.get_state(), meta)
          last_good = step
        if eval_fn is not None and eval_every and (step % eval_every == 0 or step == num_steps):
          scores = eval_fn(state)
          if writer:
            writer.write(step, scores, prefix=f'{desc}_eval/')
        if preempted:
          raise Preempted(step)
  finally:
    # Whatever ends the loop (done, NaN stop, preemption, an error), the async
    # save in flight is finished before control leaves, so it is not lost.
    bar.close()
    if checkpointer is not None:
      checkpointer.wait()
  return state
