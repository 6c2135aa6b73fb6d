"""Transfer digits 0-4 -> 5-9 with the 'scratch' method only (see transfer_base.py).

python experiments/transfer.py --config=experiments/configs/scratch.py --workdir=workdirs/transfer
"""

from experiments.configs import transfer_base


def get_config():
  c = transfer_base.get_config()
  c.methods = ('scratch',)
  return c
