"""`python -m t5x_lite.data.bench`: input-pipeline throughput beside a train step's appetite.

    python -m t5x_lite.data.bench [--seconds=10] [--batch_size=32] [--model_steps=3]

Times span corruption + packing (inputs 512 / targets 114, the shipped corpus, the
training split: shuffled, endless) and, on the same machine, a full train step of T5 v1.1
small (configs/t5_v1_1.py:small: loss, gradients, Adafactor update; `throughput.measure_train_step`
on batches of the same shapes). Both
figures count token positions per second, `batch x (inputs_length + targets_length)`, so
the ratio says how many such train steps one pipeline keeps fed (the requirement is >= 5x).
The pipeline also reports real (non-padding) tokens/s. `--model_steps=0` skips the model.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before anything imports TF
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work


from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_float('seconds', 10.0, 'How long to run the pipeline.')
  flags.DEFINE_integer('batch_size', 32, 'Pipeline rows per batch.')
  flags.DEFINE_integer('model_batch_size', 4, 'Rows per train step.')
  flags.DEFINE_integer('model_steps', 2, 'Timed train steps (0: skip the model).')
  flags.DEFINE_integer('inputs_length', 512, 'Encoder length.')
  flags.DEFINE_integer('targets_length', 114, 'Decoder length.')


def main():
  from t5x_lite import throughput
  throughput.pipeline_vs_train_step(FLAGS.seconds, FLAGS.batch_size, FLAGS.model_batch_size,
                                    FLAGS.model_steps, FLAGS.inputs_length, FLAGS.targets_length)


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
