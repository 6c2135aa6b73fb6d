"""Wall time per round of the default Noisy Student job, and where it goes.

python benchmarks/noisy_student.py [--config=experiments/configs/noisy_student.py] [--seed=0]

For each round: total wall time (pseudo-labeling + training + evaluation), and
the shares spent waiting on the grain input pipeline, pseudo-labeling the
unlabeled set, and in the training loop proper (jitted steps, logging and
checkpoints). Runs in a fresh temporary workdir, so nothing is resumed.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault('TQDM_DISABLE', '1')  # Progress bars would bury the table.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxtl import metrics, noisy_student  # noqa: E402
from jaxtl import train as train_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'experiments/configs/noisy_student.py')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the run.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    results = noisy_student.run(cfg, workdir, seed=_SEED.value, log=lambda *_: None)
    total = time.perf_counter() - start
  rows = []
  for r in results:
    s = r['seconds']
    labeling = s.get('pseudo_label', 0.0)
    wall = s['train'] + labeling
    rows.append((r['round'], r['model'].split(' ')[0], f"{r['params']:,}", f'{wall:.1f}',
                 f"{100 * s['input'] / wall:.1f}", f'{100 * labeling / wall:.1f}',
                 f"{100 * (s['train'] - s['input']) / wall:.1f}", f"{r['test_accuracy']:.2f}"))
  print(train_lib.device_summary())
  print(f'seed={_SEED.value} '
        f'teacher_steps={cfg.teacher_steps} student_steps={cfg.student_steps} '
        f'batch={cfg.batch_size}+{cfg.batch_size * cfg.unlabeled_ratio}')
  print(metrics.table(rows, ['round', 'model', 'params', 'wall s', 'input %', 'pseudo-label %',
                             'train loop %', 'test acc %']))
  print(f'whole job (incl. data preparation, evaluation, start-up of each round): {total:.1f} s')


if __name__ == '__main__':
  app.run(main)
