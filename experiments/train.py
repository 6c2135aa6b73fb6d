"""Supervised training: a classifier on a TFDS dataset (default: offline digits).

python experiments/train.py --config=experiments/configs/supervised.py --workdir=/tmp/sup
Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

import os

from absl import app

from jaxtl import classify, cli, config as config_lib, data, metrics
from jaxtl import train as train_lib

_CONFIG, _WORKDIR = cli.define_flags('Where checkpoints and metrics go.')


def main(argv):
  del argv
  cli.setup()
  cfg = _CONFIG.value
  data_dir = cfg.data.data_dir or None
  train_source, info = data.load(cfg.data.name, cfg.data.train_split, data_dir=data_dir,
                                 in_memory=cfg.data.in_memory)
  test_source, _ = data.load(cfg.data.name, cfg.data.test_split, data_dir=data_dir)
  mesh = train_lib.make_mesh()
  model = classify.build_model(cfg.model, info, seed=cfg.seed)
  preprocess = classify.make_preprocess(cfg.data.mean, cfg.data.std, cfg.augment)
  loss_fn = classify.classification_loss(preprocess, label_smoothing=cfg.label_smoothing)
  iterator = data.train_iterator(train_source, batch_size=cfg.batch_size, seed=cfg.seed,
                                 num_classes=info.num_classes)
  num_steps = config_lib.num_train_steps(cfg, len(train_source))
  state, _, predict = classify.train_model(
      cfg, model, loss_fn, iterator, num_steps=num_steps, workdir=_WORKDIR.value, mesh=mesh,
      meta=config_lib.run_meta(cfg))
  variables = train_lib.eval_variables(state)
  rows = [(split, f'{100 * train_lib.evaluate(predict, variables, src, batch_size=cfg.eval_batch_size, mesh=mesh)["accuracy"]:.2f}')
          for split, src in (('train', train_source), ('test', test_source))]
  print(f'\n{cfg.model.name} on {info.name}, {num_steps} steps, workdir {os.path.abspath(_WORKDIR.value)}')
  print(metrics.table(rows, ['split', 'accuracy %']))


if __name__ == '__main__':
  app.run(main)
