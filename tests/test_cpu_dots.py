"""Commands leave CPU dots to XLA's own emitter (`cli.use_xla_cpu_dots`), and the pinned
jaxlib honours the flag: a matmul compiles without YNNPACK unless the user chose otherwise."""
import json
import os
import subprocess
import sys

from t5x_lite import cli
from tiny_run import ROOT

# In the child: what `cli.run` does first, then whether a jitted matmul's compiled HLO hands
# the dot to YNNPACK.
CHILD = r'''
import json, os
from t5x_lite import cli
cli.use_xla_cpu_dots()
import jax, jax.numpy as jnp
a = jnp.ones((256, 256), jnp.float32)
hlo = jax.jit(lambda x, y: x @ y).lower(a, a).compile().as_text()
print(json.dumps(dict(xla_flags=os.environ.get('XLA_FLAGS'), ynnpack='__ynn_fusion' in hlo,
                      dot=' dot(' in hlo)))
'''
YNN_DOTS = f'--{cli.CPU_DOT_OPTION}={cli.CPU_DOT_EMITTERS["ynnpack"]}'


def run_child(xla_flags=None):
  environ = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    environ['XLA_FLAGS'] = xla_flags
  out = subprocess.run([sys.executable, '-c', CHILD], cwd=ROOT, env=environ, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_commands_compile_dots_with_xla_unless_the_user_chose():
  ours = run_child()
  assert ours['xla_flags'] == cli.CPU_DOTS_SETTING
  assert ours['dot'] and not ours['ynnpack'], ours
  users = run_child(YNN_DOTS)  # jaxlib's default, named by the user: kept, and it applies
  assert users['xla_flags'] == YNN_DOTS
  assert users['ynnpack'], users


def test_environ_keeps_other_flags_and_a_users_choice():
  env = cli.xla_cpu_dots_environ({'XLA_FLAGS': '--xla_dump_to=/tmp/x', 'HOME': '/h'})
  assert env == {'XLA_FLAGS': f'--xla_dump_to=/tmp/x {cli.CPU_DOTS_SETTING}', 'HOME': '/h'}
  assert cli.xla_cpu_dots_environ({}) == {'XLA_FLAGS': cli.CPU_DOTS_SETTING}
  assert cli.xla_cpu_dots_environ({'XLA_FLAGS': YNN_DOTS}) is None
  # No CPU backend asked for (launch/gpu_bench.sh): no CPU flag; CPU among others: set.
  assert cli.xla_cpu_dots_environ({'JAX_PLATFORMS': 'cuda'}) is None
  assert cli.xla_cpu_dots_environ({'JAX_PLATFORMS': 'cuda,cpu'}) == {
      'JAX_PLATFORMS': 'cuda,cpu', 'XLA_FLAGS': cli.CPU_DOTS_SETTING}
