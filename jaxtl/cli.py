"""What every experiment script shares: its --config / --workdir flags, logging level and
(optionally) multi-host setup."""

from absl import flags, logging
import jax
from ml_collections import config_flags

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() first (multi-host TPU VMs / GPU clusters; it reads the '
    'coordinator from the environment).')


def setup() -> None:
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every save at INFO.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()


def define_flags(workdir_help: str = 'Where checkpoints, metrics and results go.'):
  """The required --config (an ml_collections config file) and --workdir flags of every script."""
  config = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.')
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir
