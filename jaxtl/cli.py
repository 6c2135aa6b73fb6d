"""What every experiment script does first: logging level and (optionally) multi-host setup."""

from absl import flags, logging
import jax

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() first (multi-host TPU VMs / GPU clusters; it reads the '
    'coordinator from the environment).')


def setup() -> None:
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every save at INFO.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
