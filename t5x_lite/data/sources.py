"""Where documents come from: source specs, file/TFDS readers, bad-input accounting.

Owns: parsing a source spec string (`parse_sources`), reading plain text, JSONL and TSV files
and TFDS datasets into records of named text fields, sharding them per host, counting what
had to be skipped (`SkipCounter`), and turning one source into a tf.data stream of token
ids (`token_dataset`): a finite ordered pass for evaluation, or an endless stream
reshuffled every epoch with a seed for training.

Source spec: entries separated by ',', each `KIND:TARGET[;key=value...]`:
  text:data/corpus/train.txt               plain text files (glob); documents per
                                           `boundary` (line | blank_line | file)
  jsonl:data/tasks/*.jsonl;rate=0.3        one JSON object per line, named fields
  tsv:data/tasks/x.tsv                     first line is a header naming the columns
  tfds:c4/en:3.0.1;split=validation        any TFDS dataset (name[:version]); `split`
                                           defaults to the pipeline's split
Options: rate (mixture weight), boundary, field (document text field), inputs / targets
(text-to-text fields), split, data_dir (TFDS).

Sharding: with at least as many files as shards each host opens only its own files;
otherwise each host keeps every num_shards-th document. TFDS sources read
`tfds.even_splits` parts. Files are read and tokenized once, in memory, when the dataset is
built (fine for corpora up to a few GB per host; larger ones belong in TFDS): every bad line is
counted (or, with `data.on_bad_input='error'`, stops the run with its file and line), and
the tf.data stream then only holds ids, so its position checkpoints in a few KB. TFDS
sources stream (they may be large) and are tokenized inside the pipeline.
"""
from __future__ import annotations

import collections
import dataclasses
import glob as glob_lib
import json
import os
from typing import Sequence

import numpy as np

from t5x_lite.data import vocab as vocab_lib

KINDS = ('text', 'jsonl', 'tsv', 'tfds')
BOUNDARIES = ('line', 'blank_line', 'file')
OPTIONS = ('rate', 'boundary', 'field', 'inputs', 'targets', 'split', 'data_dir')


class DataError(ValueError):
  """Bad data or data config; the one-line message names the file, line, field or setting."""


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
      options[k] = v
    rate = options.pop('rate', '1')
    try:
      rate = float(rate)
    except ValueError:
      rate = -1.0
    if not rate > 0:
      raise DataError(f'{what}: rate in {entry!r} must be a positive number.')
    if 'boundary' in options and options['boundary'] not in BOUNDARIES:
      raise DataError(f'{what}: boundary in {entry!r} must be one of {", ".join(BOUNDARIES)}.')
    out.append(SourceSpec(kind, target, rate, tuple(sorted(options.items()))))
  if not out:
    raise DataError(f'{what} is empty: give at least one source, e.g. text:data/corpus/train.txt.')
  return out


class SkipCounter:
  """Counts skipped input by reason, remembering where each reason first happened."""

  def __init__(self):
    self.counts = collections.Counter()
    self.first = {}

  def add(self, reason: str, where: str, n: int = 1):
    self.counts[reason] += n
    self.first.setdefault(reason, where)

  def total(self) -> int:
    return sum(self.counts.values())

  def as_dict(self) -> dict:
    return {r: dict(count=c, first=self.first[r]) for r, c in sorted(self.counts.items())}

  def summary(self) -> str:
    if not self.counts:
      return 'no input skipped'
    return 'skipped ' + '; '.join(f'{c} x {r} (first at {self.first[r]})'
                                  for r, c in sorted(self.counts.items()))


def _bad(policy: str, skips: SkipCounter, reason: str, where: str, detail: str = ''):
  if policy == 'error':
    raise DataError(f'{where}: {reason}{": " + detail if detail else ""} '
                    f"(set data.on_bad_input='skip' to count and skip such input).")
  skips.add(reason, where)


def expand_glob(pattern: str, what: str) -> list[str]:
  """Files matching `pattern` (tried as given, then relative to the repo root), sorted."""
  files = sorted(f for f in glob_lib.glob(pattern) if os.path.isfile(f))
  if not files and not os.path.isabs(pattern):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = sorted(f for f in glob_lib.glob(os.path.join(root, pattern)) if os.path.isfile(f))
  if not files:
    raise DataError(f'{what}: {pattern!r} matches no files (cwd {os.getcwd()!r}, also tried '
                    f'relative to the repository root).')
  return files


def _lines(path: str, policy: str, skips: SkipCounter):
  """Yields (line_number, text) for every line of `path` that is valid UTF-8."""
  with open(path, 'rb') as f:
    data = f.read()
  if not data.strip():
    skips.add('empty file', path)
    return
  lines = data.split(b'\n')
  if lines[-1] == b'':  # the newline that ends the last line does not start another
    lines.pop()
  for n, raw in enumerate(lines, 1):
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      _bad(policy, skips, 'invalid UTF-8', f'{path}:{n}', f'byte {raw[e.start]:#04x} at column {e.start + 1}')
      continue
    yield n, line.rstrip('\r')


def _text_records(path, boundary, policy, skips):
  if boundary == 'file':
    body = '\n'.join(line for _, line in _lines(path, policy, skips)).strip()
    if body:
      yield (body,)
    return
  para = []
  for n, line in _lines(path, policy, skips):
    if not line.strip():
      if boundary == 'line':
        skips.add('empty line', f'{path}:{n}')
      elif para:
        yield ('\n'.join(para),)
        para = []
      continue
    if boundary == 'line':
      yield (line.strip(),)
    else:
      para.append(line.strip())
  if para:
    yield ('\n'.join(para),)


def _jsonl_records(path, fields, policy, skips):
  for n, line in _lines(path, policy, skips):
    if not line.strip():
      skips.add('empty line', f'{path}:{n}')
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      _bad(policy, skips, 'invalid JSON', f'{path}:{n}', e.msg)
      continue
    if not isinstance(obj, dict):
      _bad(policy, skips, 'JSON line is not an object', f'{path}:{n}')
      continue
    rec = []
    for f in fields:
      v = obj.get(f)
      if v is None:
        _bad(policy, skips, f'missing field {f!r}', f'{path}:{n}', f'fields are {sorted(obj)}')
        break
      v = v if isinstance(v, str) else json.dumps(v)
      if not v.strip():
        skips.add(f'empty field {f!r}', f'{path}:{n}')
        break
      rec.append(v)
    else:
      yield tuple(rec)


def _tsv_records(path, fields, policy, skips):
  header = None
  for n, line in _lines(path, policy, skips):
    if header is None:
      header = line.split('\t')
      missing = [f for f in fields if f not in header]
      if missing:
        raise DataError(f'{path}:{n}: TSV header {header} has no field {missing[0]!r} '
                        f'(the first line of a TSV source names its columns).')
      cols = [header.index(f) for f in fields]
      continue
    if not line.strip():
      skips.add('empty line', f'{path}:{n}')
      continue
    row = line.split('\t')
    if len(row) != len(header):
      _bad(policy, skips, 'TSV row with wrong number of columns', f'{path}:{n}',
           f'{len(row)} columns, header has {len(header)}')
      continue
    rec = tuple(row[c] for c in cols)
    empty = [f for f, v in zip(fields, rec) if not v.strip()]
    if empty:
      skips.add(f'empty field {empty[0]!r}', f'{path}:{n}')
      continue
    yield rec


def read_records(src: SourceSpec, fields: Sequence[str], *, boundary: str = 'blank_line',
                 on_bad_input: str = 'skip', shard_index: int = 0, num_shards: int = 1,
                 skips: SkipCounter | None = None) -> list[tuple[str, ...]]:
  """Records (tuples of the named text fields) of a file source, this shard's only.

  With at least as many files as shards, files are dealt round-robin to shards and a host
  opens only its own; otherwise documents are dealt round-robin in file order (every host
  reads the files, keeps its documents). Either way shards are disjoint and together cover
  the source. Skips are counted over what this host read.
  """
  skips = skips if skips is not None else SkipCounter()
  boundary = src.get('boundary', boundary)
  files = expand_glob(src.target, f'source {src}')
  by_file = num_shards > 1 and len(files) >= num_shards
  if by_file:
    files = files[shard_index::num_shards]
    shard_index, num_shards = 0, 1
  out, index = [], 0
  for path in files:
    if src.kind == 'text':
      if len(fields) != 1:
        raise DataError(f'source {src}: plain text has one field per document; the '
                        f'text_to_text objective needs a jsonl, tsv or tfds source with {list(fields)}.')
      it = _text_records(path, boundary, on_bad_input, skips)
    elif src.kind == 'jsonl':
      it = _jsonl_records(path, fields, on_bad_input, skips)
    else:
      it = _tsv_records(path, fields, on_bad_input, skips)
    for rec in it:
      if index % num_shards == shard_index:
        out.append(rec)
      index += 1
  if index == 0:
    raise DataError(f'source {src}: no usable records in {len(files)} file(s)'
                    f'{" of this shard" if by_file else ""}; {skips.summary()}.')
  if index < num_shards:
    raise DataError(f'source {src}: {index} records cannot fill {num_shards} shards.')
  return out


def _tfds_dataset(src: SourceSpec, split: str, fields, data_dir: str, shard_index: int,
                  num_shards: int, shuffle_files: bool, seed: int):
  """A TFDS split (this shard's even part) as a dataset of tuples of string tensors."""
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
  if splits and split not in splits:
    raise DataError(f'{where}: no split {split!r}; it has {sorted(splits)}.')
  missing = [f for f in fields if f not in features]
  if missing:
    raise DataError(f'{where}: no feature {missing[0]!r}; it has {sorted(features)}.')
  try:
    sub = tfds.even_splits(split, n=num_shards)[shard_index] if num_shards > 1 else split
    ds = tfds.load(name, split=sub, data_dir=data_dir, shuffle_files=shuffle_files, download=False,
                   read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  except Exception as e:
    raise DataError(f'{where}: cannot load ({str(e).strip().splitlines()[0]}).') from None
  return ds.map(lambda ex: tuple(ex[f] for f in fields))


_CACHE: dict = {}


def _tokenized(src, vocab, fields, boundary, on_bad_input, shard_index, num_shards):
  """(columns [(values, row_splits)], n, skip counts) of a file source; cached per process
  on the files' names, sizes and mtimes, so rebuilding a pipeline does not re-read them."""
  files = expand_glob(src.target, f'source {src}')
  key = (src, vocab.path, vocab.extra_ids, fields, boundary, on_bad_input, shard_index, num_shards,
         tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files))
  if key in _CACHE:
    return _CACHE[key]
  skips = SkipCounter()
  records = read_records(src, fields, boundary=boundary, on_bad_input=on_bad_input,
                         shard_index=shard_index, num_shards=num_shards, skips=skips)
  columns = [vocab.encode_batch([r[i] for r in records]) for i in range(len(fields))]
  keep = [j for j in range(len(records)) if all(len(c[j]) for c in columns)]
  if len(keep) < len(records):
    skips.add('record without tokens', f'{src}', len(records) - len(keep))
  if not keep:
    raise DataError(f'source {src}: no record has tokens; {skips.summary()}.')
  out = []
  for c in columns:
    lengths = np.array([len(c[j]) for j in keep], np.int64)
    values = np.fromiter((t for j in keep for t in c[j]), np.int32, count=int(lengths.sum()))
    out.append((values, np.concatenate([[0], np.cumsum(lengths)])))
  result = (out, len(keep), {r: (c, skips.first[r]) for r, c in skips.counts.items()})
  if len(_CACHE) > 16:
    _CACHE.clear()
  _CACHE[key] = result
  return result


def token_dataset(src: SourceSpec, vocab: vocab_lib.Vocabulary, fields: Sequence[str], *,
                  split: str, train: bool, seed: int, shard_index: int = 0, num_shards: int = 1,
                  boundary: str = 'blank_line', on_bad_input: str = 'skip',
                  tfds_data_dir: str = '', shuffle_buffer_size: int = 10000,
                  skips: SkipCounter | None = None):
  """One source as a stream of tuples of int32 token vectors (one per field, no EOS).

  Train: endless, a fresh permutation per epoch from (seed, shard, epoch). Otherwise one
  ordered pass. Records with a field that tokenizes to nothing are skipped and counted.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (the vocab CLI needs no TF)
  skips = skips if skips is not None else SkipCounter()
  nf = len(fields)
  if src.kind == 'tfds':
    ds = _tfds_dataset(src, split, fields, tfds_data_dir, shard_index, num_shards, train, seed)

    def encode(*texts):
      out = []
      for t in texts:
        raw = t.numpy()
        try:
          s = raw.decode('utf-8')
        except UnicodeDecodeError:
          skips.add('invalid UTF-8', f'{src} record')
          s = ''
        out.append(np.asarray(vocab.encode(s) if s.strip() else [], np.int32))
      if any(o.size == 0 for o in out):
        skips.add('record without tokens', f'{src}')
      return out

    ds = ds.map(lambda *t: tuple(tf.py_function(encode, list(t), [tf.int32] * nf)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda *t: tuple(tf.ensure_shape(x, [None]) for x in t))
    ds = ds.filter(lambda *t: tf.reduce_all(tf.stack([tf.size(x) > 0 for x in t])))
    if train:
      ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    return ds

  columns, n, counts = _tokenized(src, vocab, tuple(fields), boundary, on_bad_input, shard_index,
                                  num_shards)
  for reason, (count, where) in counts.items():
    skips.add(reason, where, count)
  tensors = [(tf.constant(values), tf.constant(splits)) for values, splits in columns]

  def lookup(i):
    return tuple(v[s[i]:s[i + 1]] for v, s in tensors)

  if train:
    base = tf.constant([seed, shard_index], tf.int64)

    def epoch(e):
      perm = tf.random.experimental.stateless_shuffle(
          tf.range(n, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(base, e))
      return tf.data.Dataset.from_tensor_slices(perm)

    ids = tf.data.Dataset.range(1 << 62).flat_map(epoch)
  else:
    ids = tf.data.Dataset.range(n)
  return ids.map(lookup)
