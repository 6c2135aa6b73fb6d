"""Noisy Student self-training: teacher -> pseudo-labels -> larger noised student, repeated.

python experiments/noisy_student.py --config=experiments/configs/noisy_student.py --workdir=workdirs/noisy_student
Kill it at any point and rerun the same command: it continues in the same round
at the same step; finished rounds are restored, not retrained.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from jaxtl import cli, metrics, noisy_student, plots  # noqa: E402

_CONFIG, _WORKDIR = cli.define_flags('Where checkpoints, metrics and the plot go.')
_COMPARE_TO = flags.DEFINE_string(
    'compare_to', None, 'Workdir of another finished run (e.g. the pseudo_label.py baseline) to '
    'draw in the same plot.')


def main(argv):
  del argv
  cli.setup()
  cfg = _CONFIG.value
  runs = {}
  for seed in cfg.seeds:
    workdir = os.path.join(_WORKDIR.value, f'seed_{seed}')
    runs[seed] = noisy_student.run(cfg, workdir, seed=seed)
  rounds = range(cfg.num_rounds + 1)
  per_round = lambda key: [[runs[s][r].get(key) for s in cfg.seeds] for r in rounds]
  rows = []
  for r, test, teacher, pl, params in zip(rounds, per_round('test_accuracy'), per_round('teacher_accuracy'),
                                           per_round('pseudo_label_accuracy'), per_round('params')):
    fmt = lambda v: '-' if v[0] is None else metrics.mean_std([x / 100 for x in v])
    rows.append((r, 'teacher' if r == 0 else 'student', f'{params[0]:,}', fmt(teacher), fmt(pl), fmt(test)))
  print(f'\nNoisy Student on {cfg.data.name}, seeds {tuple(cfg.seeds)} (mean +- std, %)')
  print(metrics.table(rows, ['round', 'model', 'params', 'teacher acc', 'pseudo-label acc', 'test acc']))
  summary = {'seeds': list(cfg.seeds), 'rounds': {s: runs[s] for s in cfg.seeds}}
  with open(os.path.join(_WORKDIR.value, 'results.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  baseline = None
  if _COMPARE_TO.value:
    with open(os.path.join(_COMPARE_TO.value, 'results.json')) as f:
      baseline = json.load(f)['rounds']
  path = plots.accuracy_per_round(runs, os.path.join(_WORKDIR.value, 'accuracy_per_round.png'),
                                  baseline=baseline)
  print(f'Plot: {path}\nResults: {os.path.join(_WORKDIR.value, "results.json")}')


if __name__ == '__main__':
  app.run(main)
