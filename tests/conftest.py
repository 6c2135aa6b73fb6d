"""Test setup: 8 fake CPU devices, offline data in a per-session directory."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import pytest  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def data_dir(tmp_path_factory):
  """All tests share one prepared copy of the bundled digits dataset."""
  path = os.environ.get('JAXTL_TEST_DATA_DIR') or str(tmp_path_factory.getbasetemp() / 'tfds')
  os.environ['JAXTL_DATA_DIR'] = path
  return path


def pytest_collection_modifyitems(config, items):
  """In CI, tests that need torch must run: a missing torch is an error, not a skip."""
  if os.environ.get('CI'):
    try:
      import torch  # noqa: F401
    except ImportError:
      raise pytest.UsageError('CI=true but torch is not installed; run .ci/run to install it.')
