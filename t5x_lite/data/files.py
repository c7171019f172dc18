"""Streaming file sources: text, JSONL and TSV files (optionally .gz) as tf.data documents.

Owns: turning the files of one source into the document stream of one virtual shard,
read line by line through `tf.data.TextLineDataset`, so memory is bounded by buffers and
not by corpus size, and the stream's position checkpoints with `tf.train.Checkpoint`.

Which documents a stream reads (disjoint across streams, together the whole source):
  - at least as many files as streams: files are dealt round-robin, stream v opens
    files v, v + V, v + 2V, ... and nothing else;
  - fewer files than streams (one big file, say): every stream reads every file and keeps
    the documents whose index (offset by the file's number) is v mod V. Said in one log line.

Shuffling (training only) without loading everything, in three bounded steps:
  1. the stream's file order is reshuffled every epoch from (seed, stream, epoch);
  2. `cycle_length` files are read at once, interleaved line group by line group;
  3. a document shuffle buffer of `shuffle_buffer_size` documents per stream (the pipeline
     splits data.shuffle_buffer_size over the streams, so memory and the time to fill the
     buffers before the first batch do not grow with the stream count).
Trade-off: documents close together in a file stay closer together in the stream than a
full permutation would place them (a buffer of B documents moves each by about B places),
and an epoch of a single file starts in its first B documents. Many files and a buffer
that spans several of them make this invisible to the loss; a full shuffle of a 20 GB shard
would cost the memory or the seek time this module exists to avoid.

Bad input is counted as it streams (`SkipCounter`: the reason, where it first happened):
invalid UTF-8 lines, empty lines, invalid JSON, missing or empty fields, TSV rows with the
wrong number of columns. With `on_bad_input='error'` the first one stops the pipeline with
its file and line. Plain text is checked and split into documents inside the graph; JSONL
and TSV lines are parsed in one Python call per batch of lines (`tf.py_function`, stateless,
so checkpoints stay exact).
"""
from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from t5x_lite.data.sources import DataError, SkipCounter, bad_input

LINES_PER_CALL = 256


def split_files(files: list[str], stream: int, num_streams: int):
  """(this stream's [(file number, path)], whether documents are dealt within files)."""
  if len(files) >= num_streams:
    return [(i, f) for i, f in enumerate(files)][stream::num_streams], False
  return list(enumerate(files)), True


def _report(skips: SkipCounter, policy: str, reason: str, path, line_number, line=None):
  """Graph-side bad-input hook: a Python call only for the (rare) bad line; returns False."""
  def call(path, n, raw):
    where = path.numpy().decode() + (f':{int(n.numpy())}' if int(n.numpy()) > 0 else '')
    detail = ''
    if reason == 'invalid UTF-8':
      raw = raw.numpy()
      try:
        raw.decode('utf-8')
      except UnicodeDecodeError as e:
        detail = f'byte {raw[e.start]:#04x} at column {e.start + 1}'
    bad_input(policy, skips, reason, where, detail)
    return False
  return tf.py_function(call, [path, line_number, line if line is not None else ''], tf.bool)


def _valid_utf8(line):
  return tf.equal(tf.strings.unicode_transcode(line, 'UTF-8', 'UTF-8', errors='replace',
                                               replacement_char=0xFFFD), line)


def _checked_lines(path, skips, policy):
  """(line number, line) of one file, invalid UTF-8 lines counted and dropped."""
  compression = tf.where(tf.strings.regex_full_match(path, r'.*\.gz'), 'GZIP', '')
  lines = tf.data.TextLineDataset(path, compression_type=compression).enumerate(start=1)

  def ok(n, line):
    return tf.cond(_valid_utf8(line), lambda: tf.constant(True),
                   lambda: _report(skips, policy, 'invalid UTF-8', path, n, line))
  return lines.filter(ok).map(lambda n, line: (n, tf.strings.regex_replace(line, '\r$', '')))


def _grouped(lines, path, boundary: str):
  """Lines -> documents (one string each): paragraphs (blank_line) or the whole file."""
  end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.constant('')))
  lines = lines.concatenate(end)  # n = -1 marks the end of the file: flush what is left

  def step(acc, element):
    n, line = element
    text = tf.strings.strip(line) if boundary == 'blank_line' else line
    at_end = tf.equal(n, -1)
    flush = tf.logical_or(at_end, tf.equal(text, '')) if boundary == 'blank_line' else at_end
    joined = tf.where(tf.equal(acc, ''), text, tf.strings.join([acc, text], '\n'))
    new_acc = tf.where(flush, '', joined)
    out = acc if boundary == 'blank_line' else tf.strings.strip(acc)
    return new_acc, (tf.logical_and(flush, tf.not_equal(out, '')), out)

  docs = lines.scan(tf.constant(''), step)
  return docs.filter(lambda emit, text: emit).map(lambda emit, text: (text,))


def _text_documents(path, boundary, skips, policy):
  lines = _checked_lines(path, skips, policy)
  if boundary != 'line':
    return _grouped(lines, path, boundary)

  def keep(n, line):
    return tf.cond(tf.equal(tf.strings.strip(line), ''),
                   lambda: _report(skips, 'skip', 'empty line', path, n), lambda: tf.constant(True))
  return lines.filter(keep).map(lambda n, line: (tf.strings.strip(line),))


def _parsed(lines, path, parse, nf: int, header=None):
  """Batches of lines -> one Python parse per batch -> (fields..., keep) -> kept records."""
  def call(path, numbers, lines, header):
    out = [[] for _ in range(nf)]
    keep = []
    path = path.numpy().decode()
    head = header.numpy().decode('utf-8', 'replace') if header is not None else None
    for n, raw in zip(numbers.numpy(), lines.numpy()):
      rec = parse(path, int(n), raw, head)
      keep.append(rec is not None)
      for i in range(nf):
        out[i].append(rec[i] if rec is not None else '')
    return [tf.constant(o, tf.string, shape=[len(keep)]) for o in out] + [tf.constant(keep, tf.bool)]

  def py(numbers, lines):
    args = [path, numbers, lines, header if header is not None else tf.constant('')]
    res = tf.py_function(call, args, [tf.string] * nf + [tf.bool])
    return tuple(tf.ensure_shape(r, [None]) for r in res)

  recs = lines.batch(LINES_PER_CALL).map(py).unbatch()
  return recs.filter(lambda *r: r[-1]).map(lambda *r: tuple(r[:-1]))


def _decode(path, n, raw, skips, policy):
  try:
    return raw.decode('utf-8').rstrip('\r')
  except UnicodeDecodeError as e:
    bad_input(policy, skips, 'invalid UTF-8', f'{path}:{n}',
              f'byte {raw[e.start]:#04x} at column {e.start + 1}')
    return None


def jsonl_parser(fields, skips, policy):
  """parse(path, n, raw line, header) -> tuple of field texts, or None (counted)."""
  def parse(path, n, raw, _):
    line = _decode(path, n, raw, skips, policy)
    if line is None:
      return None
    where = f'{path}:{n}'
    if not line.strip():
      skips.add('empty line', where)
      return None
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      return bad_input(policy, skips, 'invalid JSON', where, e.msg)
    if not isinstance(obj, dict):
      return bad_input(policy, skips, 'JSON line is not an object', where)
    rec = []
    for f in fields:
      v = obj.get(f)
      if v is None:
        return bad_input(policy, skips, f'missing field {f!r}', where, f'fields are {sorted(obj)}')
      v = v if isinstance(v, str) else json.dumps(v)
      if not v.strip():
        skips.add(f'empty field {f!r}', where)
        return None
      rec.append(v)
    return tuple(rec)
  return parse


def tsv_parser(fields, skips, policy):
  def parse(path, n, raw, header):
    header = header.rstrip('\r').split('\t')
    missing = [f for f in fields if f not in header]
    if missing:  # a setup error, whatever the policy
      raise DataError(f'{path}:1: TSV header {header} has no field {missing[0]!r} '
                      f'(the first line of a TSV source names its columns).')
    line = _decode(path, n, raw, skips, policy)
    if line is None:
      return None
    where = f'{path}:{n}'
    if not line.strip():
      skips.add('empty line', where)
      return None
    row = line.split('\t')
    if len(row) != len(header):
      return bad_input(policy, skips, 'TSV row with wrong number of columns', where,
                       f'{len(row)} columns, header has {len(header)}')
    rec = tuple(row[header.index(f)] for f in fields)
    empty = [f for f, v in zip(fields, rec) if not v.strip()]
    if empty:
      skips.add(f'empty field {empty[0]!r}', where)
      return None
    return rec
  return parse


def documents(src, files: list[str], fields, *, stream: int, num_streams: int, train: bool,
              seed: int, boundary: str, on_bad_input: str, skips: SkipCounter,
              shuffle_buffer_size: int = 1000, cycle_length: int = 4) -> tf.data.Dataset:
  """Stream `stream` of `num_streams` of a file source: tuples of field texts.

  Train: endless, file order reshuffled per epoch, documents shuffled in a bounded buffer.
  Otherwise one ordered pass (files in name order, one at a time)."""
  nf = len(fields)
  if src.kind == 'text' and nf != 1:
    raise DataError(f'source {src}: plain text has one field per document; the text_to_text '
                    f'objective needs a jsonl, tsv or tfds source with {list(fields)}.')
  num_files = len(files)
  for f in files:
    if os.path.getsize(f) == 0:
      skips.add('empty file', f)
  files = [f for f in files if os.path.getsize(f) > 0]
  if not files:
    raise DataError(f'source {src}: no usable records in {num_files} file(s); {skips.summary()}.')
  mine, dealt = split_files(files, stream, num_streams)
  if dealt and stream == 0:
    logging.info('source %s: %d file(s) for %d streams: every stream reads every file and keeps '
                 'every %d-th document', src, len(files), num_streams, num_streams)
  boundary = src.get('boundary', boundary)
  numbers = tf.constant([i for i, _ in mine], tf.int64)
  paths = tf.constant([p for _, p in mine])

  def read(number, path):
    if src.kind == 'text':
      docs = _text_documents(path, boundary, skips, on_bad_input)
    else:
      lines = tf.data.TextLineDataset(
          path, compression_type=tf.where(tf.strings.regex_full_match(path, r'.*\.gz'), 'GZIP', ''))
      lines = lines.enumerate(start=1)
      if src.kind == 'jsonl':
        docs = _parsed(lines, path, jsonl_parser(fields, skips, on_bad_input), nf)
      else:
        header = lines.take(1).map(lambda n, line: line).get_single_element()
        docs = _parsed(lines.skip(1), path, tsv_parser(fields, skips, on_bad_input), nf, header)
    if dealt:  # fewer files than streams: keep every num_streams-th document of each file
      docs = docs.enumerate().filter(lambda i, d: tf.equal((i + number) % num_streams, stream))
      docs = docs.map(lambda i, d: d)
    return docs

  names = tf.data.Dataset.from_tensor_slices((numbers, paths))
  if not train:
    return names.flat_map(read)
  # A new file order every epoch, from the seed; repeat() ends (it does not spin) if a
  # stream turns out to hold no usable document, and the iterator says so.
  names = names.shuffle(len(mine), seed=seed * 7919 + stream, reshuffle_each_iteration=True)
  ds = names.interleave(read, cycle_length=min(cycle_length, len(mine)), block_length=16,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).repeat()
  return ds.shuffle(shuffle_buffer_size, seed=seed * 7919 + stream)
