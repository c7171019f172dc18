"""Train a SentencePiece vocabulary in the T5 layout and print its coverage (docs/cli.md):

    python -m t5x_lite.vocab --input='data/corpus/train.txt' --vocab_size=1000 --output=PATH
"""
import gzip
import logging
import zlib

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


def _file_lines(path: str, skips: sources.SkipCounter):
  """The non-blank lines of `path`, stripped; .gz decompressed and a first line's byte-order
  mark dropped as the pipeline's file sources do; what is not used is counted in `skips`."""
  found = False
  try:
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
      for n, raw in enumerate(f, 1):
        found = found or bool(raw.strip())
        try:
          line = raw.decode('utf-8-sig' if n == 1 else 'utf-8').strip()
        except UnicodeDecodeError:
          skips.add('invalid UTF-8', f'{path}:{n}')
          continue
        if line:
          yield line
    if not found:
      skips.add('file without non-blank lines', path)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # its lines up to here are kept
    skips.add('truncated or corrupt .gz file', f'{path} ({e})')


def _read_lines(pattern: str, flag: str) -> list[str]:
  """Every non-blank line of the files `pattern` matches; prints what was skipped."""
  skips = sources.SkipCounter()
  out = [line for path in sources.expand_glob(pattern, flag) for line in _file_lines(path, skips)]
  if not out:
    raise sources.DataError(f'{flag}={pattern!r}: no non-blank lines; {skips.summary()}.')
  if skips.total():
    print(f'{flag[2:]}: {skips.summary()}')
  return out


def _report(name: str, vocab, lines) -> None:
  c = vocab_lib.coverage(vocab, lines)
  print(f'{name}: {len(lines)} lines, {c["tokens"]} tokens, character coverage '
        f'{100 * c["char_coverage"]:.4f}%, unk rate {100 * c["unk_rate"]:.4f}%, '
        f'{c["tokens_per_word"]:.2f} tokens/word, {c["chars_per_token"]:.2f} chars/token'
        + (f', uncovered characters {c["uncovered_chars"]!r}' if c['uncovered_chars'] else ''))


def main():
  # Skips are said once, in the one summary (or error) line per input, not also as read.
  logging.getLogger('t5x_lite.data').setLevel(logging.ERROR)
  if not FLAGS.input or not FLAGS.output:
    raise ValueError('--input and --output are required.')
  if FLAGS.extra_ids < 0:
    raise ValueError(f'--extra_ids={FLAGS.extra_ids}: must be >= 0.')
  try:  # both inputs read first: a bad --eval_input fails before the long part
    lines = _read_lines(FLAGS.input, '--input')
    eval_lines = _read_lines(FLAGS.eval_input, '--eval_input') if FLAGS.eval_input else None
    long = sum(len(line.encode('utf-8')) > vocab_lib.MAX_SENTENCE_BYTES for line in lines)
    if long:
      print(f'input: split {long} line{"" if long == 1 else "s"} longer than '
            f'{vocab_lib.MAX_SENTENCE_BYTES} bytes (SentencePiece\'s max_sentence_length) '
            f'into pieces at whitespace')
    path = vocab_lib.train(lines, FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
                           FLAGS.character_coverage)
    vocab = vocab_lib.Vocabulary(path, FLAGS.extra_ids)
    print(f'wrote {path}: {vocab.piece_size} pieces + {vocab.extra_ids} extra ids = vocab_size '
          f'{vocab.vocab_size} ({FLAGS.model_type}); mask id {vocab.mask_id}, '
          f'<extra_id_0> = {vocab.sentinel(0) if vocab.extra_ids else None}')
    _report('train coverage', vocab, lines)
    if eval_lines:
      _report('eval coverage', vocab, eval_lines)
  except RuntimeError as e:  # SentencePiece's trainer: its first line says what failed
    raise ValueError(str(e).strip().splitlines()[0]) from None


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='vocab')
