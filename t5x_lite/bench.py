r"""Train-step benchmark: step time, tokens/s and MFU for a config on this machine's devices.

    python -m t5x_lite.bench --config=configs/t5_v1_1.py:small [--steps=10] [--peak_flops=...]

Feeds synthetic batches of the configured shapes (random ids, full loss weights), so it
measures the model + optimizer step alone. Compilation and one warm-up step are excluded.
MFU = 3 x forward matmul FLOPs per example (accounting.flops_per_token, formula printed)
x examples/s / (devices x peak FLOP/s per device).
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def main():
  import jax
  from t5x_lite import accounting, throughput, validation
  config = FLAGS.config
  validation.validate_config(config, jax.device_count())
  r = throughput.measure_train_step(config, FLAGS.steps)
  peak = accounting.peak_flops_per_device(r['device_kind'], FLAGS.peak_flops)
  mfu = (f'{100 * r["flops_per_sec"] / (r["devices"] * peak):.1f}%' if peak else
         f'n/a (no peak for {r["device_kind"]!r}; pass --peak_flops)')
  print(f'{r["devices"]} x {r["device_kind"]}, batch {config.train.batch_size}: '
        f'{1000 * r["step_time"]:.1f} ms/step, {r["tokens_per_sec"]:,.0f} tokens/s, '
        f'{r["flops_per_sec"] / 1e9:,.1f} GFLOP/s, MFU {mfu}')
  print(f'FLOPs: {r["formula"]}')


if __name__ == '__main__':
  cli.define_config_flag('configs/default.py', 'Config file.')
  flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile + warm-up step).')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device (0 = from the table).')
  cli.run(main, needs_workdir=False)
