"""Commands restart themselves with glibc's huge-pages tunable where it applies
(`cli.restart_with_huge_pages`), and that cuts the page faults of XLA's per-call temporaries."""
import json
import os
import subprocess
import sys

from t5x_lite import cli
from tiny_run import ROOT

# In the child: what `cli.run` does first, then page faults per call of a jitted function
# whose [8192, 8192] float32 intermediate (256 MiB, 65,536 pages of 4 KiB) XLA allocates
# afresh on every call.
CHILD = r'''
import json, os, resource
from t5x_lite import cli
cli.restart_with_huge_pages()
import jax, jax.numpy as jnp
v = jnp.ones((8192, 64), jnp.float32)
f = jax.jit(lambda v: (v @ v.T) @ v)
jax.block_until_ready(f(v))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  jax.block_until_ready(f(v))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps(dict(tunables=os.environ.get('GLIBC_TUNABLES'), pid=os.getpid(),
                      faults_per_call=faults)))
'''
PAGES = 8192 * 8192 * 4 // 4096


def run_child(**env):
  environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  environ.update(env)
  proc = subprocess.Popen([sys.executable, '-c', CHILD], cwd=ROOT, env=environ, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  assert result['pid'] == proc.pid, 'the restart replaces the process, it does not fork'
  return result


def host_applies():
  with open(cli._THP_MODE_FILE) as f:
    return cli.huge_pages_environ({}, os.confstr('CS_GNU_LIBC_VERSION'), f.read()) is not None


def test_restart_sets_the_tunable_and_cuts_page_faults():
  restarted = run_child()
  opted_out = run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert opted_out['tunables'] == 'glibc.malloc.hugetlb=0', 'a tunable the user set is kept'
  # 4 KiB pages: every call faults the whole temporary in again.
  assert opted_out['faults_per_call'] > 0.5 * PAGES, opted_out
  if host_applies():
    assert restarted['tunables'] == 'glibc.malloc.hugetlb=1'
    assert restarted['faults_per_call'] < 0.1 * PAGES, restarted
  else:  # the kernel's THP mode is `always` or `never`, or no glibc >= 2.35: nothing to gain
    assert restarted['tunables'] is None


def test_environment_rules():
  madvise, glibc = 'always [madvise] never', 'glibc 2.36'
  assert cli.huge_pages_environ({'A': '1'}, glibc, madvise) == {
      'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert cli.huge_pages_environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, glibc,
                                madvise)['GLIBC_TUNABLES'] == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  for environ, libc, mode in [
      ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, glibc, madvise),  # the user's choice
      ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, glibc, madvise),  # already restarted
      ({}, glibc, '[always] madvise never'),  # huge pages without asking
      ({}, glibc, 'always madvise [never]'),  # madvise would be ignored
      ({}, 'glibc 2.34', madvise),  # no such tunable before 2.35
      ({}, '', madvise)]:  # another C library
    assert cli.huge_pages_environ(environ, libc, mode) is None, (environ, libc, mode)
