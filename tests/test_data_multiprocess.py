"""Virtual shards end to end: 2 processes x 4 CPU devices train on the same global batches
as 1 process x 8 devices, and a checkpoint the 2 processes wrote resumes on 1 process; an
error only one of 2 processes hits stops both at once."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tiny_run import ROOT, TINY_MODEL

STEPS = 16
HALF = STEPS // 2  # the checkpoint the one-process run resumes from
TINY = TINY_MODEL + [
    '--config.data.targets_length=14', '--config.train.log_every=1', '--config.train.eval_every=0',
    '--config.checkpoint.keep=10', '--show_predictions=0', f'--config.train.steps={STEPS}',
    f'--config.train.checkpoint_every={HALF}',
]


def _losses(workdir):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, filter(str.strip, f))}


def _one_process(workdir):
  proc = subprocess.run([sys.executable, '-m', 't5x_lite.train', *TINY, f'--workdir={workdir}',
                         '--num_cpu_devices=8'], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp('vshards')
  single, multi = str(base / 'single'), str(base / 'multi')
  _one_process(single)
  env = dict(os.environ, PYTHON=sys.executable, CONFIG='configs/default.py')
  overrides = [o for o in TINY if not o.startswith('--config=')]
  proc = subprocess.run(['bash', 'launch/local_multiprocess.sh', multi, '2', '4', *overrides],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert ("mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s) in 2 processes (this "
          'one: 0)') in proc.stdout  # process 0's log
  assert 'in 2 processes (this one: 1)' in open(f'{multi}.process_1.log').read()
  return single, multi


def test_two_processes_see_the_global_batches_of_one(runs):
  single, multi = runs
  a, b = _losses(single), _losses(multi)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  assert a[1] != a[2]  # the losses move: a data mix-up would show


def test_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
  single, multi = runs
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(multi, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(STEPS)))   # resume from step HALF
  data = os.listdir(os.path.join(workdir, 'checkpoints', str(HALF), 'data'))
  assert sorted(f for f in data if f.endswith('.json')) == [         # one state per stream
      'files.json'] + [f'stream-{v:05d}-of-00004.json' for v in range(4)]  # + one listing
  proc = _one_process(workdir)
  assert f'restored step {HALF}' in proc.stdout
  a, r = _losses(single), _losses(workdir)
  np.testing.assert_allclose([r[s] for s in range(HALF + 1, STEPS + 1)],
                             [a[s] for s in range(HALF + 1, STEPS + 1)], rtol=1e-5)


def _launch(workdir, overrides, timeout):
  """launch/local_multiprocess.sh WORKDIR 2 1 (2 processes x 1 CPU device): (exit status,
  stdout + stderr, seconds); every process it started is killed if it runs past `timeout`."""
  env = dict(os.environ, PYTHON=sys.executable, CONFIG='configs/default.py')
  start = time.monotonic()
  proc = subprocess.Popen(['bash', 'launch/local_multiprocess.sh', workdir, '2', '1', *overrides],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both train processes
    proc.communicate()
    logs = ''.join(f'--- process {i}:\n' + open(f'{workdir}.process_{i}.log').read()[-1500:]
                   for i in (0, 1) if os.path.exists(f'{workdir}.process_{i}.log'))
    pytest.fail(f'the 2 processes still ran {timeout} s after their start (hung):\n{logs}')
  return proc.returncode, out + err, time.monotonic() - start


@pytest.mark.parametrize('failing', [1, 0])  # 0 also hosts jax.distributed's service
def test_an_error_in_one_process_stops_every_process_promptly(tmp_path, failing):
  """A bad TSV line (data.on_bad_input=error) in the file only one process reads: that
  process printed its error and then waited in jax.distributed's shutdown barrier while the
  other sat in the first step's collective; both aborted 5 minutes later (SIGABRT, C++ stack
  dumps). Now the failing one exits 1 with its line, the other stops within the heartbeat
  timeout (30 s; in practice about a second) saying which process failed and why."""
  for i in (0, 1):  # 2 files, 2 streams: process i reads file i alone (files dealt round-robin)
    lines = [f'reverse: w{n} n{n}\tn{n} w{n}' for n in range(40)]
    if i == failing:
      lines[2] = 'a line without a tab'  # line 4 of the file (after the header)
    (tmp_path / f'f{i}.tsv').write_text('inputs\ttargets\n' + '\n'.join(lines) + '\n')
  workdir = str(tmp_path / 'run')
  overrides = [o for o in TINY if not o.startswith('--config=')] + [
      '--config.data.objective=text_to_text', f'--config.data.train_source=tsv:{tmp_path}/f*.tsv',
      '--config.data.on_bad_input=error', '--config.data.num_virtual_shards=2',
      '--config.data.shuffle_buffer_size=4']
  status, out, seconds = _launch(workdir, overrides, timeout=180)
  bad = f'{tmp_path}/f{failing}.tsv:4: TSV row with wrong number of columns'
  other = 1 - failing
  logs = [open(f'{workdir}.process_{i}.log').read() for i in (0, 1)]
  assert status == 1, out
  assert f'--- process {failing} exited with status 1' in out, out
  assert f'--- process {other} exited with status 1' in out, out
  assert logs[failing].rstrip().splitlines()[-1].startswith(f'error: {bad}'), logs[failing]
  assert logs[other].rstrip().splitlines()[-1].startswith(
      f'error: process {failing} of 2 failed, so process {other} stops too: {bad}'), logs[other]
  for log in logs:  # one line each, no abort
    assert 'Traceback' not in log and 'Fatal' not in log and 'Terminating process' not in log, log
  # The other process's last line came within the heartbeat timeout of the failing one's.
  lag = os.path.getmtime(f'{workdir}.process_{other}.log') - os.path.getmtime(
      f'{workdir}.process_{failing}.log')
  assert lag < 30, (lag, seconds)
  checkpoints = os.path.join(workdir, 'checkpoints')  # nothing saved, nothing half-written
  assert not os.path.isdir(checkpoints) or not os.listdir(checkpoints)
