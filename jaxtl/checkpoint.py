"""Atomic, async, resumable checkpoints with orbax-checkpoint.

A checkpoint holds the train state pytree, the data iterator state and a
JSON `meta` record (config, round, ...). orbax writes each step to a
temporary directory and renames it only once complete, so a process killed
mid-save leaves the previous checkpoint as the latest good one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for (state, data_state, meta)."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True),
        item_names=('state', 'data', 'meta'))

  def good_steps(self) -> list[int]:
    """Steps whose directory orbax finalised (a copied or half-written step dir lacks
    `_CHECKPOINT_METADATA`; orbax's own temporary dirs are never listed)."""
    return sorted(s for s in self.manager.all_steps()
                  if os.path.exists(os.path.join(self.directory, str(s), '_CHECKPOINT_METADATA')))

  def latest_step(self) -> int | None:
    steps = self.good_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: Any = None, meta: Any = None) -> None:
    """Saves (asynchronously) unless `step` is already saved."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state if data_state is not None else {}),
        meta=ocp.args.JsonSave(meta if meta is not None else {})), force=True)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, Any, Any]:
    """(state, data_state, meta) of `step` (default latest), shaped and sharded like `template`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out['state'], out['data'], out['meta']

  def restore_meta(self, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
