"""Convert between Hugging Face model directories and t5x_lite (Orbax) params (the work is
`t5x_lite.conversion`'s; what each direction reads and writes: docs/cli.md):

    python -m t5x_lite.convert --direction=hf_to_t5x|t5x_to_hf --input=DIR --output=DIR
"""
import os

from absl import app
from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_enum('direction', None, ['hf_to_t5x', 't5x_to_hf'], 'Conversion direction.')
  flags.DEFINE_string('input', None, 'Input directory (HF model dir, or t5x_lite params dir).')
  flags.DEFINE_string('output', None, 'Output directory (must not exist or be empty).')
  flags.DEFINE_bool('scan_layers', False, 'hf_to_t5x: store layers stacked (scan_layers=True).')

def main():
  from t5x_lite import conversion
  for name in ('direction', 'input', 'output'):
    if not getattr(FLAGS, name):
      raise app.UsageError(f'--{name} is required.')
  if FLAGS.scan_layers and FLAGS.direction == 't5x_to_hf':
    raise app.UsageError('--scan_layers is for --direction=hf_to_t5x (t5x_to_hf reads either '
                         'layout and writes Hugging Face\'s per-layer tensors).')
  cli.check_output_location(FLAGS.output)  # before the weights are read
  with cli.raise_on_sigterm():  # a stopped conversion leaves no partial output behind
    if FLAGS.direction == 'hf_to_t5x':
      out = conversion.hf_to_t5x(FLAGS.input, FLAGS.output, FLAGS.scan_layers)
    else:
      out = conversion.t5x_to_hf(FLAGS.input, FLAGS.output)
    if os.path.isfile(os.path.join(out, conversion.TOKENIZER_FILES[0])):
      out += (f' (with its SentencePiece vocabulary as a T5Tokenizer: '
              f'{", ".join(conversion.TOKENIZER_FILES)})')
  print(f'wrote {out}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
