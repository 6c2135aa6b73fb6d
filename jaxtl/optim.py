"""Optimizers from config, and per-parameter rules for freezing and learning rates.

Parameters are addressed by their '/'-joined NNX paths, e.g.
`backbone/layer1/0/conv1/kernel` or `head/kernel`. A rule list
`[(regex, multiplier_or_'frozen'), ...]` is matched with `re.search`; the
first match wins, every parameter must be covered and every rule must match
something. Frozen parameters are split off before differentiation (see
`jaxtl.train`); the rest get `optax.partition`-ed learning-rate multipliers.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

FROZEN = 'frozen'
Rule = tuple[str, Any]  # (regex, float multiplier | 'frozen')


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined parameter path from NNX path tuples or jax key paths (Variable `.value` dropped)."""
  parts = []
  for p in path:
    if isinstance(p, jax.tree_util.GetAttrKey):
      continue
    parts.append(str(getattr(p, 'key', getattr(p, 'idx', p))))
  return '/'.join(parts)


def param_paths(params) -> list[str]:
  """'/'-joined paths of every leaf of an nnx.State (or nested dict), in flattening order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def resolve_rules(paths: Iterable[str], rules: Sequence[Rule], *,
                  check_unused: bool = True) -> dict[str, Any]:
  """Maps each path to the value of the first rule whose regex matches it.

  Raises ValueError for invalid rule values, rules that match no parameter
  (if `check_unused`), and parameters no rule covers (listing them).
  """
  paths = list(paths)
  compiled = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f'A param rule must be (regex, multiplier or {FROZEN!r}), got {rule!r}')
    regex, value = rule
    if value != FROZEN and (not isinstance(value, (int, float)) or value < 0):
      raise ValueError(f'Rule {regex!r}: value must be a multiplier >= 0 or {FROZEN!r}, got {value!r}')
    compiled.append((re.compile(regex), regex, value))
  out, used = {}, set()
  for path in paths:
    for pattern, regex, value in compiled:
      if pattern.search(path):
        out[path] = value
        used.add(regex)
        break
  unused = [regex for _, regex, _ in compiled if regex not in used]
  if unused and check_unused:
    raise ValueError(f'Param rule regex(es) {unused} match no parameter (or only parameters '
                     f'an earlier rule took). Example paths: {paths[:4]} ... {paths[-2:]}')
  uncovered = [p for p in paths if p not in out]
  if uncovered:
    raise ValueError(f'{len(uncovered)} parameter(s) are covered by no param rule, e.g. '
                     f'{uncovered[:6]}. Add a catch-all rule such as (".*", 1.0).')
  return out


def frozen_filter(rules: Sequence[Rule], params: nnx.State):
  """An NNX filter selecting the params the rules mark frozen (validates the rules)."""
  table = resolve_rules(param_paths(params), rules)
  frozen = {p for p, v in table.items() if v == FROZEN}
  return lambda path, _: path_str(path) in frozen


def lr_multipliers(rules: Sequence[Rule], params: nnx.State) -> nnx.State:
  """Tree like `params` (trainable only) holding each leaf's float multiplier."""
  table = resolve_rules(param_paths(params), rules, check_unused=False)
  frozen = [p for p, v in table.items() if v == FROZEN]
  if frozen:
    raise ValueError(f'lr_multipliers got frozen params {frozen[:4]}; split them off first.')
  return jax.tree_util.tree_map_with_path(lambda p, _: float(table[path_str(p)]), params)


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup to cfg.learning_rate, then cosine decay or constant."""
  lr, warmup = cfg['learning_rate'], int(cfg.get('warmup_steps', 0))
  kind = cfg.get('schedule', 'cosine')
  if kind == 'cosine':
    decay = max(1, total_steps - warmup)
    main = optax.cosine_decay_schedule(lr, decay)
  elif kind == 'constant':
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optimizer.schedule must be 'cosine' or 'constant', got {kind!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def weight_decay_mask(params):
  """True for kernels (ndim > 1); biases and norm scales are not decayed."""
  return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int,
                   multipliers: nnx.State | None = None) -> optax.GradientTransformation:
  """Builds the optimizer described by `cfg` (a config.optimizer block).

  cfg keys: name ('sgd' | 'momentum' | 'adamw'), learning_rate, momentum,
  nesterov, b1, b2, weight_decay, grad_clip_norm (0 = off), warmup_steps,
  schedule. `multipliers` (tree of floats like the trainable params) scales
  each parameter's learning rate through `optax.partition`.
  """
  name = cfg['name']
  wd = float(cfg.get('weight_decay', 0.0))
  chain = []
  if cfg.get('grad_clip_norm', 0):
    chain.append(optax.clip_by_global_norm(cfg['grad_clip_norm']))
  if name in ('sgd', 'momentum'):
    if wd:  # Coupled L2, as torch.optim.SGD.
      chain.append(optax.add_decayed_weights(wd, weight_decay_mask))
    if name == 'momentum':
      chain.append(optax.trace(decay=cfg.get('momentum', 0.9), nesterov=cfg.get('nesterov', True)))
  elif name == 'adamw':
    chain.append(optax.scale_by_adam(b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999)))
    if wd:  # Decoupled, as AdamW.
      chain.append(optax.add_decayed_weights(wd, weight_decay_mask))
  else:
    raise ValueError(f"optimizer.name must be 'sgd', 'momentum' or 'adamw', got {name!r}")
  chain.append(optax.scale_by_learning_rate(learning_rate_schedule(cfg, total_steps)))
  if multipliers is not None:
    values = sorted(set(jax.tree.leaves(multipliers)))
    if values != [1.0]:
      labels = jax.tree.map(str, multipliers)
      chain.append(optax.partition({str(v): optax.scale(v) for v in values}, labels))
  return optax.chain(*chain)


def layerwise_lr_decay(num_layers: int, decay: float) -> list[float]:
  """Layer-wise lr decay: multiplier decay ** (depth - i) for layer i of 0..depth.

  Layer 0 is the stem, layer depth = num_layers - 1 the head (multiplier 1).
  """
  if num_layers < 1 or not 0.0 < decay <= 1.0:
    raise ValueError(f'Need num_layers >= 1 and 0 < decay <= 1, got {num_layers}, {decay}')
  depth = num_layers - 1
  return [float(decay ** (depth - i)) for i in range(num_layers)]


def group_rules(groups: Sequence[Sequence[str]], values: Sequence[Any]) -> tuple[Rule, ...]:
  """One rule per group of '/'-path prefixes: ('^(?:p1|p2)/', value).

  A prefix matches itself as a path component boundary, so 'units/1' does
  not take 'units/10'.
  """
  if len(groups) != len(values):
    raise ValueError(f'{len(groups)} groups but {len(values)} values')
  regex = lambda group: (f'^{re.escape(group[0])}/' if len(group) == 1 else
                         f'^(?:{"|".join(re.escape(p) for p in group)})/')
  return tuple((regex(group), value) for group, value in zip(groups, values))
