"""Kill / preempt / resume: a resumed run ends bitwise where an uninterrupted one does."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtl.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 300
ARGS = ['--config=experiments/configs/supervised.py', f'--config.num_steps={NUM_STEPS}',
        '--config.checkpoint_every=20', '--config.log_every=20', '--config.batch_size=128',
        '--config.model.kwargs.base_channels=16']


def _command(workdir):
  return [sys.executable, 'experiments/train.py', f'--workdir={workdir}'] + ARGS


def _env():
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  return env


def _final_state(workdir, step=NUM_STEPS):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)


def _assert_same(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reference'))
  subprocess.run(_command(workdir), cwd=ROOT, env=_env(), check=True, capture_output=True)
  return _final_state(workdir)


def _start_and_wait_for_checkpoint(workdir):
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      return proc
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f'No checkpoint appeared: {proc.stdout.read().decode()[-2000:]}')


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_to_identical_params(reference, tmp_path, sig):
  workdir = str(tmp_path)
  proc = _start_and_wait_for_checkpoint(workdir)
  proc.send_signal(sig)
  out = proc.communicate(timeout=120)[0].decode()
  if sig == signal.SIGTERM:
    assert proc.returncode == 143, out[-2000:]
    assert 'Preempted at step' in out
  else:
    assert proc.returncode == -signal.SIGKILL
  stopped_at = Checkpointer(os.path.join(workdir, 'checkpoints')).latest_step()
  assert stopped_at is not None and stopped_at < NUM_STEPS, 'the run was not interrupted mid-way'
  subprocess.run(_command(workdir), cwd=ROOT, env=_env(), check=True, capture_output=True)
  _assert_same(reference, _final_state(workdir))


def test_half_written_checkpoint_is_ignored_and_config_change_refused(tmp_path):
  workdir = str(tmp_path)
  cmd = [sys.executable, 'experiments/train.py', f'--workdir={workdir}',
         '--config=experiments/configs/supervised.py', '--config.num_steps=40',
         '--config.checkpoint_every=20', '--config.model.kwargs.base_channels=8']
  subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, capture_output=True)
  ckpt = os.path.join(workdir, 'checkpoints')
  # A copy cut short (no orbax metadata) and an orbax temporary dir from a killed save.
  shutil.copytree(os.path.join(ckpt, '40', 'state'), os.path.join(ckpt, '60', 'state'))
  os.makedirs(os.path.join(ckpt, '80.orbax-checkpoint-tmp-1'))
  checkpointer = Checkpointer(ckpt)
  assert checkpointer.latest_step() == 40
  checkpointer.close()
  bad = subprocess.run(cmd + ['--config.batch_size=32'], cwd=ROOT, env=_env(), capture_output=True)
  assert bad.returncode != 0
  assert b'config.batch_size: checkpoint 64 vs now 32' in bad.stderr
