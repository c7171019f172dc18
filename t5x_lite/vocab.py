"""Train a SentencePiece vocabulary in the T5 layout and print its coverage (docs/cli.md):

    python -m t5x_lite.vocab --input='data/corpus/train.txt' --vocab_size=1000 --output=PATH
    python -m t5x_lite.vocab --input='jsonl:/data/c4/*.jsonl.gz;field=text' --vocab_size=32000 ...

Reads its input as a stream (no Python list of the corpus): SentencePiece samples at most
--max_sentences lines from it, and coverage is reported on the first --coverage_lines.
"""
import collections
import gzip
import logging
import re
import zlib
from typing import List

from absl import flags

from t5x_lite import cli
from t5x_lite.data import records, sources
from t5x_lite.data import vocab as vocab_lib

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_string('input', None, 'Files to train on: a glob of UTF-8 text files (one '
                      'sentence per line), or a source as data.train_source writes it: '
                      'text:GLOB, jsonl:GLOB[;field=F] (default field text), '
                      'tsv:GLOB[;field=F | ;inputs=A;targets=B] (default every column); '
                      'several separated by ",".')
  flags.DEFINE_integer('vocab_size', 1000, 'SentencePiece pieces (before sentinels).')
  flags.DEFINE_string('output', None, 'Output path, not a directory (PATH.model and '
                      'PATH.vocab).')
  flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe'], 'Algorithm.')
  flags.DEFINE_integer('extra_ids', 100, 'Sentinels added on top (for the report).')
  flags.DEFINE_float('character_coverage', 1.0, 'SentencePiece character_coverage, in '
                     '[0.98, 1.0]: the share of the input\'s characters the pieces cover, the '
                     'rarest left to UNK.')
  flags.DEFINE_integer('max_sentences', 10_000_000, 'SentencePiece trains on at most this '
                       'many lines, sampled uniformly from all of them (its '
                       'input_sentence_size): memory stays bounded on any corpus.')
  flags.DEFINE_integer('coverage_lines', 100_000, 'Coverage is reported on the first this '
                       'many lines of --input and of --eval_input.')
  flags.DEFINE_string('eval_input', None, 'Held-out files to report coverage on (as --input).')


def _sources(value: str, flag: str) -> List[sources.SourceSpec]:
  """--input / --eval_input as sources: KIND:GLOB[;options], several separated by ',' as in
  data.train_source (every line of each is trained on), or a bare glob of text files."""
  if value.split(':', 1)[0] in sources.KINDS and ':' in value:
    specs = sources.parse_sources(value, flag)
    for spec in specs:
      if spec.kind == 'tfds':
        raise ValueError(f'{flag}={value!r}: tfds sources are not read here; export the text '
                         'to files first.')
      unread = 'rate' if spec.rate != 1 else 'boundary' if spec.get('boundary') else None
      if unread:  # would be silently ignored
        raise ValueError(f'{flag}={value!r}: option {unread}= of source {spec} is not read '
                         'here: the vocabulary is trained on every line of every source.')
    return specs
  spec = sources.SourceSpec('text', value)
  paths = sources.expand_glob(value, flag)
  if any(p.endswith(sources.COLUMNAR_SUFFIXES) for p in paths):  # their JSON would be text
    kind = 'jsonl' if any(p.endswith(('.jsonl', '.jsonl.gz')) for p in paths) else 'tsv'
    raise ValueError(f'{flag}={value!r} matches {kind.upper()} files: say which field to train '
                     f'on, e.g. {flag}=\'{kind}:{value};field=text\'.')
  return [spec]


def _raw_lines(path: str, skips: sources.SkipCounter):
  """(line number, text) of `path`'s lines, stripped; .gz decompressed and a first line's
  byte-order mark dropped as the pipeline's file sources do; what is not used is counted."""
  found = False
  try:
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
      head = f.peek(16)[:10]
      packed = None if path.endswith('.gz') else sources.compression(head)
      if packed:  # as the pipeline's file sources: not read as lines of invalid UTF-8
        skips.add('compressed file not read (only gzip files named .gz are)', path)
        return
      if sources.wide_encoding(head):  # as the pipeline's: not read as <unk>-strewn text
        skips.add('UTF-16 / UTF-32 file not read (UTF-8 text only)', path)
        return
      for n, raw in enumerate(f, 1):
        found = found or bool(raw.strip())
        try:
          line = raw.decode('utf-8-sig' if n == 1 else 'utf-8').strip()
        except UnicodeDecodeError:
          skips.add('invalid UTF-8', f'{path}:{n}')
          continue
        if line:
          yield n, line
    if not found:
      skips.add('file without non-blank lines', path)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # its lines up to here are kept
    skips.add('truncated or corrupt .gz file', f'{path} ({e})')


def _texts(spec: sources.SourceSpec, path: str, skips: sources.SkipCounter):
  """The texts of one file of `spec`: its lines (text), a field of each record (jsonl), the
  named or every column of each row after the header (tsv)."""
  lines = _raw_lines(path, skips)
  if spec.kind == 'text':
    yield from (line for _, line in lines)
    return
  names = [spec.get(k) for k in ('field', 'inputs', 'targets') if spec.get(k)]
  if spec.kind == 'jsonl':  # the pipeline's parser: numbers as written, the same skips
    parse = records.jsonl_parser(names or ['text'], skips, 'skip')
    for n, line in lines:
      yield from parse(path, n, line.encode('utf-8'), None) or ()
    return
  header = None
  for n, line in lines:
    columns = line.split('\t')
    if header is None:
      header = columns
      missing = [k for k in names if k not in header]
      if missing:
        raise ValueError(f'{path}: no column {missing[0]!r} in its header {header}.')
      wanted = [header.index(k) for k in names] if names else range(len(header))
      continue
    if len(columns) != len(header):
      skips.add('row with another column count than its header', f'{path}:{n}')
      continue
    yield from (columns[i] for i in wanted)


def _sentences(specs: List[sources.SourceSpec], flag: str, skips: sources.SkipCounter,
               limit=None):
  """Every non-blank line of every text of the files of `specs` in turn (a JSONL document's
  lines each), streamed: nothing is held but the line at hand; at most `limit` of them."""
  count = 0
  for spec in specs:
    for path in sources.expand_glob(spec.target, flag):
      for text in _texts(spec, path, skips):
        for line in text.splitlines():
          line = line.strip()
          if line:
            if limit is not None and count >= limit:
              return
            count += 1
            yield line


def _check_readable(value: str, flag: str) -> List[sources.SourceSpec]:
  """The sources of `value`, after making sure each yields a line (a one-line error naming
  the flag and the source otherwise), before the long part."""
  specs = _sources(value, flag)
  for spec in specs:
    skips = sources.SkipCounter()
    if next(_sentences([spec], flag, skips), None) is None:  # (read to its end: skips counted)
      which = f' in source {spec}' if len(specs) > 1 else ''
      raise sources.DataError(f'{flag}={value!r}: no non-blank lines{which}; '
                              f'{skips.summary()}.')
  return specs


def _report(name: str, vocab, specs, flag: str, limit: int) -> sources.SkipCounter:
  """Prints the coverage line; returns what was skipped in the lines read for it."""
  skips = sources.SkipCounter()
  lines = list(_sentences(specs, flag, skips, limit + 1))
  first = f' (the first {limit})' if len(lines) > limit else ''
  lines = lines[:limit]
  c = vocab_lib.coverage(vocab, lines)
  print(f'{name}{first}: {len(lines)} lines, {c["tokens"]} tokens, character coverage '
        f'{100 * c["char_coverage"]:.4f}%, unk rate {100 * c["unk_rate"]:.4f}%, '
        f'{c["tokens_per_word"]:.2f} tokens/word, {c["chars_per_token"]:.2f} chars/token'
        + (f', uncovered characters {c["uncovered_chars"]!r}' if c['uncovered_chars'] else ''))
  return skips


def main():
  # Skips are said once, in the one summary (or error) line per input, not also as read.
  logging.getLogger('t5x_lite.data').setLevel(logging.ERROR)
  if not FLAGS.input or not FLAGS.output:
    raise ValueError('--input and --output are required.')
  for flag, least in (('extra_ids', 0), ('max_sentences', 101), ('coverage_lines', 1)):
    if FLAGS[flag].value < least:  # (SentencePiece's sample takes more than 100 lines)
      raise ValueError(f'--{flag}={FLAGS[flag].value}: must be >= {least}.')
  if not 0.98 <= FLAGS.character_coverage <= 1.0:  # SentencePiece's check, which names no flag
    raise ValueError(f'--character_coverage={FLAGS.character_coverage}: must be in [0.98, 1.0].')
  vocab_lib.model_prefix(FLAGS.output)  # a directory given: an error before anything is read
  cli.check_output_location(FLAGS.output)
  try:  # both inputs checked first: a bad --eval_input fails before the long part
    specs = _check_readable(FLAGS.input, '--input')
    eval_specs = _check_readable(FLAGS.eval_input, '--eval_input') if FLAGS.eval_input else None
    skips, seen = sources.SkipCounter(), collections.Counter()

    def counted(lines):
      for line in lines:
        seen['lines'] += 1
        seen['long'] += len(line.encode('utf-8')) > vocab_lib.MAX_SENTENCE_BYTES
        yield line
    path = vocab_lib.train(counted(_sentences(specs, '--input', skips)), FLAGS.output,
                           FLAGS.vocab_size, FLAGS.model_type, FLAGS.character_coverage,
                           max_sentences=FLAGS.max_sentences)
    if skips.total():
      print(f'input: {skips.summary()}')
    if seen['long']:
      print(f'input: split {seen["long"]} line{"" if seen["long"] == 1 else "s"} longer than '
            f'{vocab_lib.MAX_SENTENCE_BYTES} bytes (SentencePiece\'s max_sentence_length) '
            f'into pieces at whitespace')
    if seen['lines'] > FLAGS.max_sentences:
      print(f'input: {seen["lines"]} lines; SentencePiece trained on {FLAGS.max_sentences} of '
            f'them drawn at random (--max_sentences)')
    vocab = vocab_lib.Vocabulary(path, FLAGS.extra_ids)
    print(f'wrote {path}: {vocab.piece_size} pieces + {vocab.extra_ids} extra ids = vocab_size '
          f'{vocab.vocab_size} ({FLAGS.model_type}); mask id {vocab.mask_id}, '
          f'<extra_id_0> = {vocab.sentinel(0) if vocab.extra_ids else None}')
    _report('train coverage', vocab, specs, '--input', FLAGS.coverage_lines)
    if eval_specs:  # (the training input's skips were said above, from its whole pass)
      eval_skips = _report('eval coverage', vocab, eval_specs, '--eval_input',
                           FLAGS.coverage_lines)
      if eval_skips.total():
        print(f'eval input: {eval_skips.summary()}')
  except RuntimeError as e:  # SentencePiece's trainer: its first line says what failed
    line = str(e).strip().splitlines()[0]
    # 'INTERNAL: src/x.cc(744) [check] What failed.': the sentence is the user's part
    what = re.sub(r'^[A-Z_]+: \S+\.cc\(\d+\) (\[.*?\] )?', '', line)
    if what.startswith('Vocabulary size too high'):
      raise ValueError(f'--vocab_size={FLAGS.vocab_size} is more pieces than this input '
                       f'holds (SentencePiece: {what})') from None
    raise ValueError(f'SentencePiece: {what}') from None


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='vocab')
