"""Transfer digits 0-4 -> 5-9 with the 'linear_probe' method only (see transfer_base.py).

python experiments/transfer.py --config=experiments/configs/linear_probe.py --workdir=workdirs/transfer
"""

from experiments.configs import transfer_base


def get_config():
  c = transfer_base.get_config()
  c.methods = ('linear_probe',)
  return c
