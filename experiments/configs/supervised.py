"""Supervised baseline on the bundled digits dataset (or any TFDS name).

python experiments/train.py --config=experiments/configs/supervised.py --workdir=/tmp/sup
"""

from jaxtl.config import base_config, lock


def get_config():
  c = base_config()
  c.model.name = 'cnn'
  c.model.kwargs = dict(width=1.0, depth=2, stages=2, base_channels=32)
  c.num_epochs = 30
  return lock(c)
