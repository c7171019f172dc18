"""Sharding and multi-host edge cases beyond tests/test_sharding.py and
tests/test_data_multiprocess.py:

- mesh and dcn_mesh sizes of the wrong type or value, a -1 axis that cannot be a multiple of
  its dcn size, and `plan` for a non-positive device count: one ValueError naming the field;
- malformed `logical_axis_rules` (as a command-line override writes them): one error line
  naming the field, in `plan` and `train`;
- on 2 real processes (jax.distributed on CPU): a mesh whose batch axes (data x fsdp) do not
  separate the processes (tensor parallelism across hosts) must still hold rows of one global
  batch on every device; params split across processes reach the host for the closing
  predictions; a signal on one process stops both at the same step;
- the launch scripts: local_multiprocess.sh shows a failing process's error, tpu_pod.sh passes
  flags through ssh intact, slurm_gpu.sbatch gives each process all of its node's GPUs.
"""
import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap

import ml_collections
import pytest

import tiny_run
from t5x_lite import partitioning, plan

ROOT = tiny_run.ROOT


def partitioning_cfg(mesh=None, dcn=None):
  return ml_collections.ConfigDict(dict(
      mesh=dict(dict(data=-1, fsdp=1, tensor=1), **(mesh or {})),
      dcn_mesh=dict(dict(data=1, fsdp=1, tensor=1), **(dcn or {}))))


# ------------------------------------------------------------------- mesh values
@pytest.mark.parametrize('mesh,dcn,field', [
    (dict(data=2.5), None, 'config.partitioning.mesh.data'),      # was int(2.5) = 2
    (dict(fsdp='2'), None, 'config.partitioning.mesh.fsdp'),
    (dict(tensor=True), None, 'config.partitioning.mesh.tensor'),  # was 1
    (None, dict(fsdp=0), 'config.partitioning.dcn_mesh.fsdp'),      # was named mesh.fsdp
    (None, dict(data=-1), 'config.partitioning.dcn_mesh.data'),
], ids=['float', 'string', 'bool', 'dcn_zero', 'dcn_fill'])
def test_bad_mesh_values_name_their_field(mesh, dcn, field):
  with pytest.raises(ValueError, match=re.escape(field) + r'\W'):
    partitioning.mesh_shape(partitioning_cfg(mesh, dcn), 8)


def test_fill_axis_must_be_a_multiple_of_its_dcn_size():
  """mesh sizes are per slice: data=-1 over 2 slices of fsdp=8 needs 16 devices, not 8
  (it gave data=1, an ici size of 1 // 2 = 0 for create_mesh)."""
  cfg = partitioning_cfg(dict(fsdp=8), dict(data=2))
  with pytest.raises(ValueError, match=r'config\.partitioning\.mesh .*cannot fill 8 devices'):
    partitioning.mesh_shape(cfg, 8)
  assert partitioning.mesh_shape(cfg, 16) == dict(data=2, fsdp=8, tensor=1)


@pytest.mark.parametrize('num_devices', [0, -8])
def test_plan_rejects_a_non_positive_device_count(num_devices):
  cfg = tiny_run.tiny_config('t5')
  with pytest.raises(ValueError, match='device count must be a positive integer'):
    plan.report(cfg, num_devices)  # -8 printed a plan for a mesh of data=-8


# ---------------------------------------------------------------- logical axis rules
BAD_RULES = {
    'unknown_axis': ((('embed', 'fsdpp'),), r"unknown mesh axis 'fsdpp'"),
    'int_axis': ((('embed', 3),), r'logical_axis_rules\[0\]'),
    'one_element': ((('embed',),), r'logical_axis_rules\[0\].*must be a pair'),
    'three_elements': ((('embed', 'fsdp', 'data'),), r'logical_axis_rules\[0\].*must be a pair'),
    'int_name': (((3, 'fsdp'),), r'logical_axis_rules\[0\].*name must be a string'),
    'axis_twice': ((('batch', ('data', 'data')),), r'logical_axis_rules\[0\].*twice'),
    'not_a_table': ('embed', r'logical_axis_rules=.*must be a tuple of rules'),
    # inputs are split over data x fsdp: activations split otherwise reshard every step
    'batch_elsewhere': ((('batch', 'data'), ('embed', None)), r"maps 'batch' to 'data'"),
    'no_batch_rule': ((('embed', None),), r"maps 'batch' to None"),
}


@pytest.mark.parametrize('name', list(BAD_RULES))
def test_plan_rejects_malformed_axis_rules(name):
  rules, message = BAD_RULES[name]
  cfg = tiny_run.tiny_config('t5')
  cfg.partitioning = ml_collections.ConfigDict(  # a new field: any type, as a config file can
      dict(cfg.partitioning.to_dict(), logical_axis_rules=rules))
  with pytest.raises(ValueError) as info:
    plan.report(cfg, 8)
  assert 'config.partitioning.logical_axis_rules' in str(info.value), info.value
  assert re.search(message, str(info.value)), info.value


def test_train_reports_a_malformed_rule_override_in_one_line(tmp_path):
  """The override a user types: was a TypeError traceback from validation."""
  proc = subprocess.run(
      [sys.executable, '-m', 't5x_lite.train', *tiny_run.TINY_MODEL,
       f'--workdir={tmp_path / "run"}', '--config.partitioning.logical_axis_rules=(("embed", 3),)'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'config.partitioning.logical_axis_rules[0]' in lines[0], proc.stderr


# ------------------------------------------------- batches on two real processes
GLOBAL_BATCH_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np, ml_collections
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.config.update('jax_num_cpu_devices', 2)
    jax.distributed.initialize(f'127.0.0.1:{port}', 2, pid, initialization_timeout=60)
    from t5x_lite import partitioning
    out = {}
    for name, mesh in [('tensor_across_hosts', dict(data=1, fsdp=1, tensor=4)),
                       ('data_across_hosts', dict(data=2, fsdp=1, tensor=2))]:
      cfg = ml_collections.ConfigDict(dict(mesh=mesh, dcn_mesh=dict(data=1, fsdp=1, tensor=1)))
      m = partitioning.create_mesh(cfg)
      host = {'x': (np.arange(4, dtype=np.int32) + 4 * pid)[:, None]}  # rows 4p .. 4p + 3
      g = partitioning.global_batch(host, m)['x']
      out[name] = dict(shape=list(g.shape), shards=sorted(np.asarray(s.data)[:, 0].tolist()
                                     for s in g.addressable_shards))
      if hasattr(partitioning, 'processes_share_batch_rows'):
        out[name]['shared'] = partitioning.processes_share_batch_rows(m)
    # Params split over both processes (FSDP across hosts), as train's closing predictions
    # read them: was jax.device_get on process 0 alone, a RuntimeError for such arrays.
    from jax.sharding import NamedSharding, PartitionSpec as P
    from t5x_lite import train_loop
    cfg = ml_collections.ConfigDict(dict(mesh=dict(data=1, fsdp=4, tensor=1),
                                         dcn_mesh=dict(data=1, fsdp=1, tensor=1)))
    m = partitioning.create_mesh(cfg)
    kernel = jax.make_array_from_callback(
        (8, 2), NamedSharding(m, P('fsdp', None)),
        lambda index: np.arange(16, dtype=np.float32).reshape(8, 2)[index])
    try:
      host = getattr(train_loop, 'host_params', jax.device_get)({'kernel': kernel})
      out['host_params'] = np.asarray(host['kernel']).ravel().tolist()
    except RuntimeError as e:
      out['host_params'] = str(e)[:200]
    # SIGTERM / SIGINT seen by process 1 alone from step 3 on: both processes must stop at
    # the same step (the one that saw it had checkpointed and left the loop while the other
    # ran the next step: both hung in collectives).
    if hasattr(train_loop, 'StopVote'):
      vote = train_loop.StopVote()
      out['stop_vote'] = [vote.step(pid == 1 and s >= 3) for s in range(1, 7)]
    print('RESULT ' + json.dumps(out), flush=True)
    ''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
  """GLOBAL_BATCH_SCRIPT's results on 2 processes x 2 CPU devices (jax.distributed)."""
  script = tmp_path_factory.mktemp('two_processes') / 'script.py'
  script.write_text(GLOBAL_BATCH_SCRIPT)
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, str(script), str(p), port], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p in range(2)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads(out.split('RESULT ', 1)[1].splitlines()[0]))
  return results


def test_global_batch_when_processes_share_batch_rows(two_processes):
  """Each process feeds 4 rows of an 8-row global batch. With tensor=4 (batch axes of size
  1) both processes hold every row: each fed its own 4 rows as if they were the whole batch,
  so the two hosts trained on different 4-row 'global' batches (their losses differed, and
  from one process's). With data=2 each process holds its own rows, as before."""
  for pid, r in enumerate(two_processes):
    shared = r['tensor_across_hosts']
    assert shared['shape'] == [8, 1] and shared.get('shared'), r
    assert shared['shards'] == [list(range(8))] * 2, r          # every row, on every device
    split = r['data_across_hosts']
    assert split['shape'] == [8, 1] and not split.get('shared'), r
    assert split['shards'] == [list(range(4 * pid, 4 * pid + 4))] * 2, r


def test_host_params_of_params_split_across_processes(two_processes):
  """train's closing predictions (`--show_predictions`, on by default) fetched the params on
  process 0 with jax.device_get: a RuntimeError traceback at the end of every multi-host run
  whose params span hosts (FSDP), after its last checkpoint."""
  for r in two_processes:
    assert r['host_params'] == list(range(16)), r


def test_a_signal_on_one_process_stops_every_process_at_the_same_step(two_processes):
  """Process 1 alone is signalled at step 3 (a preempted host, `kill` of one task): the
  train loop asks `StopVote` at every step; both processes get True from step 4 on."""
  for r in two_processes:
    assert r.get('stop_vote') == [False, False, False, True, True, True], r


# ------------------------------------------------------------------ launch scripts
def _fake_program(path, body):
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


def test_local_multiprocess_shows_the_error_of_a_failing_process(tmp_path):
  """Only process 0's log was printed: a failure of process 1 (here: process 0 succeeds)
  showed nothing of why."""
  python = _fake_program(tmp_path / 'python', textwrap.dedent('''\
      case " $* " in
        *" --process_id=1 "*) echo "error: config.x is bad on process 1" >&2; exit 1 ;;
      esac
      case "$1" in -c) exec python3 "$@" ;; esac  # the script's free-port helper
      echo "process 0 trained"
      '''))
  proc = subprocess.run(['bash', 'launch/local_multiprocess.sh', str(tmp_path / 'run'), '2', '1'],
                        cwd=ROOT, env=dict(os.environ, PYTHON=str(python)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1
  out = proc.stdout + proc.stderr
  assert 'process 0 trained' in out
  assert 'error: config.x is bad on process 1' in out, out


def test_local_multiprocess_rerun_keeps_the_previous_runs_logs(tmp_path):
  """A resume overwrote the logs of the run it resumes, e.g. the one that said why it died."""
  python = _fake_program(tmp_path / 'python', textwrap.dedent('''\
      case "$1" in -c) exec python3 "$@" ;; esac
      echo "run $RUN of $*"
      '''))
  for run in ('1', '2'):
    proc = subprocess.run(['bash', 'launch/local_multiprocess.sh', str(tmp_path / 'wd'), '2', '1'],
                          cwd=ROOT, env=dict(os.environ, PYTHON=str(python), RUN=run),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
  for i in (0, 1):
    assert (tmp_path / f'wd.process_{i}.log').read_text().startswith('run 2 of ')
    assert (tmp_path / f'wd.process_{i}.log.prev').read_text().startswith('run 1 of ')


ARGV_PRINTER = 'import json, sys; print("ARGV " + json.dumps(sys.argv[1:]))'


def test_tpu_pod_passes_flags_through_ssh_intact(tmp_path):
  """The worker command was built from unquoted `$*`: a rules override with parentheses and
  quotes (or a path with a space) broke the remote shell or was split into other words."""
  home = tmp_path / 'home'
  venv_bin = home / 't5x_lite' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  _fake_program(venv_bin / 'python', f'exec python3 -c {json.dumps(ARGV_PRINTER)} "$@"\n')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  # gcloud ... --command=CMD: run CMD in a login-like shell of the worker, as ssh does.
  _fake_program(bin_dir / 'gcloud', textwrap.dedent('''\
      for a in "$@"; do case "$a" in --command=*) cmd="${a#--command=}" ;; esac; done
      exec bash -c "$cmd"
      '''))
  flags = ['--config=configs/t5_v1_1.py:base',
           "--config.partitioning.logical_axis_rules=(('batch', ('data', 'fsdp')), ('embed', None))",
           '--config.data.train_source=text:/data/my corpus/*.txt']
  proc = subprocess.run(['bash', 'launch/tpu_pod.sh', 'gs://bucket/run 1', *flags], cwd=ROOT,
                        env=dict(os.environ, TPU_NAME='pod', ZONE='zone', HOME=str(home),
                                 PATH=f'{bin_dir}:{os.environ["PATH"]}'),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  argv = json.loads(proc.stdout.split('ARGV ', 1)[1].splitlines()[0])
  assert argv == ['-m', 't5x_lite.train', '--distributed=auto', '--workdir=gs://bucket/run 1',
                  *flags], argv


def test_slurm_gives_each_process_all_gpus_of_its_node(tmp_path):
  """One task per node: jax.distributed's SLURM detection sets local_device_ids to
  [SLURM_LOCALID] = [0] unless JAX_LOCAL_DEVICE_IDS says otherwise, so every node trained on
  one of its 8 GPUs."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _fake_program(bin_dir / 'srun', 'echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"\n'
                                  'echo "ARGS $*"\n')
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='7',
             SLURM_NTASKS='2', SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_GPUS_ON_NODE='8',
             SLURM_STEP_NODELIST='node[1-2]', SLURM_STEP_NUM_NODES='2')
  env.pop('JAX_LOCAL_DEVICE_IDS', None)
  proc = subprocess.run(['bash', 'launch/slurm_gpu.sbatch', '/shared/run', '--config=c.py'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  ids = proc.stdout.split('JAX_LOCAL_DEVICE_IDS=', 1)[1].splitlines()[0]
  assert ids == '0,1,2,3,4,5,6,7', proc.stdout
  assert '--distributed=auto --workdir=/shared/run --config=c.py' in proc.stdout
  # jax.distributed.initialize reads the variable before its SLURM detection would set
  # local_device_ids to [SLURM_LOCALID].
  import inspect
  from jax._src import distributed
  assert 'JAX_LOCAL_DEVICE_IDS' in inspect.getsource(distributed)
