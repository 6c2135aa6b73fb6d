"""Knowledge distillation: teacher(s), then the same student with and without distillation.

python experiments/distill.py --config=experiments/configs/distill.py --workdir=workdirs/distill
Prints test accuracy (mean +- std over `seeds`) of the teacher, the student
trained with cross entropy only, and the student distilled with each
(temperature, alpha) of the config (`jaxtl.distill.run`). Rerunning the same
command restores finished runs from their checkpoints instead of retraining them.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from jaxtl import cli, distill  # noqa: E402

_CONFIG, _WORKDIR = cli.define_flags()


def main(argv):
  del argv
  cli.setup()
  cfg = _CONFIG.value
  runs = {seed: distill.run(cfg, os.path.join(_WORKDIR.value, f'seed_{seed}'), seed=seed)
          for seed in cfg.seeds}
  print('\n' + distill.results_table(cfg, runs))
  path = os.path.join(_WORKDIR.value, 'results.json')
  with open(path, 'w') as f:
    json.dump({'seeds': list(cfg.seeds), 'runs': {str(s): r for s, r in runs.items()},
               'config': json.loads(cfg.to_json())}, f, indent=1)
  print(f'Results: {path}')


if __name__ == '__main__':
  app.run(main)
