"""Virtual shards end to end: 2 processes x 4 CPU devices train on the same global batches
as 1 process x 8 devices, and a checkpoint the 2 processes wrote resumes on 1 process."""
import os
import shutil
import subprocess
import sys

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
      f'stream-{v:05d}-of-00004.json' for v in range(4)]
  proc = _one_process(workdir)
  assert f'restored step {HALF}' in proc.stdout
  a, r = _losses(single), _losses(workdir)
  np.testing.assert_allclose([r[s] for s in range(HALF + 1, STEPS + 1)],
                             [a[s] for s in range(HALF + 1, STEPS + 1)], rtol=1e-5)
