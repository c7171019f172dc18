r"""Train-step benchmark: step time, tokens/s and MFU for a config on this machine's devices.

    python -m t5x_lite.bench --config=configs/t5_v1_1.py:small [--steps=10] [--peak_flops=...]

Feeds synthetic batches of the configured shapes (random ids, full loss weights), so it
measures the model + optimizer step alone. Compilation and one warm-up step are excluded.
MFU = 3 x forward matmul FLOPs per example (plan.flops_per_token, formula printed)
x examples/s / (devices x peak FLOP/s per device).
"""
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags
from ml_collections import config_flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def synthetic_batch(config, batch_size: int, seed: int = 0):
  """Random ids with the feature names and lengths the family's train step reads."""
  import numpy as np
  from t5x_lite import models, plan
  family = models.ModelConfig.from_config(config.model).family
  lengths = plan.sequence_lengths(config)
  rng = np.random.RandomState(seed)
  ids = lambda n: rng.randint(3, config.model.vocab_size, (batch_size, n)).astype(np.int32)
  ones = lambda n: np.ones((batch_size, n), np.float32)
  if family == 'encoder':
    n = lengths['encoder']
    return {'encoder_input_tokens': ids(n), 'encoder_target_tokens': ids(n),
            'encoder_loss_weights': ones(n)}
  n = lengths['decoder']
  targets = ids(n)
  batch = {'decoder_target_tokens': targets, 'decoder_loss_weights': ones(n),
           'decoder_input_tokens': np.concatenate(
               [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)}
  if family == 'encoder_decoder':
    batch['encoder_input_tokens'] = ids(lengths['encoder'])
  return batch


def measure_train_step(config, steps: int = 5) -> dict:
  """Seconds per step, tokens/s (every input + target position), examples/s, FLOP/s."""
  import jax
  from t5x_lite import partitioning, plan, trainer as trainer_lib
  mesh = partitioning.create_mesh(config.partitioning)
  trainer = trainer_lib.Trainer(config, mesh)
  state = trainer.init_state(config.train.seed)
  batch = trainer.shard_batch(synthetic_batch(config, config.train.batch_size))
  rng = jax.random.PRNGKey(0)
  state, m = trainer.train_step(state, batch, rng)  # compile + warm-up
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = trainer.train_step(state, batch, rng)
  jax.block_until_ready(m)
  step_time = (time.perf_counter() - start) / steps
  flops = plan.flops_per_token(config)
  tokens_per_row = flops['lengths']['encoder'] + flops['lengths']['decoder']
  examples_per_sec = config.train.batch_size / step_time
  return dict(step_time=step_time, examples_per_sec=examples_per_sec,
              tokens_per_sec=examples_per_sec * tokens_per_row,
              flops_per_sec=flops['per_example']['train'] * examples_per_sec,
              devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
              formula=flops['formula'])


def main():
  import jax
  from t5x_lite import plan, validation
  config = FLAGS.config
  validation.validate_config(config, jax.device_count())
  r = measure_train_step(config, FLAGS.steps)
  peak = plan.peak_flops_per_device(r['device_kind'], FLAGS.peak_flops)
  mfu = (f'{100 * r["flops_per_sec"] / (r["devices"] * peak):.1f}%' if peak else
         f'n/a (no peak for {r["device_kind"]!r}; pass --peak_flops)')
  print(f'{r["devices"]} x {r["device_kind"]}, batch {config.train.batch_size}: '
        f'{1000 * r["step_time"]:.1f} ms/step, {r["tokens_per_sec"]:,.0f} tokens/s, '
        f'{r["flops_per_sec"] / 1e9:,.1f} GFLOP/s, MFU {mfu}')
  print(f'FLOPs: {r["formula"]}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', 'configs/default.py', 'Config file.')
  flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile + warm-up step).')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device (0 = from the table).')
  cli.run(main, needs_workdir=False)
