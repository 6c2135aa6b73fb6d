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

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxtl import cli, transfer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  cli.setup()
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  results = transfer.run(cfg, workdir)
  print('\n' + transfer.results_table(cfg, results))
  path = os.path.join(workdir, 'results.json')
  with open(path, 'w') as f:
    json.dump({**results, 'config': json.loads(cfg.to_json())}, f, indent=1)
  print(f'Results: {path}')


if __name__ == '__main__':
  app.run(main)
