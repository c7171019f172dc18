"""Where documents come from: source specs, file/TFDS readers, bad-input accounting.

Owns: parsing a source spec string (`parse_sources`), counting what had to be skipped
(`SkipCounter`), TFDS reading, and turning one stream of one source into a tf.data stream
of token ids (`token_dataset`): a finite ordered pass for evaluation, or an endless
shuffled stream for training. File reading itself lives in `files.py`.

Source spec: entries separated by ',', each `KIND:TARGET[;key=value...]`:
  text:data/corpus/train.txt               plain text files (glob); documents per
                                           `boundary` (line | blank_line | file)
  jsonl:data/tasks/*.jsonl;rate=0.3        one JSON object per line, named fields
  tsv:data/tasks/x.tsv                     first line is a header naming the columns
  tfds:c4/en:3.0.1;split=validation        any TFDS dataset (name[:version]); `split`
                                           defaults to the pipeline's split; TFDS split
                                           syntax (`train[:10%]+validation`) works
Options: rate (mixture weight; any kind), boundary (text), field (document text field),
inputs / targets (text-to-text fields; jsonl, tsv, tfds), split, data_dir (tfds); an option
the kind does not use, or one given twice, is an error. Globs: `**` spans directories.
TFDS fields must be text. Files are UTF-8, with LF or CRLF line ends; a byte-order mark
before the first line is dropped.

Training: a source that holds no usable record for one stream (fewer documents than
streams, or every one skipped) stops the run naming it, in a mixture too (tf.data's
sampling would otherwise go on without it and change the rates silently).

Virtual shards: a source is read as `num_streams` disjoint streams that together cover it
(`token_dataset(..., stream=v, num_streams=V)`). File sources stream through tf.data
(`files.py`: whole files per stream when there are enough, else every V-th document) and
are tokenized inside the graph; TFDS sources read `tfds.even_splits(split, V)[v]`.
Memory is bounded by buffers, not corpus size; bad input is counted as it streams.
"""
from __future__ import annotations

import collections
import dataclasses
import glob as glob_lib
import logging
import os
import re
import zlib
from typing import Sequence

import numpy as np

from t5x_lite.data import vocab as vocab_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ('text', 'jsonl', 'tsv', 'tfds')
# Files whose lines are records, not text: a text source (or `vocab`'s bare glob) would
# read their JSON syntax and columns as text.
COLUMNAR_SUFFIXES = ('.jsonl', '.jsonl.gz', '.tsv', '.tsv.gz')
BOUNDARIES = ('line', 'blank_line', 'file')
log = logging.getLogger(__name__)  # t5x_lite.*: shown by the commands (cli.py)
CUT_GZ = 'truncated or corrupt .gz file'   # a skip reason counted once per file (`add`)
EMPTY_FILE = 'empty file'
TSV_HEADER_ONLY = 'TSV file with only a header line'
# Reasons a file's reader finds at its end, again each epoch: counted once per file (`add`).
ONCE_PER_FILE = (CUT_GZ, EMPTY_FILE, TSV_HEADER_ONLY)
OPTIONS = ('rate', 'boundary', 'field', 'inputs', 'targets', 'split', 'data_dir')
_FIELDS = ('rate', 'field', 'inputs', 'targets')
KIND_OPTIONS = {'text': ('rate', 'boundary'), 'jsonl': _FIELDS, 'tsv': _FIELDS,
                'tfds': _FIELDS + ('split', 'data_dir')}


class DataError(ValueError):
  """Bad data or data config; the one-line message names the file, line, field or setting."""


class ResumeMismatch(DataError):
  """A saved data position this config cannot continue (other streams, seed, split, batch
  or lengths): a config mistake, not a damaged checkpoint."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str
  target: str
  rate: float = 1.0
  options: tuple = ()          # sorted (key, value) pairs

  def get(self, key, default=None):
    return dict(self.options).get(key, default)

  def __str__(self):
    return f'{self.kind}:{self.target}'


def parse_sources(spec: str, what: str = 'data.train_source') -> list[SourceSpec]:
  """Parses a mixture spec (see module doc) into SourceSpecs; errors name `what`."""
  out = []
  for entry in [e.strip() for e in (spec or '').split(',') if e.strip()]:
    head, *opts = [p.strip() for p in entry.split(';')]
    kind, sep, target = head.partition(':')
    if not sep or kind not in KINDS or not target:
      raise DataError(f'{what}: {entry!r} is not KIND:TARGET with KIND one of {", ".join(KINDS)}.')
    options = {}
    for o in opts:
      k, sep, v = o.partition('=')
      if not sep or k not in OPTIONS:
        raise DataError(f'{what}: option {o!r} in {entry!r} is not key=value with key one of '
                        f'{", ".join(OPTIONS)}.')
      if k in options:
        raise DataError(f'{what}: option {k!r} is given twice in {entry!r}.')
      if k not in KIND_OPTIONS[kind]:  # would be silently ignored
        takes = [x for x in KINDS if k in KIND_OPTIONS[x]]
        raise DataError(f'{what}: option {k!r} in {entry!r} applies to {" and ".join(takes)} '
                        f'sources only; a {kind} source takes {", ".join(KIND_OPTIONS[kind])}.')
      options[k] = v
    rate = options.pop('rate', '1')
    try:
      rate = float(rate)
    except ValueError:
      rate = -1.0
    if not 0 < rate < float('inf'):
      raise DataError(f'{what}: rate in {entry!r} must be a positive finite number.')
    if 'boundary' in options and options['boundary'] not in BOUNDARIES:
      raise DataError(f'{what}: boundary in {entry!r} must be one of {", ".join(BOUNDARIES)}.')
    out.append(SourceSpec(kind, target, rate, tuple(sorted(options.items()))))
  if not out:
    raise DataError(f'{what} is empty: give at least one source, e.g. text:data/corpus/train.txt.')
  return out


def _keep_first(first: dict, reason: str, where: str) -> None:
  """first[reason] becomes `where` if it comes earlier in file-name and line order: the
  streams read their files in parallel, so the one to reach a bad line first need not hold
  the earliest ('a.tsv:16' reported while 'a.tsv:7' was the line to fix)."""
  def order(w):
    path, _, line = w.rpartition(':')
    return (path, int(line)) if line.isdigit() and path else (w, 0)
  if reason not in first or order(where) < order(first[reason]):
    first[reason] = where


class SkipCounter:
  """Counts skipped input by reason, remembering where each reason first happened; and, for
  text-to-text examples, how many reached the objective and how many of them were longer
  than their feature length (`count_examples`), so truncation is counted, never silent.

  A process has one counter (what it reports) and one per stream it runs (`stream_counter`),
  whose counts go to both: a stream's counter is saved with the stream's position
  (iterator.py), so a resumed run's counts go on from the saved ones, whichever process
  resumes the stream. With fewer files than streams each stream reads every line of a file,
  so a bad line is counted only by the stream that owns it (files.py), never once per stream."""

  def __init__(self, parent: 'SkipCounter | None' = None):
    self.parent = parent
    self.counts = collections.Counter()
    self.first = {}
    self._error = None   # the DataError a streaming reader raised (tf wraps it; we re-raise)
    self.examples = 0                       # text-to-text examples read
    self.truncated = collections.Counter()  # feature -> examples cut to its length
    self.said = set()  # features whose truncation was logged (once: also after a re-count)
    self._limits = {}  # feature ('inputs', 'targets') -> (setting name, its length)
    self.counted_to = {}  # reason -> path -> last bad line counted (`add`: epochs)

  def stream_counter(self) -> 'SkipCounter':
    """A counter for one stream whose counts (and error, and limits) go to this one too."""
    return SkipCounter(parent=self)

  @property
  def error(self):
    return self._error

  @error.setter
  def error(self, value):
    self._error = value
    if self.parent is not None:
      self.parent.error = value

  @property
  def limits(self) -> dict:
    return self._limits

  @limits.setter
  def limits(self, value: dict):
    self._limits = value
    if self.parent is not None:
      self.parent.limits = value

  def add(self, reason: str, where: str, n: int = 1):
    """Counts `n` skips of `reason` at `where` ('path:line' for a line, else a file or
    source), as one stream reads (give each stream its own `stream_counter`). A training
    stream reads its files again every epoch: a line at or before the last line of its file
    already counted here for this reason (each check reads a file in order), or a cut .gz
    file already counted (or a file counted as a whole, `ONCE_PER_FILE`), was counted in an
    earlier epoch and is not counted again."""
    if self.error is not None:  # the stream has failed; what its prefetching reads on (the
      return                    # file's end after a bad line: 'empty file') is not its input
    if reason == EMPTY_FILE and any(where in c for c in self.counted_to.values()):
      return  # a file whose every line was bad (or a cut .gz): counted as those, not empty
    path, _, line = where.rpartition(':')
    counted = self.counted_to.setdefault(reason, {})  # each check reads a file in order
    if line.isdigit() and path:
      if int(line) <= counted.get(path, 0):
        return
      counted[path] = int(line)
    elif reason in ONCE_PER_FILE:
      if where in counted:
        return
      counted[where] = 0
    self._count(reason, where, n)

  def _count(self, reason: str, where: str, n: int):
    if self.parent is not None:
      self.parent._count(reason, where, n)  # pylint: disable=protected-access
    elif reason not in self.first:  # said once per reason, as the stream reaches it
      log.warning('data: %s at %s (counted; later ones are only counted)',
                  reason if is_cut(reason) else f'skipping {reason}', where)
    self.counts[reason] += n
    _keep_first(self.first, reason, where)

  def count_examples(self, n: int, truncated: Sequence[int], where: str):
    """`n` more examples read, of which truncated[i] had feature i of `self.limits`
    (inputs, targets) longer than its length, and were cut to fit."""
    if self.parent is not None:
      self.parent.count_examples(n, truncated, where)
    self.examples += n
    for (feature, (name, length)), k in zip(self.limits.items(), truncated):
      if k and feature not in self.said and self.parent is None:
        self.said.add(feature)
        log.warning('data: %s longer than %s=%d tokens at %s are truncated (counted; '
                    'the count is reported)', feature, name, length, where)
      self.truncated[feature] += k

  def state(self) -> dict:
    """The counts as JSON, saved with a stream's position (`restore_state` reads it)."""
    return dict(counts=dict(self.counts), first=self.first, examples=self.examples,
                truncated=dict(self.truncated), counted_to=self.counted_to)

  def restore_state(self, saved: dict):
    """This stream's counts become the saved ones (a resume), the process's total with them."""
    mine = self.state()
    self.counts = collections.Counter(saved.get('counts', {}))
    self.first = dict(saved.get('first', {}))
    self.examples = int(saved.get('examples', 0))
    self.truncated = collections.Counter(saved.get('truncated', {}))
    self.counted_to = dict(saved.get('counted_to', {}))
    total = self.parent
    if total is not None:
      total.counts.subtract(mine['counts'])
      total.counts.update(self.counts)
      total.counts = +total.counts  # drop zeros
      for reason, where in self.first.items():
        _keep_first(total.first, reason, where)
      total.examples += self.examples - mine['examples']
      total.truncated.subtract(mine['truncated'])
      total.truncated.update(self.truncated)

  def total(self) -> int:
    return sum(self.counts.values())

  def as_dict(self) -> dict:
    return {r: dict(count=c, first=self.first[r]) for r, c in sorted(self.counts.items())}

  def summary(self) -> str:
    """'skipped 2 x empty line (first at a.txt:3)', then input kept in part ('cutting ...'
    reasons: 'cut 1 x document over ... (first at ...)'), or 'no input skipped'."""
    if not self.counts:
      return 'no input skipped'
    parts = {'skipped': [], 'cut': []}
    for r in sorted(self.counts):
      verb, what = ('cut', r.removeprefix('cutting ')) if is_cut(r) else ('skipped', r)
      parts[verb].append(f'{self.counts[r]} x {what} (first at {self.first[r]})')
    return '; '.join(f'{verb} {"; ".join(items)}' for verb, items in parts.items() if items)

  def truncation_summary(self) -> str:
    """'3 of 200 examples had inputs longer than data.inputs_length=64 tokens (EOS
    included) and were truncated; ...', or '' when no example was counted."""
    if not self.limits:
      return ''
    parts = []
    for feature, (name, length) in self.limits.items():
      k = self.truncated[feature]
      parts.append(f'{k} of {self.examples} example{"" if self.examples == 1 else "s"} '
                   f'had {feature} longer than {name}={length} tokens (EOS included) and '
                   f'{"was" if k == 1 else "were"} truncated')
    return '; '.join(parts)

  def report(self) -> str:
    """Skips and truncation in one line ('' when there is nothing to say)."""
    parts = [self.summary()] if self.counts else []
    if self.examples and self.truncation_summary():
      parts.append(self.truncation_summary())
    return '; '.join(parts)

  def figures(self) -> dict:
    """The counts as JSON: what eval writes beside its metrics."""
    out = {'skipped_input': dict(sorted(self.counts.items()))}
    if self.limits:
      out['examples_read'] = self.examples
      out.update({f'truncated_{f}': self.truncated[f] for f in self.limits})
    return out


def is_cut(reason: str) -> bool:
  """Whether a counted reason keeps part of the input ('cutting ...') rather than skipping it."""
  return reason.startswith('cutting ')


def bad_input(policy: str, skips: SkipCounter, reason: str, where: str, detail: str = '',
              count: bool = True):
  """Counts one bad input (returns None) or, with policy 'error', raises naming it.
  `count=False`: another stream counts this input; only an error is raised here."""
  if policy == 'error':
    skips.error = DataError(f'{where}: {reason}{": " + detail if detail else ""} '
                            f"(set data.on_bad_input='skip' to count and skip such input).")
    raise skips.error
  if count:
    skips.add(reason, where)


# Magic bytes of compressed formats; none can start a UTF-8 text file (bzip2's 'BZh' is
# followed by a digit and the block magic 0x314159265359).
_MAGIC = ((b'\x1f\x8b', 'gzip'), (b'\xfd7zXZ\x00', 'xz'), (b'\x28\xb5\x2f\xfd', 'zstd'),
          (b'PK\x03\x04', 'zip'), (b'\x04\x22\x4d\x18', 'lz4'))


# Byte-order marks of the Unicode encodings other than UTF-8 (UTF-32LE's first: it begins
# with UTF-16LE's). Windows Notepad's "Unicode" and PowerShell 5's `>` write UTF-16LE.
_WIDE_BOMS = ((b'\xff\xfe\x00\x00', 'UTF-32LE'), (b'\x00\x00\xfe\xff', 'UTF-32BE'),
              (b'\xff\xfe', 'UTF-16LE'), (b'\xfe\xff', 'UTF-16BE'))


def wide_encoding(head: bytes) -> str | None:
  r"""The UTF-16 / UTF-32 encoding a text's first bytes show (a byte-order mark, or a NUL
  byte in every other place), if any. Read as UTF-8 such text is valid but has a NUL between
  every two characters, each a <unk> token: garbage that no line count would flag.

  >>> wide_encoding('ab'.encode('utf-16-le')), wide_encoding(b'\xfe\xff\x00a')
  ('UTF-16 or UTF-32 (NUL bytes between the characters)', 'UTF-16BE')
  >>> wide_encoding(b'ab\n'), wide_encoding('\ufeffab'.encode()), wide_encoding(b'a')
  (None, None, None)
  """
  named = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
  if named:
    return named
  if len(head) >= 4 and (not any(head[1::2]) or not any(head[0::2])):
    return 'UTF-16 or UTF-32 (NUL bytes between the characters)'
  return None


def compression(head: bytes) -> str | None:
  """The compressed format a file's first bytes announce, if any."""
  if re.match(rb'BZh[1-9]\x31\x41\x59\x26\x53\x59', head):
    return 'bzip2'
  return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def files_listing(spec: str, what: str) -> dict[str, dict[str, int]]:
  """{source: {file name below its glob's fixed part (the same from any cwd): size}} of the
  file sources of `spec`, in file order: what `files_fingerprint` condenses, saved once
  beside the stream positions so a refused resume can name the files that changed."""
  listing = {}
  for s in parse_sources(spec, what):
    if s.kind == 'tfds':
      continue
    fixed = re.split(r'[*?[]', s.target)[0]
    names = listing[str(s)] = {}
    for f in expand_glob(s.target, f'source {s}'):
      prefix = next((p for p in (fixed, os.path.join(_ROOT, fixed)) if f.startswith(p)), '')
      names[f[len(prefix):]] = os.path.getsize(f)
  return listing


def files_fingerprint(listing: dict[str, dict[str, int]]) -> tuple[str, str]:
  """What the file sources match (`files_listing`), saved with a stream position: per source
  the file count and a CRC-32 of their names, then their sizes. The streams deal and
  interleave these files, so a resume onto others would fail deep in tf.data or, with the
  same interleave cycle, read other files silently; one whose content changed under the
  same name (another copy of the corpus, an edited or appended file) would resume at a byte
  offset into other text. Returns (names, sizes): two fields, so positions saved before
  sizes were recorded still resume."""
  names_out, sizes_out = [], []
  for s, files in listing.items():
    names_out.append(f'{s}: {len(files)} files, names crc32 '
                     f'{zlib.crc32(chr(10).join(files).encode())}')
    sizes_out.append(f'{s}: {sum(files.values())} bytes, sizes crc32 '
                     f'{zlib.crc32(" ".join(map(str, files.values())).encode())}')
  return '; '.join(names_out), '; '.join(sizes_out)


def listing_change(saved: dict, now: dict, most: int = 3) -> str:
  """The files that differ between two `files_listing`s, the first `most` of them:
  'p4.txt 0 -> 246 bytes; p5.txt new; p6.txt gone'."""
  changes = []
  for s in sorted(set(saved) | set(now)):
    old, new = saved.get(s, {}), now.get(s, {})
    for name in sorted(set(old) | set(new)):
      if name not in old:
        changes.append(f'{name} new')
      elif name not in new:
        changes.append(f'{name} gone')
      elif old[name] != new[name]:
        changes.append(f'{name} {old[name]:,} -> {new[name]:,} bytes')
  more = f' and {len(changes) - most} more' if len(changes) > most else ''
  return '; '.join(changes[:most]) + more


class FileSurvey:
  """What one pipeline build learns about its input files, shared by all its streams: each
  glob's matches and each file's first bytes. Every stream needs the same list of usable
  files to deal them out; without sharing, V streams x N files meant V x N opens (and stats)
  at start-up, minutes on a network filesystem."""

  def __init__(self):
    self._matches, self._heads, self._tails, self._gzip_heads = {}, {}, {}, {}

  def files(self, pattern: str, what: str) -> list[str]:
    if pattern not in self._matches:
      self._matches[pattern] = expand_glob(pattern, what)
    return self._matches[pattern]

  def matched_files(self) -> list[str]:
    """Every file the globs looked up so far matched, sorted."""
    return sorted({f for files in self._matches.values() for f in files})

  def head(self, path: str) -> bytes | OSError:
    """The first 10 bytes of `path` (enough for every magic number checked), or the
    OSError opening it raised."""
    if path not in self._heads:
      self._tails[path] = b''
      try:
        with open(path, 'rb') as f:
          self._heads[path] = f.read(10)
          f.seek(max(f.seek(0, os.SEEK_END) - 8, 0))
          self._tails[path] = f.read(8)
      except OSError as e:
        self._heads[path] = e
    return self._heads[path]

  def tail(self, path: str) -> bytes:
    """The last 8 bytes of `path` (read with its `head`; b'' if it could not be read)."""
    self.head(path)
    return self._tails[path]

  def gzip_head(self, path: str) -> bytes | None:
    """The first 10 decompressed bytes of a gzip file (b'' when it decompresses to nothing),
    or None when they cannot be read (cut short or corrupt: its reader counts that)."""
    if path not in self._gzip_heads:
      import gzip  # pylint: disable=import-outside-toplevel
      try:
        with gzip.open(path, 'rb') as f:
          self._gzip_heads[path] = f.read(10)
      except (OSError, EOFError, zlib.error):
        self._gzip_heads[path] = None
    return self._gzip_heads[path]


def expand_glob(pattern: str, what: str) -> list[str]:
  """Files matching `pattern` (tried as given, then relative to the repo root), sorted;
  `**` matches any number of directories (`data/**/*.jsonl.gz`)."""
  files = sorted(f for f in glob_lib.glob(pattern, recursive=True) if os.path.isfile(f))
  if not files and not os.path.isabs(pattern):
    files = sorted(f for f in glob_lib.glob(os.path.join(_ROOT, pattern), recursive=True)
                   if os.path.isfile(f))
  if not files and os.path.isfile(pattern):  # a name with [ ] * ? read as a glob
    raise DataError(f'{what}: {pattern!r} matches no files, though a file of that name exists: '
                    f'[, ], * and ? are glob characters; escape them: '
                    f'{glob_lib.escape(pattern)!r}.')
  if not files and os.path.isdir(pattern):
    raise DataError(f'{what}: {pattern!r} is a directory; name its files with a glob, e.g. '
                    f'{os.path.join(pattern, "*.txt")!r}.')
  if not files:
    raise DataError(f'{what}: {pattern!r} matches no files (cwd {os.getcwd()!r}, also tried '
                    f'relative to the repository root).')
  return files


def _tfds_dataset(src: SourceSpec, split: str, fields, data_dir: str, shard_index: int,
                  num_shards: int, shuffle_files: bool, seed: int):
  """A TFDS split (this shard's even part) as a dataset of tuples of string tensors."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = src.target
  split = src.get('split', split)
  data_dir = src.get('data_dir', data_dir) or None
  where = f'source {src} (split {split!r}, data_dir {data_dir!r})'
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends have multi-line messages
    raise DataError(f'{where}: no such TFDS dataset ({str(e).strip().splitlines()[0]}).') from None
  try:
    features = builder.info.features
    splits = dict(builder.info.splits)
  except Exception as e:
    raise DataError(f'{where}: cannot read dataset info ({str(e).strip().splitlines()[0]}).') from None
  # TFDS split syntax: a sum of splits, each maybe sliced ('train[:10%]+validation[-500:]').
  names = [re.sub(r'\[[^\]]*\]$', '', part.strip()) for part in str(split).split('+')]
  unknown = [n for n in names if n not in splits and n != 'all']
  if splits and unknown:
    raise DataError(f'{where}: no split {unknown[0]!r}; it has {sorted(splits)}.')
  missing = [f for f in fields if f not in features]
  if missing:
    raise DataError(f'{where}: no feature {missing[0]!r}; it has {sorted(features)}.')
  for f in fields:  # the readers tokenize one string per record and field
    dtype, shape = getattr(features[f], 'dtype', None), getattr(features[f], 'shape', None)
    if dtype != tf.string or shape != ():
      kind = ('a sequence' if isinstance(features[f], tfds.features.Sequence) else
              'a dict of features' if isinstance(features[f], tfds.features.FeaturesDict) else
              getattr(dtype, 'name', type(features[f]).__name__) if shape == () else
              f'{getattr(dtype, "name", dtype)} of shape {shape}')
      raise DataError(f'{where}: feature {f!r} is {kind}, not text (a string per example); '
                      f'name a text feature with field= (or inputs= / targets=).')
  try:
    sub = tfds.even_splits(split, n=num_shards)[shard_index] if num_shards > 1 else split
    ds = tfds.load(name, split=sub, data_dir=data_dir, shuffle_files=shuffle_files, download=False,
                   read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  except Exception as e:
    raise DataError(f'{where}: cannot load ({str(e).strip().splitlines()[0]}).') from None
  return ds.map(lambda ex: tuple(ex[f] for f in fields))


def as_data_error(e, skips: SkipCounter, what: str) -> DataError:
  """A tf.data error as one line: the reader's own DataError, else the op's first line."""
  if skips.error is not None:
    return skips.error
  message = e.message.split('}} ')[-1].split(' [Op:')[0].strip().splitlines()[0]
  return DataError(f'{what}: cannot read input ({type(e).__name__}: {message}).')


def token_dataset(src: SourceSpec, vocab: vocab_lib.Vocabulary, fields: Sequence[str], *,
                  split: str, train: bool, seed: int, stream: int = 0, num_streams: int = 1,
                  boundary: str = 'blank_line', on_bad_input: str = 'skip',
                  tfds_data_dir: str = '', shuffle_buffer_size: int = 1000,
                  skips: SkipCounter | None = None, max_tokens: Sequence[int] | None = None,
                  keep_text: bool = False, survey: FileSurvey | None = None):
  """Stream `stream` of `num_streams` of one source: tuples of int32 token vectors (one per
  field, no EOS), followed with `keep_text` by each field's text as read (a scalar string:
  what eval scores predictions against, as seqio's `*_pretokenized` features). Train: endless and shuffled (files.py says how); otherwise one ordered
  pass. Records with a field that tokenizes to nothing are skipped and counted (under
  either data.on_bad_input, like empty lines and empty fields).

  `max_tokens` (text-to-text: inputs_length - 1, targets_length - 1, room for EOS): every
  record is counted in `skips.examples`, and each field longer than its limit in
  `skips.truncated` (the objective cuts it); one Python call per batch of 64 records.
  `survey`: shared by the streams of one build (a new one unless given)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (the vocab CLI needs no TF)
  from t5x_lite.data import files as files_lib  # pylint: disable=g-import-not-at-top
  skips = skips if skips is not None else SkipCounter()
  if src.kind == 'tfds':
    ds = _tfds_dataset(src, split, fields, tfds_data_dir, stream, num_streams, train, seed)
    where = tf.constant(f'{src} record')

    def checked(*texts):
      ok = tf.reduce_all(tf.stack([files_lib._valid_utf8(t) for t in texts]))  # pylint: disable=protected-access
      return tf.cond(ok, lambda: tf.constant(True), lambda: files_lib._report(  # pylint: disable=protected-access
          skips, on_bad_input, 'invalid UTF-8', where, tf.constant(0, tf.int64)))
    ds = ds.filter(checked)
    if train:
      ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  else:
    survey = survey if survey is not None else FileSurvey()
    paths = survey.files(src.target, f'source {src}')
    ds = files_lib.documents(src, paths, tuple(fields), train=train, skips=skips, stream=stream,
                             num_streams=num_streams, seed=seed, boundary=boundary,
                             on_bad_input=on_bad_input, shuffle_buffer_size=shuffle_buffer_size,
                             survey=survey)

  # Whole batches of records are tokenized, checked and counted at once (a record without
  # tokens is dropped inside the batch); one Python call per batch only when counting.
  reasons = [f'field {f!r} without tokens' if len(fields) > 1 else 'record without tokens'
             for f in fields]

  def count(lengths, keep):
    def call(lengths, keep):
      lengths, keep = lengths.numpy(), keep.numpy()
      for i, reason in enumerate(reasons):  # the first empty field names the record's skip
        empty = (lengths[:, i] == 0) & (lengths[:, :i] > 0).all(axis=1)
        if empty.any():
          skips.add(reason, str(src), int(empty.sum()))
      if max_tokens is not None:
        over = (lengths[keep] > np.asarray(max_tokens)).sum(axis=0)
        skips.count_examples(int(keep.sum()), [int(k) for k in over], str(src))
      return True
    return tf.py_function(call, [lengths, keep], tf.bool)

  def encode(*texts):
    ids = [vocab.tf_encode(t) for t in texts]
    lengths = tf.stack([x.row_lengths() for x in ids], axis=1)   # [records, fields]
    keep = tf.reduce_all(lengths > 0, axis=1)
    if max_tokens is None:  # only skips to count: a Python call only for a batch with one
      done = tf.cond(tf.reduce_all(keep), lambda: tf.constant(True), lambda: count(lengths, keep))
    else:
      done = count(lengths, keep)
    with tf.control_dependencies([done]):
      keep = tf.identity(keep)
      kept = tuple(tf.ragged.boolean_mask(x, keep) for x in ids)
      return kept + tuple(tf.boolean_mask(t, keep) for t in texts) if keep_text else kept

  ds = ds.batch(64).map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
  n = len(fields)
  ds = ds.map(lambda *t: tuple(tf.ensure_shape(x, [None]) for x in t[:n]) + t[n:])
  # Endless only after the records without tokens are dropped: an epoch without a usable
  # record then ends repeat() (the iterator names the source) instead of spinning forever.
  return ds.repeat() if train else ds
