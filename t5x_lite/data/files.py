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
     splits data.shuffle_buffer_size over the streams and a mixture's sources, so memory
     and the time to fill the buffers before the first batch do not grow with their
     count), drained at each epoch's end: every document once per epoch, even in a stream
     smaller than its buffer.
Trade-off: documents close together in a file stay closer together in the stream than a
full permutation would place them (a buffer of B documents moves each by about B places),
and an epoch of a single file starts in its first B documents. Many files and a buffer
that spans several of them make this invisible to the loss; a full shuffle of a 20 GB shard
would cost the memory or the seek time this module exists to avoid.

Bad input is counted as it streams (`SkipCounter`: the reason, where it first happened):
invalid UTF-8 lines, empty lines, invalid JSON, missing or empty fields, TSV rows with the
wrong number of columns, empty files and TSV files of only a header line, .gz files cut
short (checked at their end: tf.data's gzip reader stops quietly at a cut), files of
another compressed format (bzip2, xz, zstd, zip, lz4, or gzip not named .gz: known by their
first bytes at start-up). With `on_bad_input='error'` the first one stops the pipeline with
its file and line. Plain text is checked and split into documents inside the graph; JSONL
and TSV lines are parsed in one Python call per batch of lines (`tf.py_function`, stateless,
so checkpoints stay exact). Each bad line or file is counted once, by one stream, however
many streams read it: a file by stream (file number mod V), and when every stream reads
every file (fewer files than streams), line n of file f by stream (f + n) mod V; with
`on_bad_input='error'` every stream that reads it stops there.
"""
from __future__ import annotations

import logging
import os
import zlib

import numpy as np
import tensorflow as tf

from t5x_lite.data.records import jsonl_parser, tsv_parser
from t5x_lite.data.sources import (COLUMNAR_SUFFIXES, CUT_GZ, EMPTY_FILE, TSV_HEADER_ONLY,
                                   DataError, FileSurvey, SkipCounter, bad_input,
                                   compression, wide_encoding)

LINES_PER_CALL = 256


def split_files(files: list[str], stream: int, num_streams: int):
  """(this stream's [(file number, path)], whether documents are dealt within files)."""
  if len(files) >= num_streams:
    return [(i, f) for i, f in enumerate(files)][stream::num_streams], False
  return list(enumerate(files)), True


def _report(skips: SkipCounter, policy: str, reason: str, path, line_number, line=None):
  """Graph-side bad-input hook: a Python call only when there is bad input; returns False.

  `line_number` (and `line`) may be scalars or vectors (every bad line of a batch, each
  counted; with policy 'error' the first one raises)."""
  def call(path, numbers, raws):
    path = path.numpy().decode()
    numbers = np.atleast_1d(numbers.numpy())
    raws = np.broadcast_to(np.atleast_1d(raws.numpy()), numbers.shape)
    for n, raw in zip(numbers, raws):
      detail = ''
      if reason == 'invalid UTF-8':
        try:
          raw.decode('utf-8')
        except UnicodeDecodeError as e:
          detail = f'byte {raw[e.start]:#04x} at column {e.start + 1}'
      bad_input(policy, skips, reason, path + (f':{int(n)}' if int(n) > 0 else ''), detail)
    return False
  return tf.py_function(call, [path, line_number, line if line is not None else ''], tf.bool)


def _owned(numbers, file_number, owner):
  """Which of these line numbers this stream counts bad input at: all of them, or with
  `owner` (stream, num_streams) when every stream reads the file, (file + line) mod V."""
  if owner is None:
    return tf.ones_like(numbers, tf.bool)
  stream, num_streams = owner
  return tf.equal((numbers + file_number) % num_streams, stream)


def _valid_utf8(line):
  return tf.equal(tf.strings.unicode_transcode(line, 'UTF-8', 'UTF-8', errors='replace',
                                               replacement_char=0xFFFD), line)


def _drop_bad(numbers, lines, bad, hook, report=None):
  """(numbers, lines) without the `bad` ones, after `hook(numbers, lines)` of the `report`
  ones (default: the bad ones; only called, as a Python call, when there are some)."""
  report = bad if report is None else report
  checked = tf.cond(tf.reduce_any(report),
                    lambda: hook(tf.boolean_mask(numbers, report), tf.boolean_mask(lines, report)),
                    lambda: tf.constant(True))
  with tf.control_dependencies([checked]):
    good = tf.logical_not(bad)
    return tf.boolean_mask(numbers, good), tf.boolean_mask(lines, good)


def _gzip_complete(path: str, lines_bytes: int | None) -> str:
  """'' if the .gz file at `path` holds whole gzip members, else what is wrong with it.

  tf.data's gzip reader stops quietly where a cut-short file ends, so every .gz file is
  checked when its last line has been read. O(1) for a file whose last member's size field
  (the last 4 bytes: uncompressed size mod 2**32) equals what the reader returned; otherwise
  (CRs, which the reader drops, several members, or a cut; or `lines_bytes` None) one
  streaming decompression decides, in bounded memory."""
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    if f.tell() >= 4 and lines_bytes is not None:
      f.seek(-4, os.SEEK_END)
      size = int.from_bytes(f.read(4), 'little')
      if size in (lines_bytes % 2**32, (lines_bytes - 1) % 2**32):  # last newline optional
        return ''
    f.seek(0)
    member = zlib.decompressobj(wbits=31)
    while chunk := f.read(1 << 20):
      while chunk:
        try:
          member.decompress(chunk, 0)
        except zlib.error as e:
          return f'corrupt gzip data ({e}) before byte {f.tell()}'
        chunk = member.unused_data
        if member.eof:
          if not chunk.strip(b'\0'):   # zero padding after the last member is allowed
            break
          member = zlib.decompressobj(wbits=31)
    if not member.eof:
      return f'cut short: its {f.tell()} bytes end before gzip\'s end-of-stream marker'
  return ''


def find_corrupt_gzip(paths) -> tuple[str, str] | None:
  """(path, what is wrong) of the first .gz file of `paths` whose data does not decompress.
  tf.data's gzip reader stops there with a DataLossError that names no file, and a read
  cannot go past it, so the run stops; this names the file. Only run after that error: one
  streaming decompression per .gz file (the whole input's, as the file being read is not
  known), in bounded memory."""
  for path in paths:
    if path.endswith('.gz'):
      problem = _gzip_complete(path, None)
      if problem.startswith('corrupt'):
        return path, problem
  return None


def _gzip_zero_padded(path: str) -> bool:
  """Whether zero bytes follow the last gzip member of the .gz file at `path` (writers that
  pad to a block size do this; gzip accepts it, tf.data's reader fails there with
  'incorrect header check'). One streaming decompression, in bounded memory; only run for
  a file whose last 8 bytes are zeros (`_usable`)."""
  with open(path, 'rb') as f:
    member = zlib.decompressobj(wbits=31)
    while chunk := f.read(1 << 20):
      while chunk:
        try:
          member.decompress(chunk, 0)
        except zlib.error:
          return False  # corrupt: its reader counts that
        chunk = member.unused_data
        if member.eof and chunk:
          if not chunk.strip(b'\0'):
            return not f.read().strip(b'\0')
          member = zlib.decompressobj(wbits=31)
  return False


def _line_batches(path, skips, policy, any_gz: bool, file_number=None, owner=None):
  """Batches of (line numbers, lines) of one file, as read; a .gz file cut short (or
  corrupt) is reported, per `policy`, once its last line has been read (the check is
  left out of the graph when the source has no .gz file: `any_gz` False), and counted by
  the stream that owns the file (`_owned`: when every stream reads it, file f by stream
  f mod V). A UTF-8 byte-order mark before line 1 is dropped (`_without_bom`)."""
  is_gz = tf.strings.regex_full_match(path, r'.*\.gz')
  lines = tf.data.TextLineDataset(path, compression_type=tf.where(is_gz, 'GZIP', ''))
  if not any_gz:
    return lines.enumerate(start=1).batch(LINES_PER_CALL).map(_without_bom)
  end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int64), tf.zeros([0], tf.string)))
  batches = lines.enumerate(start=1).batch(LINES_PER_CALL).concatenate(end)

  def check_end(lines_bytes, last_line):
    def call(path, lines_bytes, last_line, number):
      path = path.numpy().decode()
      problem = _gzip_complete(path, int(lines_bytes.numpy()))
      if problem:
        count = owner is None or int(number.numpy()) % owner[1] == owner[0]
        bad_input(policy, skips, CUT_GZ, path,
                  f'{problem}; {int(last_line.numpy())} lines read, the last may be cut', count)
      return True
    number = file_number if file_number is not None else tf.constant(0, tf.int64)
    return tf.py_function(call, [path, lines_bytes, last_line, number], tf.bool)

  def count(state, batch):
    """Carries (bytes read: lines and their newlines, last line number)."""
    numbers, text = batch
    lines_bytes = state[0] + tf.reduce_sum(tf.cast(tf.strings.length(text, 'BYTE'), tf.int64) + 1)
    last_line = tf.reduce_max(tf.concat([state[1:], numbers], 0))
    return (lines_bytes, last_line), (numbers, text, lines_bytes, last_line)

  def checked(numbers, text, lines_bytes, last_line):
    """The empty batch concatenated above marks the end of the file."""
    done = tf.cond(tf.logical_and(tf.equal(tf.size(text), 0), is_gz),
                   lambda: check_end(lines_bytes, last_line), lambda: tf.constant(True))
    with tf.control_dependencies([done]):
      return tf.identity(numbers), tf.identity(text)

  start = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
  batches = batches.scan(start, count).map(checked)
  return batches.filter(lambda numbers, text: tf.size(text) > 0).map(_without_bom)


_UTF8_BOM = b'\xef\xbb\xbf'


def _without_bom(numbers, lines):
  """A byte-order mark (Windows editors write one) before a file's first line is not text:
  it would make a first JSON line invalid and hide a TSV header's first field. After the
  .gz size check, which counts the bytes as read."""
  def strip():
    first = lines[0]
    start = tf.where(tf.strings.substr(first, 0, 3) == _UTF8_BOM, 3, 0)
    first = tf.strings.substr(first, start, tf.strings.length(first) - start)
    return tf.concat([first[None], lines[1:]], 0)
  return numbers, tf.cond(tf.equal(numbers[0], 1), strip, lambda: lines)


def _checked_lines(path, skips, policy, any_gz, file_number, owner):
  """`_line_batches` with invalid UTF-8 lines counted (those this stream owns, `_owned`;
  with policy 'error' any one raises) and dropped.

  Whole batches of lines go through each op (vectorised), not one line at a time: reading
  and splitting documents costs per batch, which is most of the time to the first batch."""
  def check(numbers, lines):
    bad = tf.logical_not(_valid_utf8(lines))
    report = bad if policy == 'error' else bad & _owned(numbers, file_number, owner)
    numbers, lines = _drop_bad(numbers, lines, bad, report=report,
                               hook=lambda n, l: _report(skips, policy, 'invalid UTF-8', path, n, l))
    return numbers, tf.strings.regex_replace(lines, '\r$', '')  # CRLF line ends
  return _line_batches(path, skips, policy, any_gz, file_number, owner).map(check)


# An open document (a paragraph that no blank line ends, a whole file) is closed once it
# holds this many bytes, at the end of a batch of lines: carried on, every batch re-copied
# it (time quadratic in its length: a 2.4 MB file without blank lines took 129 s and 3.4 GB
# to a first batch), and span corruption keeps one 65,536-token chunk of a document anyway.
MAX_OPEN_DOCUMENT_BYTES = 2 ** 18


def _grouped(batches, boundary: str, on_no_text=None):
  """Batches of lines -> documents (one string each): paragraphs (blank_line), lines
  (line) or the whole file (file); one `scan` step per batch carries the open document,
  closed at a batch end once over MAX_OPEN_DOCUMENT_BYTES (no text is lost).
  `on_no_text()` (a graph op) runs at the end of a file that gave no document."""
  end = tf.data.Dataset.from_tensors((tf.constant(True), tf.zeros([0], tf.int64), tf.zeros([0], tf.string)))
  batches = batches.map(lambda n, lines: (tf.constant(False), n, lines)).concatenate(end)

  def step(carry, element):
    (carry, emitted), (at_end, _, lines) = carry, element
    text = lines if boundary == 'file' else tf.strings.strip(lines)
    if boundary == 'file':    # no breaks: every line joins the one document
      brk, keep = tf.zeros_like(text, tf.bool), tf.ones_like(text, tf.bool)
    elif boundary == 'line':  # a break before every line; empty lines (counted before) dropped
      brk, keep = tf.ones_like(text, tf.bool), tf.not_equal(text, '')
    else:                     # a blank line ends the paragraph before it
      brk = tf.equal(text, '')
      keep = tf.logical_not(brk)
    seg = tf.cumsum(tf.cast(brk, tf.int32))          # segment 0 continues the carried document
    num = tf.reduce_max(tf.concat([[0], seg], 0)) + 1  # the last segment stays open
    if boundary == 'file':  # one segment; unsorted_segment_join would drop leading '' lines
      joined = tf.reshape(tf.strings.reduce_join(text, separator='\n'), [1])
    else:                   # no empty strings here (blank lines are breaks, empty lines dropped)
      joined = tf.strings.unsorted_segment_join(tf.boolean_mask(text, keep),
                                                tf.boolean_mask(seg, keep), num, separator='\n')
    has = tf.math.unsorted_segment_sum(tf.cast(keep, tf.int32), seg, num) > 0
    first = tf.where(tf.equal(carry, ''), joined[0],
                     tf.where(has[0], tf.strings.join([carry, joined[0]], '\n'), carry))
    joined = tf.concat([[first], joined[1:]], 0)
    close = at_end | (tf.strings.length(joined[-1]) > MAX_OPEN_DOCUMENT_BYTES)
    docs = joined[:num - 1 + tf.cast(close, tf.int32)]
    if boundary == 'file':
      docs = tf.strings.strip(docs)
    docs = tf.boolean_mask(docs, tf.not_equal(docs, ''))
    emitted = emitted | (tf.size(docs) > 0)
    if on_no_text is not None:
      checked = tf.cond(at_end & ~emitted, on_no_text, lambda: tf.constant(True))
      with tf.control_dependencies([checked]):
        docs = tf.identity(docs)
    return (tf.where(close, '', joined[-1]), emitted), docs

  start = (tf.constant(''), tf.constant(False))
  return batches.scan(start, step).unbatch().map(lambda text: (text,))


def _text_documents(path, boundary, skips, policy, any_gz, file_number, owner):
  batches = _checked_lines(path, skips, policy, any_gz, file_number, owner)
  if boundary == 'line':
    def count_empty(numbers, lines):
      empty = tf.equal(tf.strings.strip(lines), '') & _owned(numbers, file_number, owner)
      checked = tf.cond(tf.reduce_any(empty),
                        lambda: _report(skips, 'skip', 'empty line', path, tf.boolean_mask(numbers, empty)),
                        lambda: tf.constant(True))
      with tf.control_dependencies([checked]):
        return tf.identity(numbers), tf.identity(lines)
    batches = batches.map(count_empty)
    return _grouped(batches, boundary)
  # Blank lines are breaks here, not content: a file of only whitespace (an empty file to its
  # reader, which a zero-byte check at start-up does not see) is counted once, as one.
  owned = _owned(tf.zeros([1], tf.int64), file_number, owner)[0]
  return _grouped(batches, boundary, on_no_text=lambda: tf.cond(
      owned, lambda: _report(skips, 'skip', EMPTY_FILE, path, tf.constant(0, tf.int64)),
      lambda: tf.constant(True)))


def _parsed(lines, path, parse, nf: int, header=None, file_number=None, owner=None):
  """Batches of lines -> one Python parse per batch -> (fields..., keep) -> kept records.
  `parse(..., count)`: whether this stream counts the line's bad input (`_owned`)."""
  def call(path, numbers, lines, header, file_number):
    out = [[] for _ in range(nf)]
    keep = []
    path = path.numpy().decode()
    head = header.numpy().decode('utf-8', 'replace') if header is not None else None
    f = int(file_number.numpy())
    for n, raw in zip(numbers.numpy(), lines.numpy()):
      count = owner is None or (f + int(n)) % owner[1] == owner[0]
      rec = parse(path, int(n), raw, head, count)
      keep.append(rec is not None)
      for i in range(nf):
        out[i].append(rec[i] if rec is not None else '')
    return [tf.constant(o, tf.string, shape=[len(keep)]) for o in out] + [tf.constant(keep, tf.bool)]

  def py(numbers, lines):
    args = [path, numbers, lines, header if header is not None else tf.constant(''),
            file_number if file_number is not None else tf.constant(0, tf.int64)]
    res = tf.py_function(call, args, [tf.string] * nf + [tf.bool])
    return tuple(tf.ensure_shape(r, [None]) for r in res)

  recs = lines.batch(LINES_PER_CALL).map(py).unbatch()
  return recs.filter(lambda *r: r[-1]).map(lambda *r: tuple(r[:-1]))


def _tsv_header(lines, path, skips, file_number, owner):
  """A TSV file's first line (its column names), read ahead of its rows. A file of only
  that line holds no record: a counted skip (not an error, as an empty file), counted by the
  stream that owns the file; it vanished without a count (a whole corpus of them said only
  'no usable record', naming no file)."""
  first_two = lines.take(2).map(lambda n, line: line).batch(2).get_single_element()
  owned = _owned(tf.zeros([1], tf.int64), file_number, owner)[0]
  checked = tf.cond(
      tf.logical_and(tf.size(first_two) < 2, owned),
      lambda: _report(skips, 'skip', TSV_HEADER_ONLY, path, tf.constant(0, tf.int64)),
      lambda: tf.constant(True))
  with tf.control_dependencies([checked]):
    return tf.identity(first_two[0])


def _usable(path: str, survey: FileSurvey, skips: SkipCounter, policy: str,
            count: bool = True) -> bool:
  """Start-up check of one file from its first bytes (`FileSurvey.head`), O(1) in its size:
  readable, not empty (nor a .gz of nothing), .gz with gzip's magic bytes and no zero
  padding after its data (from its last 8 bytes; `_gzip_zero_padded`), not another
  compressed format, not UTF-16 / UTF-32 text (`wide_encoding`; of a .gz, its first
  decompressed bytes). An empty file is a counted skip; the others follow `policy`. Every
  stream checks every file (the survey reads each once); only the stream that owns it
  (`count`) counts it."""
  head = survey.head(path)
  if isinstance(head, OSError):
    bad_input(policy, skips, 'unreadable file', path, head.strerror or str(head), count)
    return False
  if path.endswith('.gz') and head[:2] != b'\x1f\x8b' and head:
    bad_input(policy, skips, 'not a gzip file', path, f'starts with {head[:2]!r}, not 0x1f 0x8b',
              count)
    return False
  text = survey.gzip_head(path) if path.endswith('.gz') else head
  if not head or text == b'':
    if count:
      skips.add(EMPTY_FILE, path)
    return False
  compressed = compression(head) if not path.endswith('.gz') else None
  if compressed:  # its bytes as text would be lines of 'invalid UTF-8', or worse, read
    bad_input(policy, skips, 'compressed file not read (only gzip files named .gz are)', path,
              f'{compressed} data', count)
    return False
  if path.endswith('.gz') and survey.tail(path) == bytes(8) and _gzip_zero_padded(path):
    bad_input(policy, skips, "gzip file with zero padding after its data not read (tf.data's "
              'reader stops there)', path, 'rewrite it without: gzip -dc FILE | gzip > NEW', count)
    return False
  wide = wide_encoding(text or b'')
  if wide:  # valid UTF-8 with a NUL between characters: trained on as <unk>s, unflagged
    bad_input(policy, skips, 'UTF-16 / UTF-32 file not read (UTF-8 text only)', path,
              f'{wide} text; convert it, e.g. `iconv -f UTF-16 -t UTF-8`', count)
    return False
  return True


def _say_if_dealt_unevenly(src, files: list[str], num_streams: int) -> None:
  """A warning when a training source's files deal out unevenly over the streams (by bytes:
  5 files over 4 streams give one stream 2): every stream fills the same rows of each
  batch, so a smaller stream's documents are read more often, an oversampling nobody set."""
  shares = [split_files(files, v, num_streams)[0] for v in range(num_streams)]
  sizes = [sum(os.path.getsize(f) for _, f in share) for share in shares]
  if min(sizes) and max(sizes) / min(sizes) > 1.1:
    counts = [len(share) for share in shares]
    logging.getLogger(__name__).warning(
        'data: source %s deals %d file(s) unevenly over data.num_virtual_shards=%d streams '
        '(%s-%s files, %s-%s bytes per stream): each stream fills the same share of every '
        'batch, so the smallest stream\'s documents are read ~%.1fx as often as the largest\'s; '
        'a file count that is a multiple of the streams, of similar sizes, reads them evenly',
        src, len(files), num_streams, min(counts), max(counts), f'{min(sizes):,}',
        f'{max(sizes):,}', max(sizes) / min(sizes))


def documents(src, files: list[str], fields, *, stream: int, num_streams: int, train: bool,
              seed: int, boundary: str, on_bad_input: str, skips: SkipCounter,
              shuffle_buffer_size: int = 1000, cycle_length: int = 4,
              survey: FileSurvey | None = None) -> tf.data.Dataset:
  """Stream `stream` of `num_streams` of a file source: tuples of field texts.

  Train: one epoch, which the caller repeats (sources.token_dataset, once records without
  tokens are dropped): file order reshuffled per epoch, documents shuffled in a bounded
  buffer. Otherwise one ordered pass (files in name order, one at a time)."""
  nf = len(fields)
  if src.kind == 'text' and nf != 1:
    raise DataError(f'source {src}: plain text has one field per document; the text_to_text '
                    f'objective needs a jsonl, tsv or tfds source with {list(fields)}.')
  num_files, listed = len(files), files
  survey = survey if survey is not None else FileSurvey()
  files = [f for i, f in enumerate(files)
           if _usable(f, survey, skips, on_bad_input, count=i % num_streams == stream)]
  if not files:  # the error counts every file, not only this stream's share of them
    for i, f in enumerate(listed):
      if i % num_streams != stream:
        _usable(f, survey, skips, 'skip')
    raise DataError(f'source {src}: no usable records in {num_files} file(s); {skips.summary()}.')
  mine, dealt = split_files(files, stream, num_streams)
  owner = (stream, num_streams) if dealt else None  # every stream reads every line: one counts
  columnar = [f for f in files if f.endswith(COLUMNAR_SUFFIXES)] if src.kind == 'text' else []
  if columnar and stream == 0:  # (the vocab command refuses them)
    logging.getLogger(__name__).warning(
        'data: source %s matches %d JSONL / TSV file(s) (%s): plain text trains on their '
        'JSON syntax and columns as text; a jsonl: or tsv: source reads their fields',
        src, len(columnar), columnar[0])
  if dealt and stream == 0:
    logging.getLogger(__name__).info('source %s: %d file(s) for %d streams: every stream reads every file and keeps '
                 'every %d-th document', src, len(files), num_streams, num_streams)
  elif train and stream == 0:
    _say_if_dealt_unevenly(src, files, num_streams)
  boundary = src.get('boundary', boundary)
  any_gz = any(p.endswith('.gz') for _, p in mine)
  numbers = tf.constant([i for i, _ in mine], tf.int64)
  paths = tf.constant([p for _, p in mine])

  def read(number, path):
    if src.kind == 'text':
      docs = _text_documents(path, boundary, skips, on_bad_input, any_gz, number, owner)
    else:
      lines = _line_batches(path, skips, on_bad_input, any_gz, number, owner).unbatch()
      if src.kind == 'jsonl':
        docs = _parsed(lines, path, jsonl_parser(fields, skips, on_bad_input), nf,
                       file_number=number, owner=owner)
      else:
        header = _tsv_header(lines, path, skips, number, owner)
        docs = _parsed(lines.skip(1), path, tsv_parser(fields, skips, on_bad_input), nf, header,
                       file_number=number, owner=owner)
    if dealt:  # fewer files than streams: keep every num_streams-th document of each file
      docs = docs.enumerate().filter(lambda i, d: tf.equal((i + number) % num_streams, stream))
      docs = docs.map(lambda i, d: d)
    return docs

  names = tf.data.Dataset.from_tensor_slices((numbers, paths))
  if not train:
    return names.flat_map(read)
  # A new file order and document order every epoch, from the seed. The buffer shuffles
  # within an epoch (before the caller's repeat(), as seqio does): a stream smaller than its
  # buffer would otherwise mix epochs, showing some documents twice before others once.
  names = names.shuffle(len(mine), seed=seed * 7919 + stream, reshuffle_each_iteration=True)
  ds = names.interleave(read, cycle_length=min(cycle_length, len(mine)), block_length=16,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.shuffle(shuffle_buffer_size, seed=seed * 7919 + stream,
                    reshuffle_each_iteration=True)
