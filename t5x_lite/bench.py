"""Train step, decode and input-pipeline speed in one run, beside Hugging Face FlaxT5
(what each figure means: `t5x_lite.benchmark`; flags and example shapes: docs/cli.md):

    python -m t5x_lite.bench [--config=configs/default.py] [--steps=3] [--json]
"""
import json

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  cli.define_config_flag('configs/default.py', 'Config file.')
  flags.DEFINE_integer('steps', 3, 'Timed train steps (after one compile + warm-up step).')
  flags.DEFINE_integer('rounds', 3, 'Alternating timed rounds of ours vs FlaxT5 (medians).')
  flags.DEFINE_integer('beam_size', 4, 'Beams for the beam-search decode figure.')
  flags.DEFINE_integer('decode_batch_size', 0, 'Rows decoded (0 = train.batch_size).')
  flags.DEFINE_integer('decode_length', 0, 'New tokens per row (0 = the target length; a '
                       'decoder-only model continues 16-token prompts to its row length).')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device (0 = measure a matmul).')
  flags.DEFINE_bool('reference', True, 'Time Hugging Face FlaxT5 beside ours.')
  flags.DEFINE_float('pipeline_seconds', 5.0, 'How long to run the input pipeline.')
  flags.DEFINE_bool('train_only', False, 'Only the peak and the full train step.')
  flags.DEFINE_bool('decode_only', False, 'Only greedy and beam decode beside FlaxT5 generate.')
  flags.DEFINE_bool('matmuls', False, 'Also time each kind of matmul of the step alone.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of lines.')


def check_flags() -> None:
  """ValueError naming a count or duration that cannot be measured (0 steps, 0 rounds)."""
  for name, low in (('steps', 1), ('rounds', 1), ('beam_size', 1), ('decode_batch_size', 0),
                    ('decode_length', 0), ('peak_flops', 0)):
    if not low <= getattr(FLAGS, name) < float('inf'):  # NaN fails too
      raise ValueError(f'--{name}={getattr(FLAGS, name)} must be at least {low} and finite.')
  if not 0 < FLAGS.pipeline_seconds < float('inf'):
    raise ValueError(f'--pipeline_seconds={FLAGS.pipeline_seconds} must be above 0 and finite.')


def main():
  check_flags()
  import jax
  from t5x_lite import benchmark, validation
  config = FLAGS.config
  # --train_only / --decode_only time synthetic batches: the data section is not read, and
  # TensorFlow (which checking it imports) need not be installed, as on a bare GPU machine.
  reads_data = not (FLAGS.train_only or FLAGS.decode_only)
  validation.validate_config(config, jax.device_count(), data=reads_data)
  out = benchmark.run(
      config, steps=FLAGS.steps, rounds=FLAGS.rounds, decode_batch_size=FLAGS.decode_batch_size,
      decode_length=FLAGS.decode_length, beam_size=FLAGS.beam_size, peak_flops=FLAGS.peak_flops,
      reference=FLAGS.reference, pipeline_seconds=FLAGS.pipeline_seconds,
      train_only=FLAGS.train_only, decode_only=FLAGS.decode_only, matmuls=FLAGS.matmuls,
      print_fn=(lambda _: None) if FLAGS.json else print)
  if FLAGS.json:
    print(json.dumps(out, sort_keys=True))


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
