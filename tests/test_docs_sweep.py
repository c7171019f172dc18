"""Commands checked against docs/cli.md's error contract (a bad flag is one `error:` line and
exit status 1, never a traceback) where a documentation sweep found them apart."""
import os
import subprocess
import sys

import pytest

from tiny_run import ROOT


def test_inspect_workdir_lists_a_stray_entry_of_corrupt_checkpoints(tmp_path, capsys):
  """`inspect --workdir` lists what corrupt_checkpoints/ holds; an entry not named
  <step>-<time> (a note someone left there) was a TypeError formatting its step."""
  from t5x_lite import inspect as inspect_cmd
  os.makedirs(tmp_path / 'corrupt_checkpoints' / 'notes')
  with pytest.raises(ValueError, match='no usable checkpoint'):
    inspect_cmd.list_checkpoints(str(tmp_path))
  line, = capsys.readouterr().out.splitlines()
  assert 'moved aside' in line and line.rstrip().endswith('notes')


@pytest.mark.parametrize('command, args, named', [
    ('bench', ['--config=configs/default.py', '--train_only', '--steps=0'], '--steps=0'),
    ('bench', ['--config=configs/default.py', '--decode_only', '--rounds=0'], '--rounds=0'),
    ('inspect', ['--config=configs/default.py', '--num_shards=0'], '--num_shards=0'),
    ('data.bench', ['--seconds=0'], '--seconds=0'),
    ('data.bench', ['--corpus_gb=-1'], '--corpus_gb=-1.0 must be >= 0'),  # ran the shipped one
])
def test_bad_counts_are_one_error_line(command, args, named):
  proc = subprocess.run([sys.executable, '-m', f't5x_lite.{command}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'error:' in lines[0] and named in lines[0], proc.stderr[-2000:]
