r"""`python -m t5x_lite.bench`: train step, decode and input-pipeline speed in one run.

    python -m t5x_lite.bench [--config=configs/default.py] [--steps=3] [--rounds=3]
        [--beam_size=4] [--decode_batch_size=0] [--decode_length=0] [--peak_flops=0]
        [--noreference] [--pipeline_seconds=5] [--train_only | --decode_only] [--json]

Prints, side by side: this machine's measured float32 matmul peak (or --peak_flops), the
full train step (ms, tokens/s, MFU against that peak; formula printed), loss + gradients of
ours beside Hugging Face FlaxT5 at equal shapes (ratio), greedy and beam decode new tokens/s
beside FlaxT5 `generate` (ratios), and the input pipeline's tokens/s. `--json` prints one
JSON object instead. The default config runs in a few minutes on a 2-core CPU; the issue's
shapes (T5 v1.1 small dims, 4+4 layers, batch 8, 512/114):

    python -m t5x_lite.bench --config=configs/t5_v1_1.py:small \
        --config.model.num_encoder_layers=4 --config.model.num_decoder_layers=4 \
        --config.train.batch_size=8 --config.data.inputs_length=512 \
        --config.data.targets_length=114

and only the decode comparison (greedy and beam-4 beside FlaxT5 `generate`, batch 16, 512
inputs, 114 new tokens; no peak, train step or pipeline):

    python -m t5x_lite.bench --config=configs/t5_v1_1.py:small \
        --config.model.num_encoder_layers=4 --config.model.num_decoder_layers=4 \
        --config.train.batch_size=16 --config.data.inputs_length=512 \
        --config.data.targets_length=114 --decode_only --rounds=1

What each figure means: `t5x_lite.benchmark`.
"""
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  cli.define_config_flag('configs/default.py', 'Config file.')
  flags.DEFINE_integer('steps', 3, 'Timed train steps (after one compile + warm-up step).')
  flags.DEFINE_integer('rounds', 3, 'Alternating timed rounds of ours vs FlaxT5 (medians).')
  flags.DEFINE_integer('beam_size', 4, 'Beams for the beam-search decode figure.')
  flags.DEFINE_integer('decode_batch_size', 0, 'Rows decoded (0 = train.batch_size).')
  flags.DEFINE_integer('decode_length', 0, 'New tokens per row (0 = the target length).')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device (0 = measure a matmul).')
  flags.DEFINE_bool('reference', True, 'Time Hugging Face FlaxT5 beside ours.')
  flags.DEFINE_float('pipeline_seconds', 5.0, 'How long to run the input pipeline.')
  flags.DEFINE_bool('train_only', False, 'Only the peak and the full train step.')
  flags.DEFINE_bool('decode_only', False, 'Only greedy and beam decode beside FlaxT5 generate.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of lines.')


def main():
  import jax
  from t5x_lite import benchmark, validation
  config = FLAGS.config
  validation.validate_config(config, jax.device_count())
  out = benchmark.run(
      config, steps=FLAGS.steps, rounds=FLAGS.rounds, decode_batch_size=FLAGS.decode_batch_size,
      decode_length=FLAGS.decode_length, beam_size=FLAGS.beam_size, peak_flops=FLAGS.peak_flops,
      reference=FLAGS.reference, pipeline_seconds=FLAGS.pipeline_seconds,
      train_only=FLAGS.train_only, decode_only=FLAGS.decode_only,
      print_fn=(lambda _: None) if FLAGS.json else print)
  if FLAGS.json:
    print(json.dumps(out, sort_keys=True))


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
