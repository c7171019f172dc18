"""Where an accelerator's train step goes: GPU kernel time per step by kind, and the top kernels.

    JAX_PLATFORMS=cuda python launch/gpu_profile.py [--size=large] [--impl=cudnn] [--batch=32]
        [--set model.remat=dots --set model.scan_layers=False ...]

Runs the bfloat16 T5 v1.1 config (configs/t5_v1_1_bf16.py, inputs 512, targets 114) for 3
warm-up steps, times 3, then traces 2 under `jax.profiler` (a Perfetto trace, read back
here with nothing but json) and sums the GPU stream events: matmul kernels (cuBLAS, XLA gemm
fusions), attention kernels (cuDNN), everything else (XLA fusions, copies). Kernel time
close to the step time means the step is not launch-bound; the README's GPU row came
from this breakdown.
"""
import argparse
import collections
import glob
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def apply_override(cfg, setting: str) -> None:
  """'model.remat=dots' -> cfg.model.remat = 'dots', the value parsed as a Python literal
  where it is one (False, 64, 1e-3) and kept as a string otherwise."""
  import ast
  path, sep, text = setting.partition('=')
  section, _, field = path.partition('.')
  if not sep or not field or section not in cfg or field not in cfg[section]:
    raise SystemExit(f'gpu_profile: error: --set {setting!r}: expected SECTION.FIELD=VALUE '
                     'naming an existing config field.')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  cfg[section][field] = value


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='large')
  parser.add_argument('--impl', default='cudnn', help='model.attention_impl')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--top', type=int, default=30)
  parser.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                      help='config override, e.g. model.remat=dots (repeatable)')
  args = parser.parse_args()
  import jax
  from configs import t5_v1_1_bf16
  from t5x_lite import families, partitioning, trainer as trainer_lib
  cfg = t5_v1_1_bf16.get_config(args.size)
  cfg.model.attention_impl, cfg.train.batch_size = args.impl, args.batch
  for setting in args.set:
    apply_override(cfg, setting)
  from t5x_lite import validation
  try:
    validation.validate_config(cfg, jax.device_count(), data=False)
  except ValueError as e:
    raise SystemExit(f'gpu_profile: error: {e}') from None
  trainer = trainer_lib.Trainer(cfg, partitioning.create_mesh(cfg.partitioning))
  state = trainer.init_state(0)
  batch = trainer.shard_batch(families.synthetic_batch(cfg, args.batch))
  rng = jax.random.PRNGKey(0)

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = trainer.train_step(state, batch, rng)
      jax.block_until_ready(metrics)

  run(3)
  start = time.perf_counter()
  run(3)
  step_ms = (time.perf_counter() - start) / 3 * 1e3
  trace_dir = tempfile.mkdtemp(prefix='gpu_profile_')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run(2)
  kernels = gpu_kernel_times(trace_dir, steps=2)
  busy = sum(ms for ms, _ in kernels.values())
  if not busy:
    sys.exit(f'gpu_profile: error: no GPU kernel in the trace ({jax.default_backend()} backend); '
             'it reads GPU traces only.')
  print(f'T5 v1.1 {args.size} bf16, attention_impl={args.impl}, batch {args.batch}: '
        f'{step_ms:.1f} ms per step, GPU kernel time {busy:.1f} ms per step')
  by_kind = collections.Counter()
  for name, (ms, _) in kernels.items():
    by_kind[kind_of(name)] += ms
  for kind, ms in by_kind.most_common():
    print(f'  {kind}: {ms:.1f} ms ({100 * ms / busy:.0f}%)')
  for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:args.top]:
    print(f'{ms:8.2f} ms x{n:6.1f}  {kind_of(name):9s} {name[:120]}')


if __name__ == '__main__':
  main()
