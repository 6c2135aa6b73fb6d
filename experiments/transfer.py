"""Transfer learning: scratch vs linear probe vs fine-tuning, one table of test accuracy.

python experiments/transfer.py --config=experiments/configs/transfer_base.py --workdir=workdirs/transfer
python experiments/transfer.py --config=experiments/configs/finetune.py --workdir=workdirs/transfer \\
    --config.shots='(1, 5)' --config.finetune.layer_decay=0.7

Pretraining (workdir/pretrain) is done once and reused; every method, k and
seed has its own run dir, so a rerun resumes or skips finished runs.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from jaxtl import cli, plots, transfer  # noqa: E402

_CONFIG, _WORKDIR = cli.define_flags()


def main(argv):
  del argv
  cli.setup()
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  results = transfer.run(cfg, workdir)
  print('\n' + transfer.results_table(cfg, results))
  path = os.path.join(workdir, 'results.json')
  with open(path, 'w') as f:
    json.dump({**results, 'config': json.loads(cfg.to_json())}, f, indent=1)
  curves = {f'{m}: {transfer.describe(cfg, m)}': {k: results['accuracy'][k][m] for k in cfg.shots}
            for m in cfg.methods}
  plot = plots.accuracy_vs_shots(curves, os.path.join(workdir, 'accuracy_vs_shots.png'),
                                 title=f'{cfg.data.name} {tuple(cfg.source_classes)} -> '
                                       f'{tuple(cfg.target_classes)}')
  print(f'Results: {path}\nPlot: {plot}')


if __name__ == '__main__':
  app.run(main)
