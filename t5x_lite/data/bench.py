"""`python -m t5x_lite.data.bench`: input-pipeline throughput beside a train step's appetite.

    python -m t5x_lite.data.bench [--seconds=10] [--batch_size=32] [--model_steps=3]

Times span corruption + packing (inputs 512 / targets 114, the shipped corpus, the
training split: shuffled, endless) and, on the same machine, a full train step of T5 v1.1
small (configs/t5_v1_1.py:small: loss, gradients, Adafactor update; `bench.measure_train_step`
on batches of the same shapes). Both
figures count token positions per second, `batch x (inputs_length + targets_length)`, so
the ratio says how many such train steps one pipeline keeps fed (the requirement is >= 5x).
The pipeline also reports real (non-padding) tokens/s. `--model_steps=0` skips the model.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before anything imports TF
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work

import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_float('seconds', 10.0, 'How long to run the pipeline.')
  flags.DEFINE_integer('batch_size', 32, 'Pipeline rows per batch.')
  flags.DEFINE_integer('model_batch_size', 4, 'Rows per train step.')
  flags.DEFINE_integer('model_steps', 2, 'Timed train steps (0: skip the model).')
  flags.DEFINE_integer('inputs_length', 512, 'Encoder length.')
  flags.DEFINE_integer('targets_length', 114, 'Decoder length.')


def pipeline_throughput(config, seconds: float, batch_size: int):
  """(positions/s, real tokens/s, one batch) of get_dataset(config, 'train')."""
  from t5x_lite.data import pipeline
  it = pipeline.get_dataset(config, 'train', batch_size=batch_size)
  first = next(it)  # build, trace and fill buffers before timing
  for _ in range(3):
    next(it)
  n = real = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    n += 1
    real += int((b['encoder_input_tokens'] != 0).sum() + (b['decoder_target_tokens'] != 0).sum())
  dt = time.perf_counter() - t0
  width = first['encoder_input_tokens'].shape[1] + first['decoder_target_tokens'].shape[1]
  return n * batch_size * width / dt, real / dt, first


def run(seconds: float = 10.0, batch_size: int = 32, model_batch_size: int = 4,
        model_steps: int = 2, inputs_length: int = 512, targets_length: int = 114,
        print_fn=print) -> dict:
  """Runs the benchmark, prints its lines and returns the figures."""
  from configs import base
  cfg = base.get_base_config()
  cfg.model.vocab_size = 32128
  cfg.data.update(dict(objective='span_corruption', inputs_length=inputs_length,
                       targets_length=targets_length, pack=True))
  pos, real, batch = pipeline_throughput(cfg, seconds, batch_size)
  out = dict(pipeline_positions_per_s=pos, pipeline_tokens_per_s=real)
  print_fn(f'pipeline: span corruption + packing, inputs {inputs_length} / targets {targets_length}, '
           f'shipped corpus: {pos:,.0f} token positions/s ({real:,.0f} non-padding tokens/s)')
  if model_steps <= 0:
    return out
  import jax
  from configs import t5_v1_1
  from t5x_lite import bench
  small = t5_v1_1.get_config('small')
  small.data.update(dict(inputs_length=inputs_length, targets_length=targets_length))
  small.train.batch_size = model_batch_size
  measured = bench.measure_train_step(small, model_steps)  # full step: loss, grads, Adafactor
  step_pos, dt = measured['tokens_per_sec'], measured['step_time']
  print_fn(f'train step: T5 v1.1 small (loss, gradients, Adafactor update), batch {model_batch_size} x '
           f'({inputs_length}+{targets_length}) on {jax.devices()[0].platform}: {dt:.2f} s/step, '
           f'{step_pos:,.0f} token positions/s')
  ratio = pos / step_pos
  print_fn(f'ratio: pipeline / train step = {ratio:,.1f}x '
           f'({"OK" if ratio >= 5 else "BELOW"} the 5x requirement)')
  out.update(train_step_positions_per_s=step_pos, ratio=ratio)
  return out


def main(argv):
  del argv
  run(FLAGS.seconds, FLAGS.batch_size, FLAGS.model_batch_size, FLAGS.model_steps,
      FLAGS.inputs_length, FLAGS.targets_length)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
