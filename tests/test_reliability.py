"""Checkpoint integrity and fallback, background save failures, non-finite steps.

The checkpoints here are real Orbax checkpoints of a small TrainState written by
`checkpoints.Checkpoints` (no model needs compiling); faults are injected into the files on
disk or into Orbax's background write. End-to-end runs of the same faults are in
tests/test_failure_matrix.py.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_lite import checkpoint_integrity as integrity
from t5x_lite import checkpoints
from t5x_lite.train_loop import Progress
from t5x_lite.trainer import TrainState


def _state(step: int) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32),
                    params={'w': jnp.full((64, 16), float(step)), 'b': jnp.arange(16.0) + step},
                    opt_state={'m': jnp.full((16,), -float(step))})


def _abstract() -> TrainState:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=x.sharding), _state(0))


@pytest.fixture
def three_steps(tmp_path):
  """A workdir with intact checkpoints 1, 2, 3 (async saves, as in training)."""
  directory = str(tmp_path / 'checkpoints')
  ckpts = checkpoints.Checkpoints(directory, keep=5, async_save=True)
  for step in (1, 2, 3):
    ckpts.save(step, _state(step), None, {'name': 'test'}, {'tokens_seen': step})
  ckpts.wait()
  ckpts.close()
  return str(tmp_path), directory


def _a_data_file(step_dir):
  data = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, 'state'))
          for n in ns if os.sep + 'd' + os.sep in os.path.join(r, n)]
  return max(data, key=os.path.getsize)


def _truncate(step_dir):
  path = _a_data_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  return 'truncated'


def _flip_a_byte(step_dir):
  path = _a_data_file(step_dir)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  return 'CRC-32'


def _delete_data_file(step_dir):
  os.remove(_a_data_file(step_dir))
  return 'is missing'


def _empty_state_metadata(step_dir):
  open(os.path.join(step_dir, 'state', '_METADATA'), 'w').close()
  return 'state/_METADATA'


def _delete_orbax_metadata(step_dir):
  os.remove(os.path.join(step_dir, integrity.ORBAX_METADATA))
  return integrity.ORBAX_METADATA


def _delete_state_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'state'))
  return 'state/ is missing'


FAULTS = [_truncate, _flip_a_byte, _delete_data_file, _empty_state_metadata,
          _delete_orbax_metadata, _delete_state_item]


def test_intact_checkpoints_verify_with_their_manifest(three_steps):
  workdir, directory = three_steps
  rows = integrity.listing(workdir)
  assert [(r['step'], r['status']) for r in rows] == [(3, 'intact'), (2, 'intact'),
                                                      (1, 'intact')]
  for step in (1, 2, 3):
    assert os.path.exists(os.path.join(directory, str(step), integrity.MANIFEST))


@pytest.mark.parametrize('fault', FAULTS, ids=lambda f: f.__name__.strip('_'))
def test_bad_latest_checkpoint_is_moved_aside_and_the_previous_one_restores(
    three_steps, fault, capsys):
  workdir, directory = three_steps
  expected = fault(os.path.join(directory, '3'))
  ckpts = checkpoints.Checkpoints(directory, keep=5)
  try:
    step = ckpts.newest_intact_step()
    assert step == 2
    restored = ckpts.restore(step, _abstract())
  finally:
    ckpts.close()
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(2))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  warning = capsys.readouterr().err.strip().splitlines()
  assert len(warning) == 1 and expected in warning[0]
  assert f'{directory}/3 is unusable' in warning[0] and 'moved it aside' in warning[0]
  # Kept, not deleted: the whole step directory now lives under corrupt_checkpoints/.
  aside = os.listdir(os.path.join(workdir, integrity.CORRUPT_DIR))
  assert len(aside) == 1 and aside[0].startswith('3-')
  assert os.path.exists(os.path.join(workdir, integrity.CORRUPT_DIR, aside[0], 'config'))
  statuses = [(r['step'], r['status']) for r in integrity.listing(workdir)]
  assert statuses == [(2, 'intact'), (1, 'intact'), (3, 'moved aside')]


def test_read_only_users_skip_a_bad_checkpoint_without_moving_it(three_steps, capsys):
  workdir, directory = three_steps
  _truncate(os.path.join(directory, '3'))
  step, path = checkpoints.latest_checkpoint(workdir)
  assert (step, path) == (2, os.path.join(directory, '2', 'state'))
  assert 'checkpoints/3 is unusable' in capsys.readouterr().err
  assert os.path.isdir(os.path.join(directory, '3'))  # eval / infer never move anything


def test_no_intact_checkpoint_is_a_clear_error(three_steps):
  workdir, directory = three_steps
  for step in (1, 2, 3):
    _truncate(os.path.join(directory, str(step)))
  with pytest.raises(ValueError, match='no intact checkpoint'):
    checkpoints.latest_checkpoint(workdir)


class _DiskFull:
  """An Orbax future whose background write fails, as a full or vanished disk does."""

  def result(self, timeout=None):
    raise OSError(28, 'No space left on device')


def test_background_save_failure_surfaces_and_earlier_checkpoints_stay(three_steps,
                                                                         monkeypatch):
  workdir, directory = three_steps
  original = ocp.StandardCheckpointHandler.async_save

  async def failing_async_save(self, *args, **kwargs):
    return list(await original(self, *args, **kwargs) or []) + [_DiskFull()]

  ckpts = checkpoints.Checkpoints(directory, keep=5, async_save=True)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', failing_async_save)
  ckpts.save(4, _state(4), None, {'name': 'test'})  # returns at once: the write is async
  with pytest.raises(checkpoints.CheckpointError) as e:
    ckpts.wait()
  ckpts.abandon()
  message = str(e.value)
  assert '\n' not in message and 'step 4' in message and 'No space left' in message
  assert 'earlier checkpoints (1, 2, 3' in message
  assert [r['status'] for r in integrity.listing(workdir)][-3:] == ['intact'] * 3
  monkeypatch.undo()
  ckpts = checkpoints.Checkpoints(directory, keep=5)
  assert ckpts.newest_intact_step() == 3
  restored = ckpts.restore(3, _abstract())
  ckpts.close()
  np.testing.assert_array_equal(np.asarray(restored.params['w']), 3.0)


# ----------------------------------------------------------------- non-finite steps
def _metrics(finite: bool, loss: float = 1.0):
  return {'finite': np.bool_(finite), 'loss': np.float32(loss if finite else np.nan),
          'grad_norm': np.float32(1.0), 'target_tokens': np.float32(10)}


def test_stop_raises_at_the_first_non_finite_step():
  progress = Progress(0, last_saved=4, on_nonfinite='stop')
  progress.add(5, _metrics(True))
  progress.add(6, _metrics(False))
  with pytest.raises(FloatingPointError, match='at step 6.*after step 4'):
    progress.sync()


def test_skip_counts_skipped_steps_and_stops_after_k_consecutive():
  progress = Progress(0, last_saved=0, on_nonfinite='skip', max_consecutive_skips=3)
  for step, finite in enumerate([True, False, False, True, False, True], start=1):
    progress.add(step, _metrics(finite, loss=float(step)))
  progress.sync()  # two non-finite in a row, then a finite step: the count restarts
  assert progress.skipped_steps == 3
  assert progress.tokens_seen == 30  # only the applied steps' tokens
  assert progress.saved() == {'tokens_seen': 30, 'skipped_steps': 3}
  for step in (7, 8):
    progress.add(step, _metrics(False))
  progress.sync()
  progress.add(9, _metrics(False))
  with pytest.raises(FloatingPointError, match='3 consecutive non-finite steps'):
    progress.sync()
