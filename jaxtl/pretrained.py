"""Pretrained weights: torchvision / timm ResNet checkpoints and jaxtl checkpoints.

Weights travel as flat dicts `{'/'-joined jaxtl path: np.ndarray}`, e.g.
`backbone/layer1/0/conv1/kernel` (HWIO) or `head/kernel` (in, out), and are
written into an NNX model by `merge_weights`, which checks names and shapes
first and changes nothing unless everything fits.

>>> model = create_model('resnet50', num_classes=10, image_shape=(224, 224, 3))
>>> load_pretrained(model, 'resnet50.safetensors')   # new head keeps its init
>>> load_pretrained(model, 'runs/teacher')          # a jaxtl workdir (latest step)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxtl import optim

__all__ = ['load_state_dict', 'from_torchvision_resnet', 'merge_weights', 'find_step_dir',
           'load_checkpoint_weights', 'read_weights', 'load_pretrained']

TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
SAFETENSORS_SUFFIX = '.safetensors'
_EXPECTED_FILE = f'a {SAFETENSORS_SUFFIX} file or a torch state dict ({", ".join(TORCH_SUFFIXES)})'
_TORCH_LEAF = {'running_mean': 'mean', 'running_var': 'var'}
_STATE_PARTS = ('params', 'frozen', 'batch_stats', 'ema_params')


# ------------------------------------------------------------------ torch / safetensors files

def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch-style state dict {'layer1.0.conv1.weight': array, ...} from a file.

  `.safetensors` is read with safetensors' numpy API (no torch needed);
  `.pth`/`.pt`/`.bin` with `torch.load(weights_only=True)`, accepting a raw
  state dict or a dict holding it under 'state_dict' or 'model'. Raises
  ValueError for a missing file or one that is not such a checkpoint.
  """
  path = Path(path)
  if not path.is_file():
    raise ValueError(f'{path} is not a file; expected {_EXPECTED_FILE}.')
  if path.suffix == SAFETENSORS_SUFFIX:
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files.
      raise ValueError(f'{path} is not a valid safetensors file: {e}') from e
  if path.suffix in TORCH_SUFFIXES:
    return _load_torch(path)
  raise ValueError(f'{path} has an unknown suffix {path.suffix!r}; expected {_EXPECTED_FILE}.')


def _load_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'Reading {path} needs PyTorch: pip install "jaxtl[torch]" '
                      f'(or convert it to {SAFETENSORS_SUFFIX}).') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # Unpickling / zip errors of many types for non-checkpoint bytes.
    raise ValueError(f'{path} is not a torch checkpoint readable with weights_only=True: {e}') from e
  if isinstance(obj, Mapping):
    obj = next((obj[k] for k in ('state_dict', 'model') if isinstance(obj.get(k), Mapping)), obj)
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{path} holds a {type(obj).__name__}; expected a non-empty state dict.')
  not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise ValueError(f'{path}: state dict entries {not_tensors[:8]} are not tensors.')
  return {k: _tensor_to_numpy(v, torch) for k, v in obj.items()}


def _tensor_to_numpy(t, torch) -> np.ndarray:
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits.
    return t.view(torch.int16).numpy().view(jnp.bfloat16)
  return t.numpy()


def from_torchvision_resnet(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames and transposes a torchvision (or timm) ResNet state dict for jaxtl.

  conv `weight` (O, I, kH, kW) -> `kernel` (kH, kW, I, O); BN weight/bias/
  running_mean/running_var -> scale/bias/mean/var; `fc.weight` (out, in) ->
  `head/kernel` (in, out), `fc.bias` -> `head/bias`; every other key goes
  under `backbone/`. `num_batches_tracked` is dropped and a DataParallel
  `module.` prefix stripped. Unknown keys are renamed the same way, so that
  `merge_weights` reports them as unexpected.
  """
  out = {}
  for key, value in state_dict.items():
    *parents, leaf = key.removeprefix('module.').split('.')
    if leaf == 'num_batches_tracked':
      continue
    value = np.asarray(value)
    if leaf == 'weight':
      name, value = _convert_weight(value)
    else:
      name = _TORCH_LEAF.get(leaf, leaf)
    prefix = 'head' if parents == ['fc'] else '/'.join(['backbone', *parents])
    out[f'{prefix}/{name}'] = value
  return out


def _convert_weight(w: np.ndarray) -> tuple[str, np.ndarray]:
  if w.ndim == 4:  # conv (O, I, kH, kW) -> (kH, kW, I, O)
    return 'kernel', w.transpose(2, 3, 1, 0)
  if w.ndim == 2:  # linear (out, in) -> (in, out)
    return 'kernel', w.T
  return ('scale', w) if w.ndim == 1 else ('weight', w)  # norm scale


# ------------------------------------------------------------------ merging into a model

def merge_weights(model: nnx.Module, weights: Mapping[str, np.ndarray | jax.Array], *,
                  dont_load: Sequence[str] = (r'^head/',)) -> list[str]:
  """Overwrites `model`'s nnx.Param / nnx.BatchStat variables in place from `weights`.

  Variables whose path matches a `dont_load` regex (`re.search`) keep their
  current values, and `weights` entries matching one are ignored. Any other
  model variable missing from `weights`, name in `weights` the model lacks,
  shape mismatch, or `dont_load` regex matching no model variable raises one
  ValueError listing all of them, before anything is modified. Values are
  cast to each variable's dtype. Returns the loaded paths in model order.
  """
  variables = _model_variables(model)
  skip = [re.compile(r) for r in dont_load]
  skipped = lambda name: any(r.search(name) for r in skip)
  problems = [f'dont_load regex {r.pattern!r} matches no model variable' for r in skip
              if not any(r.search(name) for name in variables)]
  problems += [f'{name}: in the checkpoint but not in the model' for name in weights
               if name not in variables and not skipped(name)]
  to_load = [name for name in variables if not skipped(name)]
  for name in to_load:
    model_shape = tuple(variables[name].get_value().shape)
    if name not in weights:
      problems.append(f'{name}: in the model {model_shape} but not in the checkpoint')
    elif tuple(np.shape(weights[name])) != model_shape:
      problems.append(f'{name}: checkpoint {tuple(np.shape(weights[name]))} vs model {model_shape}')
  if problems:
    raise ValueError(f'Cannot load weights into {type(model).__name__} ({len(problems)} problem(s); '
                     f'dont_load={list(dont_load)}):\n  ' + '\n  '.join(problems))
  for name in to_load:
    variable = variables[name]
    variable.set_value(jnp.asarray(weights[name], dtype=variable.get_value().dtype))
  return to_load


def _model_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  """'/'-path -> the model's own Param / BatchStat objects (assigning them updates the model)."""
  return {optim.path_str(path): node for path, node in nnx.iter_graph(model)
          if isinstance(node, (nnx.Param, nnx.BatchStat))}


# ------------------------------------------------------------------ jaxtl checkpoints

def find_step_dir(path: str | os.PathLike) -> Path:
  """The step dir `<...>/checkpoints/<step>` for a workdir, checkpoints dir or step dir.

  A workdir or checkpoints dir gives its latest step. Raises FileNotFoundError
  when `path` holds no jaxtl checkpoint.
  """
  path = Path(path)
  if path.name.isdigit() and (path / 'state').is_dir():
    return path
  root = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  # Only steps orbax finalised (see jaxtl.checkpoint.Checkpointer.good_steps).
  steps = [int(d.name) for d in root.iterdir() if d.name.isdigit() and (d / 'state').is_dir()
           and (d / '_CHECKPOINT_METADATA').exists()] if root.is_dir() else []
  if not steps:
    raise FileNotFoundError(f'No jaxtl checkpoint in {path}: expected a workdir with '
                            'checkpoints/<step>/state, a checkpoints dir, or a step dir.')
  return root / str(max(steps))


def load_checkpoint_weights(path: str | os.PathLike, *, use_ema: bool = True
                            ) -> dict[str, np.ndarray]:
  """Flat {path: np.ndarray} of a jaxtl checkpoint's params, frozen params and batch stats.

  `path` as in `find_step_dir`. With `use_ema` and EMA params saved, they
  replace the trainable params. Reads the saved 'state' item without a
  template (numpy on host; the optimizer state is not read).
  """
  state_dir = find_step_dir(path) / 'state'
  saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree
  wanted = {k: saved[k] for k in _STATE_PARTS if k in saved}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
  ema = tree.get('ema_params')
  params = ema if use_ema and ema is not None else tree['params']
  return {**_flatten_state(params), **_flatten_state(tree.get('frozen')),
          **_flatten_state(tree.get('batch_stats'))}


def _flatten_state(tree) -> dict[str, np.ndarray]:
  """Nested dicts (a restored nnx.State) -> {'/'-path: array}.

  nnx.State pytrees restore with a trailing 'value' level under each
  variable ('head/kernel/value'); it is dropped when every leaf has it.
  """
  flat = {optim.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  if flat and all(k.endswith('/value') for k in flat):
    flat = {k.removesuffix('/value'): v for k, v in flat.items()}
  return flat


# ------------------------------------------------------------------ entry point

def read_weights(path: str | os.PathLike, *, use_ema: bool = True) -> dict[str, np.ndarray]:
  """Flat {jaxtl path: np.ndarray} from a jaxtl checkpoint directory or a torch ResNet file.

  `path` is a directory (a jaxtl workdir, its `checkpoints` dir or one step
  dir; see `load_checkpoint_weights`) or a torchvision/timm ResNet file
  (`.safetensors`, `.pth`, `.pt`, `.bin`), converted to jaxtl's names.
  """
  if Path(path).is_dir():
    return load_checkpoint_weights(path, use_ema=use_ema)
  return from_torchvision_resnet(load_state_dict(path))


def load_pretrained(model: nnx.Module, path: str | os.PathLike, *,
                    dont_load: Sequence[str] = (r'^head/',), use_ema: bool = True) -> nnx.Module:
  """Loads pretrained weights (see `read_weights`) into `model` in place and returns it.

  `dont_load` regexes name the variables that keep their init (by default
  the head, so the number of classes may differ); see `merge_weights` for
  the checks.
  """
  merge_weights(model, read_weights(path, use_ema=use_ema), dont_load=dont_load)
  return model
