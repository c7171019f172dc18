"""`python -m t5x_lite.train` end to end, in subprocesses: 8-device checkpoint restored on
1 device, SIGTERM and SIGINT, NaN, fine-tuning, and bad input. Exact resume after SIGKILL is
tests/test_reliability.py's (10 kills); two processes, tests/test_data_multiprocess.py.
What a resume or a fine-tuning start says and refuses runs in this process (`run_here`): the
same config and error handling, without a process start per run."""
import contextlib
import copy
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tiny_run import ROOT, TINY_MODEL, config_from_flags, numpy_loss

# One input stream (the default reads four): each stream costs a train start-up ~1 s of
# tf.data tracing, per split, and this file starts ~45 of them. The streams themselves are
# tested in test_data_pipeline.py, test_reliability.py and test_data_multiprocess.py.
TINY = TINY_MODEL + [
    '--config.data.targets_length=14', '--config.train.log_every=1',
    '--config.train.eval_every=0', '--config.checkpoint.keep=10', '--show_predictions=0',
    '--config.data.num_virtual_shards=1',
]


def train_cmd(workdir, *overrides):
  return [sys.executable, '-m', 't5x_lite.train', *TINY, f'--workdir={workdir}', *overrides]


def run(workdir, *overrides, check=True, timeout=300):
  proc = subprocess.run(train_cmd(workdir, *overrides), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def run_here(workdir, *overrides, check=True):
  """`run` in this process, for the tests of what a run prints and writes rather than of the
  process: no interpreter start, imports or exit (~4 s of a ~9 s run). The config comes from
  the same flags (`config_from_flags`), errors go through the commands' `cli.call`; the mesh
  is the pytest session's 8 CPU devices (data=8), not the command's 1."""
  from t5x_lite import cli, train_loop
  config = config_from_flags(TINY + list(overrides))
  out, err = io.StringIO(), io.StringIO()
  # cwd=ROOT, as the commands': the config's relative paths
  with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = cli.call(lambda: train_loop.train(config, workdir))
  proc = subprocess.CompletedProcess(overrides, status, out.getvalue(), err.getvalue())
  if check and status != 0:
    raise AssertionError(f'train failed ({status}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def losses(workdir, key='loss'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  steps = [r['step'] for r in rows]
  assert len(steps) == len(set(steps)), 'one metrics.jsonl object per step'
  return {r['step']: r[key] for r in rows if key in r}


def final_state(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.PyTreeCheckpointer().restore(path)


def final_params(workdir, step):
  return final_state(workdir, step)['params']


def checkpoint_steps(workdir):
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) \
      if os.path.isdir(ckpt_dir) else []


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
  import jax
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def assert_trees_equal(a, b):
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  # checkpoint.period is train.checkpoint_every under its other name (one value).
  proc = run(workdir, '--config.train.steps=12', '--config.checkpoint.period=4')
  return workdir, proc


def test_writes_metrics_tensorboard_config_and_checkpoints(uninterrupted):
  workdir, proc = uninterrupted
  assert 'fresh start from seed 0' in proc.stdout
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == list(range(1, 13))
  for key in ('loss', 'accuracy', 'z_loss', 'grad_norm', 'learning_rate', 'tokens_per_sec',
              'target_tokens', 'tokens_seen', 'mfu'):
    assert key in rows[0], key
  seen = [r['tokens_seen'] for r in rows]
  assert seen == list(np.cumsum([r['target_tokens'] for r in rows]))  # log_every=1
  assert any(f.startswith('events.out.tfevents') for f in
             os.listdir(os.path.join(workdir, 'tensorboard')))
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['train']['steps'] == 12
  assert saved['train']['checkpoint_every'] == saved['checkpoint']['period'] == 4
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == [4, 8, 12]
  assert 'first loss' in proc.stdout and 'last loss' in proc.stdout


def test_eight_device_checkpoint_restores_on_one_device(uninterrupted, tmp_path):
  """fsdp=8 for 4 steps, then resumed on 1 device to step 8: every loss, and the params and
  optimizer state at step 8, equal the uninterrupted 1-device run (up to summation order)."""
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'mesh')
  run(workdir, '--num_cpu_devices=8', '--config.partitioning.mesh.data=1',
      '--config.partitioning.mesh.fsdp=8', '--config.train.steps=4',
      '--config.train.checkpoint_every=4')
  proc = run(workdir, '--config.train.steps=8', '--config.train.checkpoint_every=4')
  assert 'restored step 4' in proc.stdout
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in proc.stdout
  got, want = losses(workdir), losses(ref_dir)
  # The end-of-run summary's first loss is this run's: step 5's.
  assert f'first loss {round(got[5], 4)} (step 5: this run resumed)' in proc.stdout
  assert sorted(got) == list(range(1, 9))
  np.testing.assert_allclose([got[s] for s in range(1, 9)], [want[s] for s in range(1, 9)],
                             rtol=2e-5)
  got, want = final_state(workdir, 8), final_state(ref_dir, 8)
  assert int(got['step']) == 8
  # Params near 1 moved by ~lr * RMS: atol 1e-6 absorbs summation-order noise in a step.
  assert_trees_close(got['params'], want['params'], rtol=1e-5, atol=1e-6)
  # Adafactor's second moments (means of g^2, 1e-4 down to 1e-14): relative, with a floor.
  assert_trees_close(got['opt_state'], want['opt_state'], rtol=1e-4, atol=1e-10)


def test_a_ctrl_c_python_drops_during_start_up_still_stops_the_run(tmp_path, monkeypatch,
                                                                   capsys):
  """Ctrl-C during start-up raises KeyboardInterrupt; where Python drops it (raised inside
  JAX's garbage-collection callback: 'Exception ignored in ...'), the run went on to train
  every step. The signal is remembered: the run stops at its first step with a checkpoint,
  as after a Ctrl-C in the loop."""
  from t5x_lite import checkpoints, train_loop
  restore_or_init = checkpoints.restore_or_init

  def interrupted(*args):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(10)  # the handler runs (and raises) here
      raise AssertionError('no KeyboardInterrupt during start-up')
    except KeyboardInterrupt:
      pass  # dropped, as Python drops it inside a gc callback
    return restore_or_init(*args)
  monkeypatch.setattr(checkpoints, 'restore_or_init', interrupted)
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a process started in the background
  train_loop.train(config_from_flags(TINY + ['--config.train.steps=20']), workdir)
  assert 'SIGINT: saved checkpoint at step 1 ' in capsys.readouterr().out
  assert checkpoint_steps(workdir) == [1]
  assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_ctrl_c_during_start_up_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
  """A Ctrl-C that stops start-up reaches the command wrapper: one line and the shell's
  status 130 (it was a Python traceback), no checkpoint, SIGINT's handler restored."""
  from t5x_lite import checkpoints, cli, train_loop

  def interrupted(*args):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # the handler raises KeyboardInterrupt here
    raise AssertionError('no KeyboardInterrupt during start-up')
  monkeypatch.setattr(checkpoints, 'restore_or_init', interrupted)
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  before = signal.getsignal(signal.SIGINT)
  try:
    status = cli.call(lambda: train_loop.train(config_from_flags(TINY), workdir), 'train')
  except KeyboardInterrupt:  # (would end the whole pytest session if let through)
    pytest.fail('the Ctrl-C escaped cli.call as a KeyboardInterrupt (a traceback)')
  assert status == 130
  assert capsys.readouterr().err.strip().splitlines()[-1] == 'train: interrupted (Ctrl-C).'
  assert checkpoint_steps(workdir) == []
  assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_while_the_first_batch_is_read_stops_at_once(tmp_path, monkeypatch, capsys):
  """The first batch is start-up (shuffle buffers filling can take minutes): a Ctrl-C while
  it is read ends the run at once, status 130, nothing trained or saved. (It was taken when
  the batch came, and the run then compiled, trained and saved step 1.)"""
  from t5x_lite import cli, train_loop
  from t5x_lite.data import iterator
  next_batch, done = iterator.DataIterator.__next__, threading.Event()

  def slow_first_batch(self):
    if self.split == 'train' and not hasattr(self, 'waited'):
      self.waited = True
      threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
      done.wait(30)  # as long as a buffer takes to fill
    return next_batch(self)
  monkeypatch.setattr(iterator.DataIterator, '__next__', slow_first_batch)
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  start = time.time()
  try:
    status = cli.call(lambda: train_loop.train(config_from_flags(TINY), workdir), 'train')
  finally:
    done.set()
  assert status == 130 and time.time() - start < 25
  assert capsys.readouterr().err.strip().splitlines()[-1] == 'train: interrupted (Ctrl-C).'
  assert checkpoint_steps(workdir) == []


def test_the_ctrl_c_notice_never_raises_into_the_step_it_interrupts(monkeypatch):
  """The handler's notice on a closed stderr (a pipe whose reader left) is dropped: an
  exception there would surface in whatever the step was doing."""
  from t5x_lite import train_loop
  closed = io.StringIO()
  closed.close()
  monkeypatch.setattr(sys, 'stderr', closed)
  with train_loop.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs here
  assert stop.signal == 'SIGINT'


def test_ctrl_c_twice_stops_at_once_keeping_the_saved_steps(tmp_path, monkeypatch, capsys):
  """The first Ctrl-C in the loop asks for a checkpoint after the current step and says that
  a second stops at once; the second does (status 130), the steps saved before it kept."""
  from t5x_lite import cli, train_loop
  add = train_loop.Progress.add

  def add_then_ctrl_c_twice(self, step, metrics):
    add(self, step, metrics)
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # (the handler runs here, or at the latest before the next kill)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(10)
      raise AssertionError('the second Ctrl-C did not stop the run')
  monkeypatch.setattr(train_loop.Progress, 'add', add_then_ctrl_c_twice)
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  config = config_from_flags(TINY + ['--config.train.steps=20',
                                     '--config.train.checkpoint_every=1'])
  status = cli.call(lambda: train_loop.train(config, workdir), 'train')
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 130 and err[-1] == 'train: interrupted (Ctrl-C).', err
  assert ('[t5x_lite] SIGINT: stopping after this step with a checkpoint (Ctrl-C again to '
          'stop at once without it).') in err
  assert checkpoint_steps(workdir) == [1, 2]


def test_a_log_line_averages_the_steps_of_its_window(uninterrupted, tmp_path):
  """log_every=5 on the uninterrupted run's config (logged every step there): each line's
  loss and gradient norm are the means of its window's per-step values, accuracy and z-loss
  weighted by each step's target tokens, the learning rate its step's; checkpoints every 3
  steps (a fetch of the metrics mid-window) change nothing. The window is the steps since
  the last line: 1-5, 6-10, 11-12 (the last step). Resumed from step 6, mid-window, the
  lines at 10 and 12 are the uninterrupted run's: the checkpoint keeps the window's sums."""
  per_step, _ = uninterrupted
  workdir = str(tmp_path / 'w')
  args = ('--config.train.steps=12', '--config.train.checkpoint_every=3',
          '--config.train.log_every=5')
  proc = run(workdir, *args)
  assert 'step 1 (compiling the train step) took' in proc.stdout
  tokens = losses(per_step, 'target_tokens')
  windows = {5: range(1, 6), 10: range(6, 11), 12: range(11, 13)}
  for key in ('loss', 'grad_norm', 'accuracy', 'z_loss', 'learning_rate', 'target_tokens'):
    step_values, logged = losses(per_step, key), losses(workdir, key)
    assert sorted(logged) == [5, 10, 12]
    for step, window in windows.items():
      values = np.array([step_values[s] for s in window])
      weights = np.array([tokens[s] for s in window])
      want = {'loss': values.mean(), 'grad_norm': values.mean(),
              'learning_rate': values[-1], 'target_tokens': values.sum(),
              'accuracy': weights @ values / weights.sum(),
              'z_loss': weights @ values / weights.sum()}[key]
      assert logged[step] == pytest.approx(want, rel=1e-6), (key, step)
  assert losses(workdir, 'tokens_seen')[12] == sum(tokens.values())
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  for step in (9, 12):
    shutil.rmtree(os.path.join(resumed, 'checkpoints', str(step)))
  assert 'restored step 6' in run(resumed, *args).stdout
  for key in ('loss', 'grad_norm', 'accuracy', 'z_loss', 'target_tokens', 'tokens_seen'):
    assert losses(resumed, key) == losses(workdir, key), key


def test_an_eval_or_a_save_inside_a_log_window_is_left_out_of_its_rate(tmp_path, monkeypatch):
  """tokens/s, steps/s, MFU and the ETA of a log window with an eval inside it: the window's
  start moved to the eval's end while its steps kept counting from the window's start, so the
  rate came out ~2x. An eval or a checkpoint save made 1 s slower must leave the rate as in a
  window without one (a save's time was counted as step time)."""
  from t5x_lite import checkpoints, evaluation, train_loop
  evaluate, save = evaluation.evaluate, checkpoints.Checkpoints.save

  def slow(f):
    def call(*args, **kwargs):
      time.sleep(1.0)
      return f(*args, **kwargs)
    return call
  monkeypatch.setattr(evaluation, 'evaluate', slow(evaluate))
  monkeypatch.setattr(checkpoints.Checkpoints, 'save', slow(save))
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  # Logs at 8, 16, 24, 32, 40 and at the evals, 12, 24, 36 and 40 (each after its step's log
  # line); saves at 28 and 40. Window 17-24 holds neither; 9-16 an eval; 25-32 a save.
  train_loop.train(config_from_flags(TINY + [
      '--config.train.steps=40', '--config.train.log_every=8', '--config.train.eval_every=12',
      '--config.train.eval_steps=1', '--config.train.checkpoint_every=28',
      # a synchronous save: no background write left running into the next steps
      '--config.checkpoint.async_save=False']), workdir)
  rate = losses(workdir, 'steps_per_sec')
  # An eval step is a log step too: every metrics.jsonl object has the train figures.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows] == [8, 12, 16, 24, 32, 36, 40]
  assert all({'loss', 'learning_rate', 'tokens_per_sec', 'mfu'} <= set(r) for r in rows), rows
  assert [r['step'] for r in rows if 'eval_loss' in r] == [12, 24, 36, 40]  # and the last
  # Against window 17-24: the run's last window ran 1.7-1.9x slower than both in two CI runs
  # on this 2-core host, whatever the eval did.
  assert 0.6 < rate[16] / rate[24] < 1.5, rate  # was ~2: 8 steps over the time of 4
  assert 0.6 < rate[32] / rate[24] < 1.5, rate  # was ~0.3: the save's second counted


def test_the_last_steps_line_leaves_its_window_open_for_a_longer_run(tmp_path):
  """A run's last step (12, not a log step) prints a line over its open window (11-12) but
  does not close it: extended to 15 steps, the line at 15 covers 11-15, as the
  uninterrupted 15-step run's does (a constant schedule, so both runs
  train the same steps)."""
  args = ('--config.train.log_every=5', '--config.optimizer.schedule=constant',
          '--config.train.checkpoint_every=0')
  ref, extended = str(tmp_path / 'ref'), str(tmp_path / 'extended')
  run_here(ref, '--config.train.steps=15', *args)
  run_here(extended, '--config.train.steps=12', *args)
  assert sorted(losses(extended)) == [5, 10, 12]
  assert 'restored step 12' in run_here(extended, '--config.train.steps=15', *args).stdout
  for key in ('loss', 'grad_norm', 'accuracy', 'z_loss', 'target_tokens', 'tokens_seen'):
    got, want = losses(extended, key), losses(ref, key)
    assert sorted(got) == [5, 10, 12, 15] and sorted(want) == [5, 10, 15]
    assert {s: got[s] for s in want} == want, key


DROPOUT = ['--config.model.dropout_rate=0.1', '--config.train.steps=30',
           '--config.train.checkpoint_every=0']


@pytest.fixture(scope='module')
def with_dropout(tmp_path_factory):
  """An uninterrupted 30-step run with dropout on (the reference for signal resumes)."""
  workdir = str(tmp_path_factory.mktemp('dropout'))
  run(workdir, *DROPOUT)
  return workdir


def test_sigterm_then_sigint_save_and_resume_exactly_with_dropout(with_dropout, tmp_path):
  """SIGTERM mid-run, then SIGINT mid-way through the resumed run: each saves a checkpoint
  at the current step and exits 0; a third run of the same command gives the uninterrupted
  run's losses at every step and its final train state (the dropout RNG of each step does
  not depend on where the run restarted). One chain of runs serves both signals."""
  workdir = str(tmp_path / 'signals')
  saved = []
  for sig in (signal.SIGTERM, signal.SIGINT):
    before = saved[-1] if saved else 0
    proc = subprocess.Popen(train_cmd(workdir, *DROPOUT), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
        os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
        and len(losses(workdir)) >= before + 3):
      time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    if before:
      assert f'restored step {before}' in out, out
    assert f'{sig.name}: saved checkpoint at step' in out, out
    step = int(out.split(f'{sig.name}: saved checkpoint at step ')[1].split()[0])
    assert before + 3 <= step < 30, 'the run finished before the signal; raise train.steps'
    saved.append(step)
    assert checkpoint_steps(workdir) == saved
  resumed = run(workdir, *DROPOUT)
  assert f'restored step {saved[-1]}' in resumed.stdout
  assert losses(workdir) == losses(with_dropout)  # exact, every step
  assert_trees_equal(final_state(workdir, 30), final_state(with_dropout, 30))


def test_nan_loss_stops_and_writes_no_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  # log_every 10 > checkpoint_every 1: only the check before each save can stop the run in
  # time (logging would find the bad step too late).
  proc = run(workdir, '--config.train.steps=30', '--config.train.checkpoint_every=1',
             '--config.train.log_every=10', '--config.optimizer.name=adamw',
             '--config.optimizer.schedule=constant',
             '--config.optimizer.learning_rate=1e30', check=False)
  assert proc.returncode == 1
  assert 'non-finite loss' in proc.stderr and 'at step' in proc.stderr
  bad = int(proc.stderr.split(' at step ')[1].split(';')[0])
  # checkpoint_every=1: the last checkpoint is the step before the bad one (the guard keeps
  # its params finite, so finiteness alone would not show a late save), and the async save
  # of that step completes although the run stops with an error.
  steps = checkpoint_steps(workdir)
  assert max(steps, default=0) == bad - 1, (steps, bad)
  for step in steps:
    import jax
    for leaf in jax.tree.leaves(final_params(workdir, step)):
      assert np.isfinite(np.asarray(leaf)).all(), f'checkpoint {step} holds non-finite values'


def test_skipped_non_finite_steps_are_said_and_counted_in_the_done_line(tmp_path):
  """train.on_nonfinite=skip: the skipped steps were in metrics.jsonl only, and the done line
  gave the last finite step's loss as 'last loss' with no word of the skips."""
  proc = run_here(str(tmp_path / 'w'), '--config.train.steps=4', '--config.train.on_nonfinite=skip',
                  '--config.train.max_consecutive_skips=5', '--config.optimizer.learning_rate=1e30')
  warnings = [l for l in proc.stderr.splitlines() if 'skipped, the update not applied' in l]
  records = [json.loads(l) for l in open(tmp_path / 'w' / 'metrics.jsonl')]
  skipped = records[-1]['skipped_steps']
  assert skipped >= 1 and len(warnings) == skipped, proc.stderr[-3000:]
  assert warnings[-1].endswith(f'(train.on_nonfinite=skip; {skipped} skipped in all). Lower '
                               'optimizer.learning_rate or enable optimizer.clip_grad_norm.')
  done = [l for l in proc.stdout.splitlines() if l.startswith('[t5x_lite] done: ')]
  assert len(done) == 1 and \
      f'({skipped} non-finite steps skipped, their losses left out)' in done[0], proc.stdout


def _step_one_loss_of(params):
  """The loss the tiny run's first train batch has under `params`, in numpy."""
  import jax
  from t5x_lite import models
  from t5x_lite.data import pipeline
  cfg = config_from_flags(TINY)
  batch = next(pipeline.get_dataset(cfg, 'train'))
  logits = jax.jit(models.build(cfg.model).apply)({'params': params}, batch)
  return numpy_loss(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
                    cfg.optimizer.z_loss)[0]


def _assert_fine_tune_started_from(workdir, source_params):
  """Step 1's loss (before its update) is the source params' loss on batch 1, and the
  optimizer state is fresh: every step count in it is 1 after one step."""
  import jax
  np.testing.assert_allclose(losses(workdir)[1], _step_one_loss_of(source_params), rtol=1e-5)
  counts = [int(np.asarray(x)) for p, x in jax.tree_util.tree_flatten_with_path(
      final_state(workdir, 1)['opt_state'])[0] if 'count' in jax.tree_util.keystr(p)]
  assert counts and set(counts) == {1}, counts


def test_init_from_checkpoint_fine_tunes_with_fresh_optimizer(uninterrupted, tmp_path):
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'ft')
  proc = run_here(workdir, '--config.train.steps=1', f'--config.init_from={ref_dir}')
  assert 'initialized params from' in proc.stdout and 'fresh optimizer state' in proc.stdout
  assert 'was trained with' not in proc.stderr
  _assert_fine_tune_started_from(workdir, final_params(ref_dir, 12))
  # Another vocabulary (here other sentinel ids) was fine-tuned on without a word, while
  # eval and infer refuse it: a warning, as for hf:DIR's tokenizer.
  proc = run_here(str(tmp_path / 'ft50'), '--config.train.steps=1',
                  f'--config.init_from={ref_dir}', '--config.data.extra_ids=50')
  assert f'[t5x_lite] warning: config.init_from={ref_dir} was trained with data.vocab=' in (
      proc.stderr) and 'with extra_ids=50: its token ids would read as other text' in proc.stderr


def test_init_from_hf_directory(uninterrupted, tmp_path):
  """init_from=hf:DIR with a directory exported from the trained workdir."""
  from t5x_lite import conversion
  ref_dir, _ = uninterrupted
  hf_dir = conversion.t5x_to_hf(ref_dir, str(tmp_path / 'hf'))
  workdir = str(tmp_path / 'ft_hf')
  # The export's spiece.model is config.data.vocab (no warning: test_hf_sweep.py); another
  # tokenizer beside the weights is trained on, with a warning naming both.
  with open(os.path.join(hf_dir, 'spiece.model'), 'ab') as f:
    f.write(b'\0')
  proc = run_here(workdir, '--config.train.steps=1', f'--config.init_from=hf:{hf_dir}')
  assert 'initialized params from Hugging Face directory' in proc.stdout
  assert f'warning: config.init_from=hf:{hf_dir}: {hf_dir}/spiece.model is not config.data.vocab' \
      in proc.stderr
  _assert_fine_tune_started_from(workdir, final_params(ref_dir, 12))
  # A model config other than the directory's is refused at start-up, nothing built.
  other = str(tmp_path / 'other')
  proc = run_here(other, '--config.train.steps=1', f'--config.init_from=hf:{hf_dir}',
                  '--config.model.d_ff=96', check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
      f'error: config.model.d_ff=96 differs from the Hugging Face model in {hf_dir} (64).')
  assert not os.path.exists(os.path.join(other, 'checkpoints'))


def test_gpt2_weights_fine_tuned_on_an_objective_with_inputs_are_a_warning(tmp_path):
  """GPT2LMHeadModel weights attend causally everywhere; trained on an objective with inputs
  (text_to_text, prefix_lm) a decoder-only model is a prefix LM whose inputs attend both
  ways: the run started from another network than the one imported, without a word (found
  by an exploratory pass: Hugging Face's loss 7.908 on the first batch, the first step's
  7.933). A warning at start-up; none under causal_lm."""
  from t5x_lite import cli, conversion, train_loop
  from tiny_run import tiny_config
  cfg = tiny_config('gpt', train=dict(steps=1, log_every=1, eval_every=0, batch_size=8),
                    data=dict(num_virtual_shards=1, targets_length=16, inputs_length=16))
  with contextlib.chdir(ROOT), contextlib.redirect_stdout(io.StringIO()):
    assert cli.call(lambda: train_loop.train(cfg, str(tmp_path / 'gpt'))) == 0
  hf_dir = conversion.t5x_to_hf(str(tmp_path / 'gpt'), str(tmp_path / 'hf'))
  for objective in ('prefix_lm', 'causal_lm'):
    run = copy.deepcopy(cfg)
    run.init_from, run.data.objective = f'hf:{hf_dir}', objective
    err = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(io.StringIO()), \
        contextlib.redirect_stderr(err):
      assert cli.call(lambda: train_loop.train(run, str(tmp_path / objective))) == 0
    said = (f"[t5x_lite] warning: config.init_from=hf:{hf_dir}: GPT2LMHeadModel weights attend "
            f"causally everywhere; data.objective='prefix_lm' trains (and eval / infer decode) "
            'them as a prefix LM')
    assert (said in err.getvalue()) == (objective == 'prefix_lm'), err.getvalue()


def test_init_from_either_layer_layout(uninterrupted, tmp_path):
  """model.scan_layers is a runtime choice: an unscanned checkpoint initialises a scanned
  model, and a scanned one (convert --scan_layers) an unscanned model, with the same params."""
  from t5x_lite import conversion
  ref_dir, _ = uninterrupted
  source = final_params(ref_dir, 12)
  proc = run_here(str(tmp_path / 'scanned'), '--config.train.steps=1',
                  f'--config.init_from={ref_dir}', '--config.model.scan_layers=True')
  assert 'initialized params from' in proc.stdout
  _assert_fine_tune_started_from(str(tmp_path / 'scanned'), source)
  stacked = conversion.hf_to_t5x(conversion.t5x_to_hf(ref_dir, str(tmp_path / 'hf')),
                                 str(tmp_path / 'stacked'), scan_layers=True)
  assert 'layers' in ocp.PyTreeCheckpointer().metadata(stacked).item_metadata.tree['params'][
      'encoder']
  run_here(str(tmp_path / 'unscanned'), '--config.train.steps=1',
           f'--config.init_from={stacked}')
  _assert_fine_tune_started_from(str(tmp_path / 'unscanned'), source)


@pytest.mark.parametrize('overrides,message', [
    (['--config.partitioning.mesh.data=3'], 'config.partitioning.mesh'),
    (['--num_cpu_devices=8', '--config.train.batch_size=12'], 'config.train.batch_size=12'),
    (['--config.train.eval_every=1', '--config.data.validation_source=text:/nonexistent/*.txt'],
     '/nonexistent'),
    (['--config.model.family=transformer'], 'config.model.family'),
])
def test_bad_input_fails_with_one_line_error(overrides, message, tmp_path):
  proc = run(str(tmp_path / 'bad'), *overrides, check=False, timeout=120)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, proc.stderr[-2000:]


@pytest.mark.parametrize('command,names', [('train', ['--config', '--workdir']),
                                           ('eval', ['--config', '--workdir']),
                                           ('plan', ['--config', '--num_devices'])])
def test_help_lists_the_commands_main_flags(command, names):
  """--config / --workdir are defined in cli.py: --help showed only the module's own flags."""
  out = subprocess.run([sys.executable, '-m', f't5x_lite.{command}', '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120).stdout
  listed = {line.split(':')[0].strip() for line in out.splitlines()
            if line.startswith('  --')}
  assert set(names) <= listed, out


def test_a_command_exits_with_its_status_after_the_atexit_hooks_and_buffered_output():
  """Commands end without the interpreter's module teardown (cli.exit_without_module_teardown):
  the atexit hooks (JAX's, TensorFlow's, the data iterators') still run, in order, and what
  they and the command printed arrives."""
  script = ('import atexit, sys\n'
            'from t5x_lite import cli\n'
            'atexit.register(lambda: print("hook 1", end=""))\n'  # runs last
            'atexit.register(lambda: print("hook 2", flush=True))\n'
            'print("out", end=""); print("err", end="", file=sys.stderr)\n'
            'cli.exit_without_module_teardown(3)\n'
            'print("never")\n')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert (proc.returncode, proc.stdout, proc.stderr) == (3, 'outhook 2\nhook 1', 'err')


@pytest.mark.parametrize('override,message', [
    # the shapes, and the field the step's saved config gives for them
    ('--config.model.d_ff=96', r'checkpoints/12 does not match this config: config.model.d_ff=96 '
                               r'differs from .*checkpoints/12/config/metadata \(64\); resume '
                               r'with the config it was saved with, or use a new --workdir .* '
                               r'to start fresh\.$'),
    # same shapes, another network: was resumed silently, config.json overwritten
    ("--config.model.mlp_activations=('relu','linear')",
     r"checkpoints/12 does not match this config: config.model.mlp_activations=\('relu', "
     r"'linear'\) differs from .*checkpoints/12/config/metadata \(\['gelu', 'linear'\]\); "
     r"resume with the config it was saved with"),
    ('--config.model.norm_eps=1e-5', r'config.model.norm_eps=1e-05 differs from'),
    # another layer layout: named, with the flag that resumes it (was 274 leaves, 'None')
    ('--config.model.scan_layers=True', r'holds its layers one by one \(model.scan_layers='
                                        r'False\), this config the other way: resume with '
                                        r'--config.model.scan_layers=False '),
])
def test_incompatible_checkpoint_names_the_cause(uninterrupted, tmp_path, override, message):
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'incompatible')
  shutil.copytree(ref_dir, workdir)
  config_json = open(os.path.join(workdir, 'config.json')).read()
  proc = run_here(workdir, '--config.train.steps=20', override, check=False)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert re.search(message, last), last
  assert open(os.path.join(workdir, 'config.json')).read() == config_json
  assert checkpoint_steps(workdir) == [4, 8, 12]


def test_eval_and_infer_refuse_a_vocabulary_other_than_the_runs(uninterrupted, tmp_path):
  """eval and infer (`evaluation.load`) with another SentencePiece model or other extra_ids
  than the run trained with ran and scored garbage (eval_loss 8.4 instead of 0.65) with
  exit 0; the same vocabulary under another path is fine."""
  from t5x_lite import evaluation
  workdir, _ = uninterrupted
  shipped = os.path.join(ROOT, 'data', 'vocab', 'shakespeare_1k.model')
  other = tmp_path / 'other.model'
  other.write_bytes(open(shipped, 'rb').read() + b'\0')   # one byte more: another file
  config = config_from_flags(TINY)
  config.data.vocab = shipped  # the run's 'data/vocab/shakespeare_1k.model', as an absolute path
  evaluation.load(config, workdir)
  for field, value in (('vocab', str(other)), ('extra_ids', 50)):
    config = config_from_flags(TINY)
    config.data[field] = value
    with pytest.raises(ValueError) as e:
      evaluation.load(config, workdir)
    assert str(e.value).startswith(
        f"--workdir={workdir} was trained with data.vocab='data/vocab/shakespeare_1k.model' and "
        f"data.extra_ids=100 ({workdir}/config.json), not config.data.vocab="
        f"{config.data.vocab!r} with extra_ids={config.data.extra_ids}: its token ids would "
        'read as other text'), str(e.value)


def test_the_workdirs_checkpoint_wins_over_init_from_and_the_log_says_so(uninterrupted, tmp_path):
  """Precedence: latest workdir checkpoint > config.init_from. The log names what was restored
  and that init_from was ignored; an init_from that does not exist (a typo the resume never
  reads) is warned about, not refused: the resumed run does not need it."""
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'resumes')
  shutil.copytree(ref_dir, workdir)
  proc = run_here(workdir, '--config.train.steps=12', f'--config.init_from={ref_dir}')
  ckpt = os.path.join(workdir, 'checkpoints', '12')
  assert (f'restored step 12 from {ckpt} (latest checkpoint in the workdir wins): params, '
          f'optimizer state and data position; config.init_from={ref_dir!r} ignored because '
          'the workdir resumes.') in proc.stdout
  said = lambda proc: [l for l in proc.stderr.splitlines() if 'init_from' in l]  # noqa: E731
  assert said(proc) == []  # (the tiny config's warmup is warned about: it outlasts the run)
  missing = f'hf:{tmp_path}/no_such_run'  # (a checkpoint path is checked the same way)
  proc = run_here(workdir, '--config.train.steps=12', f'--config.init_from={missing}')
  assert f'restored step 12 from {ckpt}' in proc.stdout
  assert said(proc) == [
      f'[t5x_lite] warning: config.init_from={missing} does not exist (ignored: the workdir '
      'resumes from its own checkpoint).']
  assert checkpoint_steps(workdir) == [4, 8, 12]


def test_a_fresh_start_does_not_take_over_another_networks_run(uninterrupted, tmp_path):
  """A workdir whose run left no checkpoint (killed before its first) but holds another
  network's config.json: refused, nothing overwritten (its metrics.jsonl was cut to the new
  run's lines, its config.json replaced). The same network starts again as before."""
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'no_checkpoint')
  shutil.copytree(ref_dir, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  before = {f: open(os.path.join(workdir, f)).read() for f in ('config.json', 'metrics.jsonl')}
  proc = run_here(workdir, '--config.train.steps=2', '--config.model.d_ff=96', check=False)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert re.search(r'--workdir=.* holds another run without a checkpoint: config.model.d_ff=96 '
                   r'differs from .*config.json \(64\); a fresh start would overwrite', last), last
  assert {f: open(os.path.join(workdir, f)).read() for f in before} == before
  proc = run_here(workdir, '--config.train.steps=2')
  assert 'fresh start from seed 0' in proc.stdout
  # A config.json cut short (by a kill, before its write was atomic) holds no run to keep.
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  text = open(os.path.join(workdir, 'config.json')).read()
  open(os.path.join(workdir, 'config.json'), 'w').write(text[:len(text) // 2])
  proc = run_here(workdir, '--config.train.steps=1', '--config.model.d_ff=96')
  assert 'fresh start from seed 0' in proc.stdout
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['d_ff'] == 96


@pytest.mark.parametrize('override,message', [
    ('--config.data.num_virtual_shards=2', 'has 1 streams'),
    ('--config.data.seed=5', 'saved with seed'),
    ('--config.data.train_source=text:data/corpus/validation.txt',
     "saved with data.train_source='text:data/corpus/train.txt'"),
])
def test_changed_data_settings_stop_the_resume_and_keep_the_checkpoints(
    uninterrupted, tmp_path, override, message):
  """A data position the new config cannot continue is a config mistake: one-line error,
  exit 1, every checkpoint left where it was (not set aside as corrupt, no fresh start)."""
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'changed')
  import shutil
  shutil.copytree(ref_dir, workdir)
  before = checkpoint_steps(workdir)
  proc = run_here(workdir, '--config.train.steps=20', override, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: cannot resume step 12') and message in last, last
  assert 'Nothing was moved' in last and 'config.init_from=' in last
  assert checkpoint_steps(workdir) == before
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))
  assert 'fresh start' not in proc.stdout + proc.stderr


def test_every_checkpoint_unusable_is_an_error_not_a_fresh_start(uninterrupted, tmp_path):
  """With no intact checkpoint left, training from scratch would overwrite the run's
  metrics and history: a one-line error instead, now and on every later try."""
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'all_bad')
  import shutil
  shutil.copytree(ref_dir, workdir)
  for step in checkpoint_steps(workdir):
    open(os.path.join(workdir, 'checkpoints', str(step), 'state', '_METADATA'), 'w').close()
  metrics = open(os.path.join(workdir, 'metrics.jsonl')).read()
  for _ in range(2):
    proc = run_here(workdir, '--config.train.steps=20', check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert 'every checkpoint of this run is unusable' in last and 'new --workdir' in last
    assert 'fresh start' not in proc.stdout
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == metrics


@pytest.mark.parametrize('override,message', [
    ('--config.model.relative_attention_max_distance=64',  # same shapes, another network
     'config.model.relative_attention_max_distance=64 differs from'),
    ('--config.model.num_decoder_layers=1', 'config.model.num_decoder_layers=1 differs from'),
    # A step directory (or its state/) has no config.json: the step's own config item is read.
    ('checkpoints/12 --config.model.relative_attention_max_distance=64',
     'config.model.relative_attention_max_distance=64 differs from'),
    ('checkpoints/12/state --config.model.num_decoder_layers=1',
     'config.model.num_decoder_layers=1 differs from'),
    ('checkpoints/12 --config.model.d_ff=96', 'config.model.d_ff=96 differs from'),
    ('no_such_run --config.train.steps=1', 'no_such_run does not exist'),
])
def test_init_from_a_checkpoint_of_another_model_is_refused(uninterrupted, tmp_path, override,
                                                            message):
  """Refused at start-up, before the pipeline or the model is built: the workdir is left
  without a checkpoints/ directory."""
  ref_dir, _ = uninterrupted
  sub, _, override = override.rpartition(' ')
  proc = run_here(str(tmp_path / 'ft'), '--config.train.steps=1',
                  f'--config.init_from={os.path.join(ref_dir, sub)}', override, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not os.path.exists(tmp_path / 'ft' / 'checkpoints')


def test_a_model_mismatch_names_every_differing_field():
  """init_from (a checkpoint or hf:DIR) of another shape: every differing field in the one
  error (it named the first only, so each rerun found the next)."""
  from t5x_lite import run_config
  from tiny_run import tiny_config
  cfg = tiny_config('t5')
  saved = dict(cfg.model.to_dict(), d_ff=128, d_model=48, dropout_rate=0.3)  # dropout: runtime
  assert run_config.model_mismatch(saved, cfg.model, 'the model in X') == (
      'config.model.d_ff=64 differs from the model in X (128); so do d_model=32 (48)')
  assert run_config.model_mismatch(cfg.model.to_dict(), cfg.model, 'X') == ''


def test_resume_says_when_the_cosine_schedule_moves_and_when_nothing_is_left(tmp_path):
  workdir = str(tmp_path / 'cosine')
  cosine = ['--config.optimizer.schedule=cosine', '--config.optimizer.warmup_steps=1']
  run_here(workdir, '--config.train.steps=2', *cosine, '--config.train.checkpoint_every=1')
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2'))  # resume inside the decay
  proc = run_here(workdir, '--config.train.steps=3', *cosine)
  assert ('the cosine schedule decays over train.steps (optimizer.decay_steps=0): it was 2 '
          'steps, now 3, so the learning rate changes from step 1 on; set '
          'optimizer.decay_steps=2 to keep it') in proc.stderr
  # Resumed at the end of the saved decay (rate 0): keeping it would train nothing.
  ended = str(tmp_path / 'ended')
  run_here(ended, '--config.train.steps=2', *cosine)
  proc = run_here(ended, '--config.train.steps=3', *cosine)
  assert ('it was 2 steps, now 3, so the learning rate, 0 since step 2, rises again for the '
          'new steps (optimizer.decay_steps=2 would keep it at 0') in proc.stderr
  proc = run_here(workdir, '--config.train.steps=3', *cosine)  # same steps: no notice
  assert 'cosine schedule' not in proc.stdout + proc.stderr
  assert 'at step 3, at or past config.train.steps=3: nothing to train' in proc.stdout
  assert 'done: 0 steps' in proc.stdout and 'no step to train' in proc.stdout
  assert 'None' not in proc.stdout  # (the losses of no step were printed as None)
  proc = run_here(workdir, '--config.train.steps=1', *cosine)  # lower: trains nothing either
  assert 'at step 3, at or past config.train.steps=1: nothing to train' in proc.stdout
  assert 'rises again' not in proc.stderr  # (no step trains: the schedule moves nothing)
  with open(os.path.join(workdir, 'config.json')) as f:  # still the run's, not this rerun's
    assert json.load(f)['train']['steps'] == 3
  proc = run_here(workdir, '--config.train.steps=4', *cosine,
                  '--config.optimizer.decay_steps=3')
  assert 'decays over train.steps (optimizer.decay_steps=0): it was' not in proc.stderr
  assert 'optimizer settings other than the checkpoint\'s: decay_steps 0 -> 3;' in proc.stdout
  assert 'reaches learning rate 0 at optimizer.decay_steps=3, before train.steps=4' in (
      proc.stderr)
  # Both runs inside one warmup of 10 steps decay over its end (warmup + 1): nothing moves,
  # nothing to say (it warned, advising a decay_steps shorter than the warmup).
  workdir = str(tmp_path / 'in_warmup')
  warm = ['--config.optimizer.schedule=cosine', '--config.optimizer.warmup_steps=10']
  run_here(workdir, '--config.train.steps=2', *warm)
  proc = run_here(workdir, '--config.train.steps=3', *warm)
  assert 'restored step 2' in proc.stdout and 'decays over train.steps' not in proc.stderr


def test_a_cosine_schedule_that_idles_is_a_warning(capsys):
  from t5x_lite import optim
  from tiny_run import tiny_config
  cfg = tiny_config('gpt', train=dict(steps=100))  # warmup 100: never decays
  optim.say_if_the_schedule_idles(cfg)
  assert ("the cosine schedule's warmup (optimizer.warmup_steps=100) is not shorter than "
          'train.steps=100 (optimizer.decay_steps=0)') in capsys.readouterr().err
  cfg.optimizer.decay_steps = 101
  optim.say_if_the_schedule_idles(cfg)
  assert capsys.readouterr() == ('', '')
  cfg.train.steps = 150  # steps 102-150 at gpt.py's floor, min_learning_rate 6e-5: they train
  optim.say_if_the_schedule_idles(cfg)
  assert capsys.readouterr() == ('', '')
  cfg.optimizer.min_learning_rate = 0.0  # at rate 0: the params stop changing
  optim.say_if_the_schedule_idles(cfg)
  assert ('the cosine schedule reaches learning rate 0 at optimizer.decay_steps=101, before '
          'train.steps=150: the steps after 101 leave the params unchanged') in (
              capsys.readouterr().err)
  # Settings the other schedules never read were ignored without a word.
  cfg.optimizer.update(dict(schedule='rsqrt', decay_steps=5))
  optim.say_if_the_schedule_idles(cfg)
  assert capsys.readouterr().out == ("[t5x_lite] note: optimizer.decay_steps=5 unused under "
                                     "optimizer.schedule='rsqrt' (cosine reads them all).\n")
  cfg.optimizer.update(dict(schedule='constant', decay_steps=0, min_learning_rate=0.0))
  optim.say_if_the_schedule_idles(cfg)
  assert capsys.readouterr().out == ("[t5x_lite] note: optimizer.warmup_steps=100 unused under "
                                     "optimizer.schedule='constant' (cosine reads them all).\n")
  cfg.optimizer.warmup_steps = 0
  optim.say_if_the_schedule_idles(cfg)
  assert capsys.readouterr() == ('', '')


def test_adafactors_per_step_weight_decay_warns_or_is_refused(capsys):
  """Adafactor's weight decay is t5x's weight_decay_rate, not scaled by the learning rate:
  GPT-2's AdamW value 0.1 would leave 0.9^steps of every matrix."""
  from t5x_lite import optim, validation
  from tiny_run import tiny_config
  cfg = tiny_config('gpt', train=dict(steps=100))
  optim.say_if_adafactor_decay_erases(cfg)  # adamw: lr-scaled, nothing to say
  assert capsys.readouterr() == ('', '')
  cfg.optimizer.name = 'adafactor'
  optim.say_if_adafactor_decay_erases(cfg)
  out = capsys.readouterr().err
  assert ('optimizer.weight_decay=0.1 with adafactor multiplies every weight matrix by 0.9 '
          'each step') in out and f'by {0.9 ** 100:.2g} over train.steps=100' in out
  cfg.optimizer.weight_decay = 1e-5  # a t5x-sized rate: 0.999 over the run
  optim.say_if_adafactor_decay_erases(cfg)
  assert capsys.readouterr() == ('', '')
  cfg.optimizer.weight_decay = 1.0
  with pytest.raises(ValueError, match=r'config.optimizer.weight_decay=1.0 with adafactor '
                                       r'must be < 1'):
    validation.validate_config(cfg, 1)


def test_adamw_moment_decays_under_adafactor_are_said_to_be_unused(capsys):
  """GPT-2's config switched to adafactor keeps its b2=0.95, which adafactor ignores."""
  from t5x_lite import optim
  from tiny_run import tiny_config
  cfg = tiny_config('gpt')
  optim.say_if_adamw_moments_unused(cfg)  # adamw reads them
  assert capsys.readouterr() == ('', '')
  cfg.optimizer.name = 'adafactor'
  optim.say_if_adamw_moments_unused(cfg)
  assert ('warning: optimizer.b2=0.95 unused under adafactor: b1 / b2 are adamw\'s moment '
          'decays; adafactor keeps T5\'s (no momentum') in capsys.readouterr().err
  cfg.optimizer.b2 = 0.999
  optim.say_if_adamw_moments_unused(cfg)
  assert capsys.readouterr().out == ''


def test_a_resume_names_the_optimizer_settings_it_changes(uninterrupted, tmp_path):
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'changed')
  shutil.copytree(ref_dir, workdir)
  changes = ('--config.optimizer.learning_rate=0.003', '--config.optimizer.warmup_steps=7',
             '--config.optimizer.z_loss=0.0', '--config.model.dropout_sites=bert_gpt2',
             '--config.train.seed=3', '--config.train.loss_normalization_constant=2.0')
  proc = run_here(workdir, '--config.train.steps=13', *changes)
  assert 'restored step 12' in proc.stdout, proc.stdout
  line = next(l for l in proc.stdout.splitlines() if 'optimizer settings other' in l)
  assert 'learning_rate 0.03 -> 0.003, warmup_steps 100 -> 7, z_loss 0.0001 -> 0.0;' in line, line
  assert ("resuming with training settings other than the checkpoint's: "
          "train.loss_normalization_constant 1.0 -> 2.0, train.seed 0 -> 3, "
          "model.dropout_sites 't5' -> 'bert_gpt2'.") in proc.stdout
  proc = run_here(workdir, '--config.train.steps=14', *changes)
  assert 'settings other' not in proc.stdout  # as the checkpoint now says


def test_a_resume_names_a_z_loss_change_against_a_checkpoint_from_before_it_moved(
    uninterrupted, tmp_path):
  """Checkpoints saved before 2026-12-06 keep z_loss as train.z_loss: a resume under the
  new optimizer.z_loss still names the change (it compared nothing and said nothing)."""
  from t5x_lite import checkpoint_integrity
  ref_dir, _ = uninterrupted
  workdir = str(tmp_path / 'old_layout')
  shutil.copytree(ref_dir, workdir)
  step_dir = os.path.join(workdir, 'checkpoints', '12')
  for d in os.listdir(os.path.join(workdir, 'checkpoints')):
    if d.isdigit() and d != '12':
      shutil.rmtree(os.path.join(workdir, 'checkpoints', d))
  path = os.path.join(step_dir, 'config', 'metadata')
  saved = json.load(open(path))
  del saved['optimizer']['z_loss']
  saved['train']['z_loss'] = 0.0  # the old layout, with z-loss off
  json.dump(saved, open(path, 'w'))
  checkpoint_integrity.write_manifest(step_dir)  # as if saved so
  proc = run_here(workdir, '--config.train.steps=13')
  assert 'restored step 12' in proc.stdout, proc.stdout
  assert ("optimizer settings other than the checkpoint's: z_loss 0.0 -> 0.0001;"
          in proc.stdout), proc.stdout


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  proc = run(str(blocker / 'sub'), check=False, timeout=120)
  assert proc.returncode == 1
  assert 'is not writable' in proc.stderr.strip().splitlines()[-1]


def test_skipped_input_is_counted_and_reported(tmp_path):
  """Invalid UTF-8 and an empty file are skipped with a count on stderr, never silently."""
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  text = open(os.path.join(ROOT, 'data', 'corpus', 'validation.txt'), 'rb').read()[:60000]
  (corpus / 'a.txt').write_bytes(text + b'\n\nbad \xff\xfe bytes here\n')
  (corpus / 'b.txt').write_bytes(b'')
  proc = run(str(tmp_path / 'skips'), '--config.train.steps=2',
             f'--config.data.train_source=text:{corpus}/*.txt')
  assert 'data train' in proc.stderr and 'invalid UTF-8' in proc.stderr
  assert 'empty file' in proc.stderr and 'b.txt' in proc.stderr
  # The first of each reason is also said as it streams (a warning), and each bad line is
  # counted once however many epochs of this small corpus the pipeline reads ahead.
  assert 'data: skipping invalid UTF-8 at' in proc.stderr, proc.stderr[-3000:]
  report = [l for l in proc.stderr.splitlines() if l.startswith('[t5x_lite] data train')][-1]
  assert '1 x invalid UTF-8' in report and '1 x empty file' in report, report


def test_the_validation_split_is_read_at_start_up_and_its_input_counted_once(tmp_path):
  """A validation source without a usable record failed only at the first eval, after
  train.eval_every steps of training that no checkpoint kept: now it fails before step 1.
  The start-up read leaves no trace in the counts: the eval's report counts each example
  once (11 read, 3 with long targets), and the eval says how many batches it read."""
  rows = [dict(inputs=f'speaker: line {i}', targets='Hamlet') for i in range(8)]
  rows += [dict(inputs='speaker: long', targets=' '.join(['Hamlet'] * 20))] * 3
  rows += [dict(inputs='', targets='x')]
  good, bad = tmp_path / 'good.jsonl', tmp_path / 'bad.jsonl'
  good.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  bad.write_text('{"inputs": "", "targets": "x"}\nnot json\n')
  task = ['--config.data.objective=text_to_text', f'--config.data.train_source=jsonl:{good}',
          '--config.train.steps=1', '--config.train.eval_every=1']
  proc = run_here(str(tmp_path / 'bad'), *task, f'--config.data.validation_source=jsonl:{bad}',
                  check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
      'error: the validation split yielded no batch; check config.data.validation_source '
      f"(skipped 1 x empty field 'inputs' (first at {bad}:1); 1 x invalid JSON (first at "
      f'{bad}:2)).'), proc.stderr[-2000:]
  assert 'step ' not in proc.stdout and not (tmp_path / 'bad' / 'checkpoints').exists()
  proc = run_here(str(tmp_path / 'good'), *task, f'--config.data.validation_source=jsonl:{good}',
                  '--config.train.eval_steps=100')
  evals = [r for r in map(json.loads, open(tmp_path / 'good' / 'metrics.jsonl')) if 'eval_loss' in r]
  assert [r['eval_batches'] for r in evals] == [1]  # 11 short examples packed: not the 100 asked
  reports = [l for l in proc.stderr.splitlines() if l.startswith('[t5x_lite] data validation')]
  assert reports == [
      "[t5x_lite] data validation (this host shard): skipped 1 x empty field 'inputs' (first "
      f'at {good}:12); 0 of 11 examples had inputs longer than data.inputs_length=64 tokens '
      '(EOS included) and were truncated; 3 of 11 examples had targets longer than '
      'data.targets_length=14 tokens (EOS included) and were truncated'], proc.stderr[-3000:]


def test_trained_workdir_exports_to_transformers_with_equal_logits(uninterrupted, tmp_path):
  """convert t5x_to_hf on a training workdir (latest checkpoint) -> transformers logits."""
  import jax
  import torch
  import transformers
  from t5x_lite import conversion as convert, models
  ref_dir, _ = uninterrupted
  model_cfg, params = convert.load_t5x(ref_dir)
  convert.t5x_to_hf(ref_dir, str(tmp_path / 'hf'))
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'hf'))
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 1100, (2, 20)).astype(np.int32)
  dec = np.concatenate([np.zeros((2, 1), np.int32), rng.randint(2, 1100, (2, 9))], axis=1)
  ours = np.asarray(jax.jit(models.build(model_cfg).apply)({'params': params}, {
      'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
      'decoder_target_tokens': np.ones_like(dec)}))
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                      decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  assert np.abs(ours - theirs[..., :ours.shape[-1]]).max() <= 1e-4 * np.abs(theirs).max()


def test_config_files_resolve_from_the_repository_root_outside_it(tmp_path):
  """Run from another directory, the default --config (configs/default.py) and a relative
  --config are found under the repository root, as data paths are (they were 'does not
  exist' errors); a file in neither place is still one."""
  def command(*args):
    return subprocess.run([sys.executable, '-m', *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
  proc = command('t5x_lite.eval', f'--workdir={tmp_path}/none')  # default config
  assert proc.returncode == 1 and 'no checkpoint' in proc.stderr, proc.stderr
  proc = command('t5x_lite.plan', '--config=configs/t5_v1_1.py:tiny')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f'plan {os.path.join(ROOT, "configs/t5_v1_1.py")}:tiny ')
  proc = command('t5x_lite.plan', '--config', 'configs/nope.py')
  assert proc.returncode == 1
  assert 'error: config file configs/nope.py does not exist' in proc.stderr, proc.stderr


def test_a_resume_under_another_optimizer_state_layout_is_refused_and_moves_nothing(
    tmp_path, monkeypatch):
  """Adafactor's weight decay switched on or off, another optimizer, clipping on or off: the
  saved optimizer state is another pytree. Orbax's restore failed, and the resume moved every
  intact checkpoint to corrupt_checkpoints/ (then refused even the original config)."""
  from t5x_lite import optim, train_loop
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'w')
  base = TINY + ['--config.train.steps=2', '--config.train.checkpoint_every=1']
  train_loop.train(config_from_flags(base), workdir)
  again = base[:-2] + ['--config.train.steps=3']
  for override, said in (('weight_decay=1e-05', 'config.optimizer.weight_decay 0.0 -> 1e-05'),
                         ('name=adamw', "config.optimizer.name 'adafactor' -> 'adamw'"),
                         ('clip_grad_norm=1.0', 'config.optimizer.clip_grad_norm 0.0 -> 1.0')):
    with pytest.raises(ValueError, match=re.escape(said) + '.*Nothing was moved.*init_from='):
      train_loop.train(config_from_flags(again + [f'--config.optimizer.{override}']), workdir)
  # Any other pytree change is refused too, by Orbax's own structure check, nothing moved.
  monkeypatch.setattr(optim, 'state_layout_changes', lambda *_: [])
  with pytest.raises(ValueError, match='holds another state pytree than this config builds'):
    train_loop.train(config_from_flags(again + ['--config.optimizer.weight_decay=1e-05']),
                     workdir)
  assert checkpoint_steps(workdir) == [1, 2]
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))
  train_loop.train(config_from_flags(again), workdir)  # the saved settings resume
  assert checkpoint_steps(workdir) == [1, 2, 3]
  # A change that keeps the layout goes on from the restored state, named in the log.
  train_loop.train(config_from_flags(again[:-1] + ['--config.train.steps=4',
                                                   '--config.optimizer.learning_rate=0.5']),
                   workdir)
  assert checkpoint_steps(workdir) == [1, 2, 3, 4]
