"""Supervised baseline on the bundled digits dataset (or any TFDS name).

python experiments/train.py --config=experiments/configs/supervised.py --workdir=/tmp/sup
"""

from jaxtl.config import base_config, lock


def get_config():
  c = base_config()
  c.model.name = 'cnn'
  c.num_epochs = 30
  return lock(c)
