"""Plan a run before launching it: parameters, FLOPs per token, memory per device
(`t5x_lite.accounting`; nothing is compiled or allocated). Flags: docs/cli.md.

    python -m t5x_lite.plan --config=configs/t5_v1_1.py:small [--num_devices=256] [--per_param]
"""
import textwrap

from absl import flags
from ml_collections import config_flags

from t5x_lite import accounting
from t5x_lite import cli
from t5x_lite import families
from t5x_lite import models
from t5x_lite import validation

FLAGS = flags.FLAGS


def _human(n: float) -> str:
  for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if abs(n) >= scale:
      return f'{n / scale:.2f} {unit}'
  return f'{int(n)} B'


def _flops(n: float) -> str:
  for unit, scale in (('P', 1e15), ('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:8.3f} {unit}'
  return f'{n:8.0f}  '


def report(config, num_devices: int, per_param: bool = False, name: str = '') -> str:
  """The plan as text (raises ValueError for an impossible mesh or config)."""
  # Fail on a config train would refuse (an impossible mesh, a malformed rules table, a bad
  # field) before tracing the model.
  validation.validate_portable(config, num_devices)
  boxed = models.abstract_params(config.model)
  counts = accounting.count_params(config, boxed)
  flops = accounting.flops_per_token(config, boxed)
  mem = accounting.memory_per_device(config, num_devices, boxed)
  mcfg = models.ModelConfig.from_config(config.model)
  layers = families.layer_counts(mcfg).values()  # encoder/decoder, 0 for an absent stack
  lines = [f'plan {name} family={mcfg.family} d_model={mcfg.d_model} d_ff={mcfg.d_ff} '
           f'heads={mcfg.num_heads} d_kv={mcfg.d_kv} layers={"/".join(map(str, layers))} '
           f'vocab={mcfg.vocab_size}'.replace('  ', ' '), '']
  unused = families.unused_layer_counts(mcfg)
  if unused:
    lines[-1:-1] = [f'note: {unused}']
  lines.append(f'parameters: {counts["total"]:,} total '
               f'({counts["non_embedding"]:,} non-embedding, {counts["embedding"]:,} in '
               'embedding tables)')
  order = ['token_embedder', 'encoder', 'decoder', 'logits_head']
  for module, n in sorted(counts['by_module'].items(),
                          key=lambda kv: (order.index(kv[0]) if kv[0] in order else 9, kv[0])):
    lines.append(f'  {module:<22}{n:>16,}  {100 * n / counts["total"]:5.1f}%')

  lg = flops['lengths']
  used = []
  if lg['encoder']:
    used.append(f'L_enc = data.inputs_length = {lg["encoder"]}')
  if lg['decoder']:
    source = ('data.inputs_length + data.targets_length' if lg['decoder'] !=
              int(config.data.targets_length) else 'data.targets_length')
    used.append(f'L_dec = {source} = {lg["decoder"]}')
  lines += ['', f'FLOPs (matmul only), {", ".join(used)} tokens per example; per target token '
            f'= per example / {lg["target"]}; per processed token = per example / '
            f'{lg["encoder"] + lg["decoder"]}',
            f'  {"":<24}{"per example":>14}{"per target token":>20}{"per processed token":>22}']
  labels = dict(dense='dense matmuls', self_attention='self-attention (full)',
                cross_attention='cross-attention', logits='logits',
                forward='forward', train='train (3 x forward)')
  for key in accounting.TERMS:
    lines.append(f'  {labels[key]:<24}{_flops(flops["per_example"][key]):>14}'
                 f'{_flops(flops[key]):>20}{_flops(flops["per_processed_token"][key]):>22}')
  lines += textwrap.wrap(f'formula: {accounting.FORMULA}', 96, initial_indent='  ',
                         subsequent_indent='    ')

  mesh = ' '.join(f'{k}={v}' for k, v in mem['mesh'].items())
  act = mem['activations_estimate']
  lines += ['', f'memory per device: mesh {mesh} ({num_devices} devices), '
            f'optimizer {mem["optimizer"]}',
            f'  params (float32)          {_human(mem["params_bytes"]):>12}',
            f'  optimizer state           {_human(mem["optimizer_bytes"]):>12}',
            f'  gradients (float32)       {_human(mem["grads_bytes"]):>12}',
            f'  update (float32)          {_human(mem["update_bytes"]):>12}',
            f'  activations (ESTIMATE)    {_human(act["bytes"]):>12}  '
            f'({act["examples_per_device"]:g} examples/device per microbatch, '
            f'remat={act["remat"]}, dtype={act["dtype"]})',
            f'  total (estimate)          {_human(mem["total_bytes"]):>12}']
  if per_param:
    lines += ['', '  per parameter: global shape -> per-device shape [mesh axes] params + opt']
    for pname, info in mem['per_param'].items():
      spec = ', '.join(str(s) for s in info['spec'])
      lines.append(f'    {pname:<56} {str(info["shape"]):>16} -> {str(info["local_shape"]):<16}'
                   f' [{spec}] {_human(info["bytes"])} + {_human(info["optimizer_bytes"])}')
  return '\n'.join(lines)


def main():
  import jax
  num_devices = jax.device_count() if FLAGS.num_devices is None else FLAGS.num_devices
  print(report(FLAGS.config, num_devices, FLAGS.per_param,
               config_flags.get_config_filename(FLAGS['config'])))


def _define_flags():
  cli.define_config_flag(None, 'Config file, e.g. configs/t5_v1_1.py:small.', lock_config=True)
  flags.DEFINE_integer('num_devices', None, 'Devices to plan for (default: jax.device_count()).')
  flags.DEFINE_bool('per_param', False, 'Also list every parameter and its sharding.')
  flags.mark_flags_as_required(['config'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='plan')
