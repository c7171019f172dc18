"""The host-batch iterator over a process's virtual shards, with an exact, per-stream save.

Owns: pulling one batch block from each stream this process runs, concatenating them in
stream order into the host batch, and saving / restoring every stream's tf.data position
on its own (`stream-<v>-of-<V>.*` plus a JSON of what it was built with and of the input it
has skipped so far), so whichever process runs stream v after a restart, with whatever
process count, continues it exactly, its skip counts too.

A finite pass (validation) pads a stream that has ended with all-zero rows until every
stream of the process has ended, so the global batch stays the same for any process count.

At exit, every live iterator drops its tf.data iterators (an `atexit` hook) before Python
finalizes: destroying them later waits for their prefetch threads, and a thread inside one
of the pipeline's Python callbacks (bad-input hooks, TFDS reads) cannot take the GIL once
finalization has begun, so a script that read batches could hang at exit.
"""
from __future__ import annotations

import atexit
import copy
import glob
import json
import os
import weakref

import numpy as np
import tensorflow as tf

from t5x_lite.data import files as files_lib
from t5x_lite.data import sources as src_lib
from t5x_lite.data.sources import DataError, ResumeMismatch


def _shape_change(saved: dict, now: dict, num_streams: int) -> str:
  """What differs between a stream's saved and current batch shapes, as config fields."""
  rows = lambda shapes: next(iter(shapes.values()))[0]  # noqa: E731
  if rows(saved) != rows(now):
    return (f'train.batch_size={rows(saved) * num_streams} ({rows(saved)} rows per stream); '
            f'this config has train.batch_size={rows(now) * num_streams}')
  diffs = [f'{k} {saved[k][1:]} then, {now[k][1:]} now' for k in sorted(set(saved) | set(now))
           if saved.get(k) != now.get(k) and k in saved and k in now]
  added = sorted(set(saved) ^ set(now))
  return ('other feature lengths (data.inputs_length / data.targets_length): '
          + '; '.join(diffs + ([f'features {added} in one only'] if added else [])))


LISTING = 'files.json'  # beside the stream positions: {source: {file: size}} at the save

_LIVE: weakref.WeakSet = weakref.WeakSet()  # DataIterators not yet garbage-collected


@atexit.register  # registered after tensorflow's import: runs before its exit hooks
def _release_live_iterators() -> None:
  for it in list(_LIVE):
    it.release()


class DataIterator:
  """Iterator of numpy host batches whose exact position can be saved and restored."""

  def __init__(self, datasets: dict, *, vocab, num_streams: int, seed: int, split: str,
               skips: src_lib.SkipCounter, stream_skips: dict, finite: bool,
               settings: dict | None = None, listing: dict | None = None,
               files: list[str] = ()):
    self.datasets = datasets          # {stream index: dataset of batch blocks}
    self.files = list(files)          # the input files (an error names the one it failed in)
    self.settings = settings or {}    # {config field: value} that make the stream what it is
    self.listing = listing or {}      # its sources' files and sizes (sources.files_listing)
    self.vocab = vocab
    self.num_streams, self.seed, self.split, self.skips = num_streams, seed, split, skips
    # {stream: its SkipCounter, whose counts go to `skips` too}: saved with its position
    self.stream_skips = stream_skips
    self.finite = finite
    self._its = {v: iter(ds) for v, ds in datasets.items()}
    self._ckpts = {v: tf.train.Checkpoint(iterator=it) for v, it in self._its.items()}
    self._ended = set()
    _LIVE.add(self)

  @property
  def element_spec(self) -> dict:
    specs = [ds.element_spec for ds in self.datasets.values()]
    rows = sum(s[next(iter(s))].shape[0] for s in specs)
    return {k: tf.TensorSpec([rows, *v.shape[1:]], v.dtype) for k, v in specs[0].items()}

  @property
  def shapes(self) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in self.element_spec.items()}

  def _stream_shapes(self, v) -> dict[str, list]:
    return {k: list(s.shape) for k, s in self.datasets[v].element_spec.items()}

  def _empty_block(self, v) -> dict[str, np.ndarray]:
    """A block of all-zero rows (empty strings for texts) in stream v's shapes."""
    return {k: np.full(s.shape, b'', object) if s.dtype == tf.string else
            np.zeros(s.shape, s.dtype.as_numpy_dtype)
            for k, s in self.datasets[v].element_spec.items()}

  def __iter__(self):
    return self

  def rewind(self) -> 'DataIterator':
    """Back to the start of every stream, the pipelines kept: a finite pass read again (each
    eval of a training run) without tracing them anew, most of the seconds a build takes.
    Bad lines are not counted again (`SkipCounter.add`); truncated examples are."""
    self._its = {v: iter(ds) for v, ds in self.datasets.items()}
    self._ckpts = {v: tf.train.Checkpoint(iterator=it) for v, it in self._its.items()}
    self._ended = set()
    return self

  def release(self) -> None:
    """Drops the streams' iterators until the next `rewind`: their prefetch threads would
    otherwise go on filling buffers, on the cores the train step wants, between evals."""
    self._its, self._ckpts = {}, {}

  def holds_no_batch(self) -> bool:
    """Whether this process's streams yield no batch, found by reading the first one and
    then releasing the streams (`rewind` starts them again) and putting back the counts of
    what the read took in, so a later full pass counts each input once."""
    before = {v: copy.deepcopy(c.state()) for v, c in self.stream_skips.items()}
    empty = next(self, None) is None
    self.release()  # (their prefetching stops before the counts are put back)
    if not empty:  # (empty: the counts say why)
      for v, counter in self.stream_skips.items():
        counter.restore_state(before[v])
    return empty

  def _any_stream_has_records(self, empty: int) -> bool:
    """Whether a stream other than `empty` yields an example (read only to word an error:
    this iterator is not used after it)."""
    for v, it in self._its.items():
      try:
        if v != empty and next(it, None) is not None:
          return True
      except tf.errors.OpError:
        pass
    return False

  def __next__(self) -> dict[str, np.ndarray]:
    blocks = []
    for v, it in self._its.items():
      if v not in self._ended:
        try:
          blocks.append({k: x.numpy() for k, x in next(it).items()})
          continue
        except StopIteration:
          # (only a process that runs every stream can tell: another host's may have some)
          if (not self.finite and len(self._its) == self.num_streams and
              not self._any_stream_has_records(v)):
            raise DataError(f'data {self.split}: no usable record in the input '
                            f'(data.{self.split}_source; {self.skips.summary()}).') from None
          if not self.finite:  # an endless stream only ends when it holds no usable record
            raise DataError(
                f'data {self.split}: stream {v} of {self.num_streams} (data.num_virtual_shards) '
                f'has no usable records: its share of the input holds none (the files dealt '
                f'to it or, with fewer files than streams, every {self.num_streams}-th usable '
                f'document of a file), so a corpus needs usable documents in every share, or '
                f'a lower data.num_virtual_shards (input read so far: '
                f'{self.skips.summary()}).') from None
          self._ended.add(v)
        except tf.errors.OpError as e:
          raise self._read_error(e, f'data {self.split} stream {v}') from None
      blocks.append(self._empty_block(v))
    if len(self._ended) == len(self._its):
      raise StopIteration
    if len(blocks) == 1:
      return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}

  def _files_changed(self, directory: str) -> str:
    """' (files changed since: ...)' against the listing saved in `directory` (if one was)."""
    path = os.path.join(directory, LISTING)
    if not tf.io.gfile.exists(path):
      return ''
    with tf.io.gfile.GFile(path) as f:
      change = src_lib.listing_change(json.load(f), self.listing)
    return f' (files changed since: {change})' if change else ''

  def _read_error(self, e: tf.errors.OpError, where: str) -> DataError:
    """A stream's read error as one line; gzip data tf.data cannot decompress (its error
    names no file) is looked for in the input's .gz files, and the file named."""
    if isinstance(e, tf.errors.DataLossError) and self.skips.error is None:
      found = files_lib.find_corrupt_gzip(self.files)
      if found:
        return DataError(f'{where}: {found[0]}: {found[1]}: tf.data\'s gzip reader cannot '
                         f'read on past it (gzip -t checks a file; rewrite it or leave it out '
                         f'of the source).')
    return src_lib.as_data_error(e, self.skips, where)

  def _prefix(self, directory: str, v: int) -> str:
    return os.path.join(directory, f'stream-{v:05d}-of-{self.num_streams:05d}')

  def save(self, directory: str) -> None:
    """Writes the position of every stream this process runs under `directory`."""
    tf.io.gfile.makedirs(directory)
    for v, ckpt in self._ckpts.items():
      prefix = self._prefix(directory, v)
      try:
        ckpt.write(prefix)
      except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError) as e:
        raise DataError(f'the {self.split} data iterator cannot be checkpointed: '
                        f'{e.message.split("}} ")[-1].split(" [Op:")[0]}') from None
      if v == 0:  # one process writes the file listing the streams' fingerprints condense
        with tf.io.gfile.GFile(os.path.join(directory, LISTING), 'w') as f:
          json.dump(self.listing, f)
      with tf.io.gfile.GFile(prefix + '.json', 'w') as f:
        json.dump(dict(stream=v, num_streams=self.num_streams, seed=self.seed, split=self.split,
                       ended=v in self._ended, element_spec=self._stream_shapes(v),
                       settings=self.settings, skipped=self.stream_skips[v].state()), f)

  def restore(self, directory: str) -> None:
    """Restores every stream this process runs from `directory`, whoever saved it."""
    saved = sorted(glob.glob(os.path.join(directory, 'stream-*-of-*.json')))
    if not saved:
      older = sorted(glob.glob(os.path.join(directory, 'process_*')) +
                     glob.glob(os.path.join(directory, 'data_iterator-shard-*.index')))
      layout = (f'an older per-process layout ({os.path.basename(older[0])}), from before virtual '
                f'shards' if older else 'no data iterator state')
      raise ResumeMismatch(f'{directory!r} holds {layout}; this code restores per-stream state '
                      f'(stream-*-of-*). Resume it with the version that wrote it, or train on '
                      f'from its params with config.init_from (fresh data order).')
    found = int(os.path.basename(saved[0]).split('-of-')[1].split('.')[0])
    if found != self.num_streams:
      raise ResumeMismatch(f'data iterator state in {directory!r} has {found} streams; this config has '
                      f'data.num_virtual_shards={self.num_streams} (set it to {found} to resume).')
    for v, ckpt in self._ckpts.items():
      prefix = self._prefix(directory, v)
      if not tf.io.gfile.exists(prefix + '.json'):
        raise DataError(f'no data iterator state for stream {v} of {self.num_streams} in '
                        f'{directory!r} (expected {os.path.basename(prefix)}.index).')
      with tf.io.gfile.GFile(prefix + '.json') as f:
        meta = json.load(f)
      if meta['seed'] != self.seed or meta['split'] != self.split:
        raise ResumeMismatch(f'data iterator state in {directory!r} was saved with seed {meta["seed"]}, '
                        f'split {meta["split"]!r}; this pipeline has seed {self.seed}, split '
                        f'{self.split!r}.')
      changed = [k for k, x in meta.get('settings', {}).items()
                 if k in self.settings and self.settings[k] != x]
      if changed:  # tf.data would restore its old files and buffers under the new config
        k = changed[0]
        raise ResumeMismatch(f'data iterator state in {directory!r} was saved with {k}='
                             f'{meta["settings"][k]!r}; this config has {k}={self.settings[k]!r}'
                             f'{self._files_changed(directory) if " file" in k else ""}.')
      if self._stream_shapes(v) != meta['element_spec']:
        raise ResumeMismatch(f'data iterator state in {directory!r} was saved with '
                             f'{_shape_change(meta["element_spec"], self._stream_shapes(v), self.num_streams)}.')
      try:
        ckpt.read(prefix).assert_consumed()
      except tf.errors.OpError as e:
        if 'dataset definition has not changed' not in e.message:
          raise
        reason = e.message.split('checkpoint: ')[-1].split(' Make sure')[0].strip()
        raise ResumeMismatch(
            f'data iterator state for stream {v} in {directory!r} does not fit this pipeline '
            f'({reason}): the files its sources match, or which of them are usable (empty '
            f'files are skipped), changed since it was saved, or another version of t5x_lite '
            f'wrote it.') from None
      if 'skipped' in meta:  # the counts so far (those made building the stream included)
        self.stream_skips[v].restore_state(meta['skipped'])
      if meta.get('ended'):
        self._ended.add(v)
      else:
        self._ended.discard(v)
