"""Where an accelerator's train step goes: GPU kernel time per step by kind, and the top kernels.

    JAX_PLATFORMS=cuda python launch/gpu_profile.py [--config=configs/t5_v1_1_bf16.py:large]
        [--config.model.attention_impl=cudnn --config.train.batch_size=64
         --config.model.remat=dots ...]

Runs the config's train step on a synthetic batch (default: T5 v1.1 large in bfloat16,
inputs 512, targets 114, `throughput.train_step_runner`, as `bench` times it) for 3
warm-up steps, times 3, then traces 2 under `jax.profiler` (a Perfetto trace, read back
here with nothing but json; `--trace_dir=DIR` keeps it for TensorBoard's profile plugin or
ui.perfetto.dev, else it goes in a temporary directory, removed) and sums the GPU stream
events: matmul kernels (cuBLAS, XLA gemm
fusions), attention kernels (cuDNN), everything else (XLA fusions, copies). Kernel time
close to the step time means the step is not launch-bound; the README's GPU row came
from this breakdown.
"""
import collections
import contextlib
import glob
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402  (after the path above)

from t5x_lite import cli  # noqa: E402

ATTENTION = ('cudnn', 'fmha', 'flash', 'sdpa')
MATMUL = ('gemm', 'cutlass', 'xmma', 'nvjet', 'cublas')


def kind_of(kernel: str) -> str:
  name = kernel.lower()  # cuDNN's attention kernels also say sm90 / wgmma: test them first
  return ('attention' if any(s in name for s in ATTENTION) else
          'matmul' if any(s in name for s in MATMUL) else 'other')


def gpu_kernel_times(trace_dir: str, steps: int):
  """{kernel name: (ms per step, launches per step)} over the trace's GPU streams."""
  data = json.load(gzip.open(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]))
  events = data['traceEvents'] if isinstance(data, dict) else data
  process, thread = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      process[e['pid']] = e['args']['name']
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      thread[(e['pid'], e['tid'])] = e['args']['name']
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if (e.get('ph') == 'X' and 'GPU' in process.get(e['pid'], '')
        and thread.get((e['pid'], e['tid']), '').startswith('Stream')):
      total[e['name']] += e['dur'] / 1e3 / steps
      count[e['name']] += 1
  return {k: (v, count[k] / steps) for k, v in total.items()}


def _define_flags():
  cli.define_config_flag('configs/t5_v1_1_bf16.py:large', 'Config file.')
  flags.DEFINE_integer('top', 30, 'Kernels listed, the slowest first.')
  flags.DEFINE_string('trace_dir', '', 'Keep the trace here (default: a temporary directory, '
                      'removed).')


def main():
  import jax
  from t5x_lite import throughput, validation
  config = flags.FLAGS.config
  validation.validate_config(config, jax.device_count(), data=False)
  step = throughput.train_step_runner(config)
  for _ in range(3):  # compile + warm-up
    step()
  start = time.perf_counter()
  for _ in range(3):
    step()
  step_ms = (time.perf_counter() - start) / 3 * 1e3
  with contextlib.ExitStack() as stack:
    trace_dir = flags.FLAGS.trace_dir or stack.enter_context(
        tempfile.TemporaryDirectory(prefix='gpu_profile_'))
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      step()
      step()
    kernels = gpu_kernel_times(trace_dir, steps=2)
  busy = sum(ms for ms, _ in kernels.values())
  if not busy:
    raise ValueError(f'no GPU kernel in the trace ({jax.default_backend()} backend); this '
                     'tool reads GPU traces only.')
  m = config.model
  print(f'{m.family} d_model={m.d_model} {m.dtype}, attention_impl={m.attention_impl}, batch '
        f'{config.train.batch_size}: {step_ms:.1f} ms per step, GPU kernel time {busy:.1f} ms '
        'per step')
  by_kind = collections.Counter()
  for name, (ms, _) in kernels.items():
    by_kind[kind_of(name)] += ms
  for kind, ms in by_kind.most_common():
    print(f'  {kind}: {ms:.1f} ms ({100 * ms / busy:.0f}%)')
  for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:flags.FLAGS.top]:
    print(f'{ms:8.2f} ms x{n:6.1f}  {kind_of(name):9s} {name[:120]}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='gpu_profile')
