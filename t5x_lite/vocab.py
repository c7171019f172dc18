"""Train a SentencePiece vocabulary in the T5 layout and print its coverage (docs/cli.md):

    python -m t5x_lite.vocab --input='data/corpus/train.txt' --vocab_size=1000 --output=PATH
"""
from absl import flags

from t5x_lite import cli
from t5x_lite.data import sources
from t5x_lite.data import vocab as vocab_lib

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_string('input', None, 'Glob of UTF-8 text files to train on.')
  flags.DEFINE_integer('vocab_size', 1000, 'SentencePiece pieces (before sentinels).')
  flags.DEFINE_string('output', None, 'Output path (PATH.model and PATH.vocab).')
  flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe'], 'Algorithm.')
  flags.DEFINE_integer('extra_ids', 100, 'Sentinels added on top (for the report).')
  flags.DEFINE_float('character_coverage', 1.0, 'SentencePiece character_coverage.')
  flags.DEFINE_string('eval_input', None, 'Glob of held-out files to report coverage on.')


def _read_lines(pattern: str, skips: sources.SkipCounter) -> list[str]:
  out = []
  for path in sources.expand_glob(pattern, '--input'):
    for n, line in sources._lines(path, 'skip', skips):  # pylint: disable=protected-access
      if line.strip():
        out.append(line.strip())
  return out


def _report(name: str, vocab, lines) -> None:
  c = vocab_lib.coverage(vocab, lines)
  print(f'{name}: {len(lines)} lines, {c["tokens"]} tokens, character coverage '
        f'{100 * c["char_coverage"]:.4f}%, unk rate {100 * c["unk_rate"]:.4f}%, '
        f'{c["tokens_per_word"]:.2f} tokens/word, {c["chars_per_token"]:.2f} chars/token'
        + (f', uncovered characters {c["uncovered_chars"]!r}' if c['uncovered_chars'] else ''))


def main():
  if not FLAGS.input or not FLAGS.output:
    raise ValueError('--input and --output are required.')
  try:
    skips = sources.SkipCounter()
    lines = _read_lines(FLAGS.input, skips)
    if not lines:
      raise sources.DataError(f'--input={FLAGS.input!r}: no non-empty lines; {skips.summary()}.')
    if skips.total():
      print(f'input: {skips.summary()}')
    path = vocab_lib.train(lines, FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
                           FLAGS.character_coverage)
    vocab = vocab_lib.Vocabulary(path, FLAGS.extra_ids)
    print(f'wrote {path}: {vocab.piece_size} pieces + {vocab.extra_ids} extra ids = vocab_size '
          f'{vocab.vocab_size} ({FLAGS.model_type}); mask id {vocab.mask_id}, '
          f'<extra_id_0> = {vocab.sentinel(0) if vocab.extra_ids else None}')
    _report('train coverage', vocab, lines)
    if FLAGS.eval_input:
      eval_skips = sources.SkipCounter()
      _report('eval coverage', vocab, _read_lines(FLAGS.eval_input, eval_skips))
  except RuntimeError as e:  # SentencePiece's trainer: its first line says what failed
    raise ValueError(str(e).strip().splitlines()[0]) from None


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='vocab')
