"""Checkpoint integrity and fallback, background save failures, non-finite steps, and a
training run SIGKILLed at 10 random moments.

The checkpoints here are real Orbax checkpoints of a small TrainState written by
`checkpoints.Checkpoints` (no model needs compiling); faults are injected into the files on
disk or into Orbax's background write. End-to-end runs of the same faults are in
tests/test_failure_matrix.py. The kill test trains the tiny model of tests/tiny_run.py in
subprocesses (they share the session's compilation cache, tests/conftest.py).
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_lite import checkpoint_integrity as integrity
from t5x_lite import checkpoints
from t5x_lite.train_loop import Progress
from t5x_lite.trainer import TrainState
from tiny_run import ROOT, TINY_MODEL


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


def test_async_save_commits_its_manifest_with_the_step(tmp_path):
  """The manifest is written inside the step's temporary directory, before Orbax renames it
  into place: a committed step always has one, even if the process dies right after."""
  ckpts = checkpoints.Checkpoints(str(tmp_path / 'checkpoints'), keep=5, async_save=True)
  ckpts.save(1, _state(1), None, {'name': 'test'})
  ckpts.manager.wait_until_finished()  # Orbax's commit only: no t5x_lite code after it
  step_dir = str(tmp_path / 'checkpoints' / '1')
  assert os.path.exists(os.path.join(step_dir, integrity.MANIFEST))
  assert integrity.verify(step_dir) == ('intact', '')
  ckpts.close()


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


def test_a_step_without_manifest_and_unreadable_metadata_is_moved_aside(three_steps, capsys):
  """A step without a manifest (async_save=False, or an older run) is verified on Orbax's
  metadata alone; when its array metadata cannot be read (data files cut short: they hold
  it too), resuming moves it aside and restores the step before, as for a verified one.
  It stopped the run with tensorstore's 2,000-character error instead."""
  import types
  workdir, directory = three_steps
  step_dir = os.path.join(directory, '3')
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  for root, _, names in os.walk(os.path.join(step_dir, 'state', 'd')):
    for name in names:
      os.truncate(os.path.join(root, name), 100)
  ckpts = checkpoints.Checkpoints(directory, keep=5)
  config = types.SimpleNamespace(init_from='', model={})
  try:
    state, why = checkpoints.restore_or_init(
        config, types.SimpleNamespace(abstract_state=_abstract()), ckpts, None)
  finally:
    ckpts.close()
  assert why.startswith('restored step 2 ')
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(_state(2))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  warning = capsys.readouterr().err.strip().splitlines()
  assert len(warning) == 1 and 'metadata unreadable' in warning[0], warning
  assert [r['step'] for r in integrity.listing(workdir) if r['status'] == 'moved aside'] == [3]


def test_read_only_users_skip_a_bad_checkpoint_without_moving_it(three_steps, capsys):
  workdir, directory = three_steps
  _truncate(os.path.join(directory, '3'))
  step, path = checkpoints.latest_checkpoint(workdir)
  assert (step, path) == (2, os.path.join(directory, '2', 'state'))
  assert 'checkpoints/3 is unusable' in capsys.readouterr().err
  assert os.path.isdir(os.path.join(directory, '3'))  # eval / infer never move anything


def test_params_only_readers_skip_a_bad_checkpoint_too(three_steps, capsys):
  """convert --direction=t5x_to_hf and config.init_from read params through load_params: a
  corrupt newest step is skipped (not exported or fine-tuned from), a named one refused."""
  workdir, directory = three_steps
  _flip_a_byte(os.path.join(directory, '3'))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0).params)
  for given in (workdir, directory):
    params, path = checkpoints.load_params(given, abstract)
    assert str(path) == os.path.join(directory, '2', 'state')
    np.testing.assert_array_equal(np.asarray(params['w']), np.asarray(_state(2).params['w']))
    assert 'checkpoints/3 is unusable' in capsys.readouterr().err
  with pytest.raises(ValueError, match='unusable.*CRC-32'):
    checkpoints.load_params(os.path.join(directory, '3'), abstract)
  # convert names the damage too (it said the step directory had no config.json).
  from t5x_lite import conversion
  with pytest.raises(ValueError, match='checkpoints/3: checkpoint is unusable.*CRC-32'):
    conversion.t5x_to_hf(os.path.join(directory, '3'), os.path.join(workdir, 'hf'))
  assert os.path.isdir(os.path.join(directory, '3'))


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
  # The per-step check (train_loop's, between steps) raises once the background save has
  # ended: it saw nothing until the next save's wait, which could be 1000 steps later.
  deadline = time.monotonic() + 60
  with pytest.raises(checkpoints.CheckpointError) as e:
    while time.monotonic() < deadline:
      ckpts.check_for_errors()
      time.sleep(0.05)
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
  saved = progress.saved()
  assert (saved['tokens_seen'], saved['skipped_steps']) == (30, 3)
  for step in (7, 8):
    progress.add(step, _metrics(False))
  progress.sync()
  progress.add(9, _metrics(False))
  with pytest.raises(FloatingPointError, match='3 consecutive non-finite steps'):
    progress.sync()


# ------------------------------------------------------------ SIGKILL at random moments
KILL_SEED = int(os.environ.get('T5X_LITE_KILL_SEED', '9'))  # a failure names its seed
KILLS, KILL_STEPS = 10, 12
_STEP_LINE = re.compile(r'^step +(\d+)/', re.M)
_RESTORED = re.compile(r'\[t5x_lite\] (?:restored step (\d+) from|(fresh start))')
_TMP = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')


class _Training:
  """One `python -m t5x_lite.train` process of the tiny model, saving every step (async);
  stdout and stderr go to a file that is read while it runs."""

  def __init__(self, workdir: str, name: str):
    self.log = os.path.join(os.path.dirname(workdir), f'{name}.log')
    cmd = [sys.executable, '-m', 't5x_lite.train', *TINY_MODEL,
           '--config.data.targets_length=14', '--config.train.log_every=1',
           '--config.train.eval_every=0', '--show_predictions=0',
           f'--config.train.steps={KILL_STEPS}', '--config.train.checkpoint_every=1',
           '--config.checkpoint.async_save=True', f'--workdir={workdir}']
    with open(self.log, 'w') as out:
      self.start = time.time()
      self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    self.first_step_at = None

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()

  def steps(self, text: str):
    steps = [int(s) for s in _STEP_LINE.findall(text)]
    if steps and self.first_step_at is None:
      self.first_step_at = time.time() - self.start
    return steps

  @staticmethod
  def restored(text: str):
    """The step it resumed from (0: fresh start), None before it says."""
    m = _RESTORED.search(text)
    return None if m is None else int(m.group(1) or 0)

  def finish(self):
    assert self.proc.wait(timeout=300) == 0, self.output()


def _in_flight_dirs(directory: str) -> dict:
  """Orbax's temporary step directories: {(name, inode, ctime): step}."""
  out = {}
  for name in (os.listdir(directory) if os.path.isdir(directory) else []):
    m = _TMP.match(name)
    if m:
      try:
        st = os.stat(os.path.join(directory, name))
      except FileNotFoundError:  # renamed into place meanwhile
        continue
      out[(name, st.st_ino, st.st_ctime_ns)] = int(m.group(1))
  return out


def _newest_complete(directory: str) -> int:
  """Orbax renames a step directory into place only once complete: the newest one (0 none)."""
  return max((int(n) for n in os.listdir(directory) if n.isdigit()), default=0) \
      if os.path.isdir(directory) else 0


def _state_tree(workdir: str, step: int):
  return ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _losses(workdir: str, tokens: bool = True):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(r['step'], r['loss'], r['tokens_seen'] if tokens else None)
            for r in map(json.loads, f)]


def _tensorboard_losses(workdir):
  """(step, loss) of every `loss` event TensorBoard reads from the workdir, in order."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  from tensorboard.util import tensor_util
  return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
          for e in acc.Tensors('loss')]


def test_a_resume_drops_later_steps_from_metrics_and_tensorboard(tmp_path):
  """A run killed after logging step 5 with its checkpoint at step 3: the resumed run logs
  4 and 5 again. metrics.jsonl and the TensorBoard event files then show each step once,
  with the resumed run's values (TensorBoard drew both runs' 4 and 5: the curve jumped
  back), and a record cut short by the kill is dropped, not an error."""
  from t5x_lite.evaluation import MetricsLog
  workdir = str(tmp_path)
  first = MetricsLog(workdir, resume_step=0, enabled=True)
  for step in range(1, 6):
    first.write(step, {'loss': float(step)})
  first.writer.close()
  events = [os.path.join(workdir, 'tensorboard', n)
            for n in os.listdir(os.path.join(workdir, 'tensorboard'))]
  with open(events[0], 'ab') as f:
    f.write(b'\x20\x00\x00\x00\x00')  # the start of a record the kill cut short
  time.sleep(1.1)  # event file names carry the second they were created in
  # A kill between a trim's write and its rename: what it leaves must not read as events.
  real_replace = os.replace

  def killed(src, dst):
    if 'tfevents' in os.path.basename(dst):
      raise KeyboardInterrupt('killed before the rename')
    real_replace(src, dst)  # metrics.jsonl's
  os.replace = killed
  try:
    with pytest.raises(KeyboardInterrupt):
      MetricsLog(workdir, resume_step=3, enabled=True)
  finally:
    os.replace = real_replace
  from tensorboard.backend.event_processing import io_wrapper
  assert [n for n in os.listdir(os.path.join(workdir, 'tensorboard'))
          if io_wrapper.IsSummaryEventsFile(n)] == [os.path.basename(events[0])]
  resumed = MetricsLog(workdir, resume_step=3, enabled=True)
  for step in (4, 5):
    resumed.write(step, {'loss': 10.0 * step})
  resumed.writer.close()
  want = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
  assert [(s, l) for s, l, _ in _losses(workdir, tokens=False)] == want
  assert _tensorboard_losses(workdir) == want
  # A restart that logs nothing (nothing left to train) adds no empty event file.
  before = sorted(os.listdir(os.path.join(workdir, 'tensorboard')))
  time.sleep(1.1)
  MetricsLog(workdir, resume_step=5, enabled=True)
  assert sorted(os.listdir(os.path.join(workdir, 'tensorboard'))) == before


@pytest.mark.filterwarnings('ignore:Sharding info not provided')  # reading back on 1 CPU
def test_sigkill_at_ten_random_moments_resumes_exactly(tmp_path):
  """SIGKILL at 10 moments drawn from a seeded RNG over each process's expected wall time
  (start-up, restore, steps, saves); one of them waits for a step's asynchronous write to be
  in flight. Every restart restores the newest complete checkpoint present at the kill, and
  the final train state (params, optimizer, step) and every step's loss equal an
  uninterrupted run's bit for bit."""
  ref_dir, workdir = str(tmp_path / 'ref' / 'w'), str(tmp_path / 'killed' / 'w')
  os.makedirs(os.path.dirname(ref_dir)), os.makedirs(os.path.dirname(workdir))
  ckdir = os.path.join(workdir, 'checkpoints')
  ref = _Training(ref_dir, 'ref')  # uninterrupted; also times start-up and steps
  while ref.proc.poll() is None:
    ref.steps(ref.output())
    time.sleep(0.01)
  ref.finish()
  startup = ref.first_step_at
  step_time = (time.time() - ref.start - startup) / KILL_STEPS
  rng = random.Random(KILL_SEED)
  in_flight_step = rng.randint(1, KILL_STEPS - 2)  # kill 0: while this step's write runs
  log = [f'seed {KILL_SEED}: reference run {time.time() - ref.start:.1f}s (start-up '
         f'{startup:.1f}s, {step_time:.2f}s a step); kill 0 waits for the write of step '
         f'{in_flight_step} (or a later one) to be in flight']
  print(log[0], flush=True)
  expected, kills_in_flight = 0, 0
  for i in range(KILLS):
    run = _Training(workdir, f'run{i}')
    window = startup + (KILL_STEPS - expected) * step_time
    delay = rng.uniform(0, window) if i else None
    before = set(_in_flight_dirs(ckdir))  # left by earlier kills
    how = f'at {delay:.2f}s of a {window:.1f}s window' if i else 'waiting for a write'
    while True:
      assert run.proc.poll() is None, f'run {i} ended before its kill:\n' + run.output()
      text = run.output()
      at = max(run.steps(text) + [run.restored(text) or 0])
      if i == 0:  # the first run only: the reference's start-up included compiling
        if any(s >= in_flight_step for k, s in _in_flight_dirs(ckdir).items()
               if k not in before):
          how = 'once a write was in flight'
          break
      elif time.time() - run.start >= delay:
        break
      if at >= KILL_STEPS - 1:  # one step from the end: kill now, or it would finish
        how += f' (brought forward to step {at})'
        break
      time.sleep(0.01)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    text = run.output()
    restored = run.restored(text)
    assert restored in (None, expected), (
        f'kill {i - 1} left step {expected} as the newest complete checkpoint, but run {i} '
        f'resumed from {restored}:\n' + '\n'.join(log) + '\n' + text)
    if run.first_step_at is not None:
      startup = run.first_step_at  # a resumed process's start-up, for the next windows
    in_flight = sorted(s for k, s in _in_flight_dirs(ckdir).items() if k not in before)
    kills_in_flight += bool(in_flight)
    expected = _newest_complete(ckdir)
    log.append(f'kill {i}: {how}, after {time.time() - run.start:.2f}s; resumed from '
               f'{"-" if restored is None else restored}, logged steps up to '
               f'{max(run.steps(text), default="-")}; newest complete step {expected}'
               + (f'; write of step {in_flight} in flight' if in_flight else ''))
    print(log[-1], flush=True)
  assert kills_in_flight >= 1, '\n'.join(log)
  last = _Training(workdir, 'last')
  last.finish()
  assert last.restored(last.output()) == expected, '\n'.join(log) + '\n' + last.output()
  assert not os.path.exists(os.path.join(workdir, integrity.CORRUPT_DIR)), '\n'.join(log)
  assert _losses(workdir) == _losses(ref_dir), '\n'.join(log)
  # TensorBoard shows each step once, as metrics.jsonl does: the steps a killed run logged
  # after its checkpoint are dropped from the event files when the next run resumes.
  assert _tensorboard_losses(workdir) == [(s, float(np.float32(l))) for s, l, _ in
                                          _losses(workdir)], '\n'.join(log)
  got, want = _state_tree(workdir, KILL_STEPS), _state_tree(ref_dir, KILL_STEPS)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (jax.tree_util.keystr(path),
                                                              '\n'.join(log))
