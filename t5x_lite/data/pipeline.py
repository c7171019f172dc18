"""The input pipeline: config -> deterministic, sharded, resumable batches.

Owns: validating `config.data` against the model (`validate`), wiring sources ->
mixture -> objective -> pack -> batch -> feature converter (`build_dataset`), and the
`DataIterator` that yields numpy batches and saves/restores its exact position.

    it = get_dataset(config, 'train', shard_index=jax.process_index(),
                     num_shards=jax.process_count())
    batch = next(it)            # dict[str, np.ndarray int32 [batch, length]]
    it.save(step_dir)           # writes step_dir/data_iterator-shard-00000-of-00001.*
    it.restore(step_dir)        # the next batch is the one that followed the save

Every feature is int32 (loss weights and decoder_causal_attention included). Segment ids
and positions are always present: packed rows carry one id per example, unpacked rows
(data.pack=False) have segment id 1 on real tokens. Validation batches of a finite pass
are padded to the full batch with all-zero rows (zero loss weights) so shapes never change.

Feature lengths: `families.feature_lengths` (the one lengths function; plan, bench and
train count tokens with it too).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work
import tensorflow as tf  # noqa: E402

try:  # TF only feeds the host; keep it off accelerators.
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):
  pass

from t5x_lite import families, partitioning  # noqa: E402
from t5x_lite.data import objectives as obj_lib  # noqa: E402
from t5x_lite.data import packing  # noqa: E402
from t5x_lite.data import sources as src_lib  # noqa: E402
from t5x_lite.data import vocab as vocab_lib  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402

OBJECTIVES = ('span_corruption', 'mlm', 'iid_noise', 'causal_lm', 'prefix_lm', 'text_to_text')
FAMILY_OBJECTIVES = {name: f.objectives for name, f in families.FAMILIES.items()}


# ---------------------------------------------------------------- validation
def validate(config, vocab: vocab_lib.Vocabulary | None = None) -> vocab_lib.Vocabulary:
  """Checks config.data against itself, the vocabulary and config.model; returns the
  vocabulary. Raises DataError with one sentence naming the bad field."""
  d, family = config.data, config.model.family
  if d.objective not in OBJECTIVES:
    raise DataError(f'data.objective={d.objective!r} is not one of {", ".join(OBJECTIVES)}.')
  if family not in FAMILY_OBJECTIVES:
    raise DataError(f'model.family={family!r} is not one of {", ".join(FAMILY_OBJECTIVES)}.')
  if d.objective not in FAMILY_OBJECTIVES[family]:
    raise DataError(f'data.objective={d.objective!r} does not fit model.family={family!r} '
                    f'(it takes {", ".join(FAMILY_OBJECTIVES[family])}).')
  for name in ('inputs_length', 'targets_length'):
    if int(d[name]) < 2:
      raise DataError(f'data.{name}={d[name]} must be at least 2.')
  if d.doc_boundary not in src_lib.BOUNDARIES:
    raise DataError(f'data.doc_boundary={d.doc_boundary!r} is not one of {", ".join(src_lib.BOUNDARIES)}.')
  if d.on_bad_input not in ('skip', 'error'):
    raise DataError(f"data.on_bad_input={d.on_bad_input!r} must be 'skip' or 'error'.")
  for name in ('noise_density', 'mlm_rate'):
    if not 0.0 <= float(d[name]) < 1.0:
      raise DataError(f'data.{name}={d[name]} must be in [0, 1).')
  if not (0 <= d.mlm_mask_prob and 0 <= d.mlm_random_prob and d.mlm_mask_prob + d.mlm_random_prob <= 1):
    raise DataError('data.mlm_mask_prob + data.mlm_random_prob must be a split of 1 '
                    f'(got {d.mlm_mask_prob} + {d.mlm_random_prob}).')
  vocab = vocab or vocab_lib.from_config(d)
  if config.model.vocab_size < vocab.vocab_size:
    raise DataError(f'model.vocab_size={config.model.vocab_size} is smaller than the vocabulary '
                    f'size {vocab.vocab_size} of data.vocab={d.vocab!r} ({vocab.piece_size} pieces '
                    f'+ data.extra_ids={vocab.extra_ids}).')
  if d.objective == 'span_corruption':
    check_span_corruption(d.inputs_length, d.targets_length, d.noise_density,
                          d.mean_noise_span_length, vocab.extra_ids)
  if d.objective == 'iid_noise' and vocab.extra_ids < 1:
    raise DataError('data.objective=iid_noise needs a sentinel but data.extra_ids=0.')
  if d.objective == 'mlm' and vocab.mask_id is None:
    raise DataError(f'data.objective=mlm needs a mask token: data.vocab={d.vocab!r} has no '
                    f'[MASK] piece and data.extra_ids=0.')
  return vocab


def check_span_corruption(inputs_length, targets_length, noise_density, mean_noise_span_length,
                          extra_ids):
  """Config-time checks of §1: the targets length covers the helper's, every raw chunk
  length fits both lengths, and no chunk needs more sentinels than the vocabulary has."""
  if mean_noise_span_length <= 0:
    raise DataError(f'data.mean_noise_span_length={mean_noise_span_length} must be positive.')
  raw, needed = obj_lib.span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)
  if targets_length < needed:
    raise DataError(f'data.targets_length={targets_length} is smaller than the {needed} that span '
                    f'corruption of data.inputs_length={inputs_length} needs (noise '
                    f'{noise_density}, mean span {mean_noise_span_length}).')
  if noise_density == 0:
    return
  lengths = np.arange(1, raw + 1)
  n, s = obj_lib.noise_counts(lengths, noise_density, mean_noise_span_length)
  n, s = np.where(lengths == 1, 0, n), np.where(lengths == 1, 0, s)
  if s.max() > extra_ids:
    raise DataError(f'data.inputs_length={inputs_length} gives raw chunks of {raw} tokens with up '
                    f'to {s.max()} noise spans, more than the {extra_ids} sentinels of '
                    f'data.extra_ids; shorten the inputs or raise data.mean_noise_span_length.')
  if (lengths - n + s + 1).max() > inputs_length or (n + s + 1).max() > targets_length:
    raise DataError(f'data.inputs_length={inputs_length}/data.targets_length={targets_length}: '
                    f'some span-corrupted chunk would not fit.')


# ---------------------------------------------------------------- dataset
def _seed_pair(seed: int, shard_index: int):
  return (int(seed), int(shard_index))


def build_dataset(config, split: str, *, shard_index: int = 0, num_shards: int = 1,
                  seed: int | None = None, batch_size: int | None = None, batched: bool = True,
                  skips: src_lib.SkipCounter | None = None):
  """The tf.data pipeline (see module doc) and its vocabulary: (dataset, vocab).

  batched=False stops before batching and feature conversion and returns packed rows
  (or, with config.data.pack False, padded examples); used by inspect and tests.
  """
  d = config.data
  if split not in ('train', 'validation'):
    raise DataError(f"split={split!r} must be 'train' or 'validation'.")
  if not 0 <= shard_index < num_shards:
    raise DataError(f'shard_index={shard_index} is not in [0, num_shards={num_shards}).')
  vocab = validate(config)
  seed = d.seed if seed is None else seed
  train = split == 'train'
  skips = skips if skips is not None else src_lib.SkipCounter()
  spec = d.train_source if train else d.validation_source
  what = 'data.train_source' if train else 'data.validation_source'
  specs = src_lib.parse_sources(spec, what)
  fields = ((d.inputs_field, d.targets_field) if d.objective == 'text_to_text' else (d.text_field,))

  streams = []
  for i, s in enumerate(specs):
    f = fields
    if d.objective == 'text_to_text':
      f = (s.get('inputs', fields[0]), s.get('targets', fields[1]))
    elif s.get('field'):
      f = (s.get('field'),)
    ds = src_lib.token_dataset(
        s, vocab, f, split=split, train=train, seed=seed * 1000 + i, shard_index=shard_index,
        num_shards=num_shards, boundary=d.doc_boundary, on_bad_input=d.on_bad_input,
        tfds_data_dir=d.tfds_data_dir, shuffle_buffer_size=d.shuffle_buffer_size, skips=skips)
    if d.objective != 'text_to_text':
      ds = ds.map(lambda x: x)  # 1-tuples -> the tensor
    streams.append(ds)
  if len(streams) == 1:
    ds = streams[0]
  else:
    rates = np.array([s.rate for s in specs], np.float64)
    ds = tf.data.Dataset.sample_from_datasets(
        streams, weights=(rates / rates.sum()).tolist(), seed=seed, stop_on_empty_dataset=False)
  if skips.total():
    logging.warning('data %s shard %d/%d: %s', split, shard_index, num_shards, skips.summary())

  pair = _seed_pair(seed, shard_index)
  il, tl = d.inputs_length, d.targets_length
  if d.objective == 'span_corruption':
    ds = obj_lib.span_corruption(ds, vocab_size=vocab.vocab_size, inputs_length=il,
                                 noise_density=d.noise_density,
                                 mean_noise_span_length=d.mean_noise_span_length, seed=pair)
  elif d.objective == 'mlm':
    ds = obj_lib.mlm(ds, vocab=vocab, length=il, rate=d.mlm_rate, mask_prob=d.mlm_mask_prob,
                     random_prob=d.mlm_random_prob, whole_word=d.mlm_whole_word, seed=pair)
  elif d.objective == 'iid_noise':
    ds = obj_lib.iid_noise(ds, vocab=vocab, length=min(il, tl) - 1, noise_density=d.noise_density,
                           random_prob=d.iid_random_prob, seed=pair)
  elif d.objective == 'causal_lm':
    ds = obj_lib.causal_lm(ds, length=tl)
  elif d.objective == 'prefix_lm':
    ds = obj_lib.prefix_lm(ds, length=min(il, tl), seed=pair)
  else:
    ds = obj_lib.text_to_text(ds, inputs_length=il, targets_length=tl)

  if families.decoder_rows_hold_inputs(config.model.family, d.objective):
    ds = ds.map(packing.concat_for_decoder)
  lengths = families.feature_lengths(config)
  ds = packing.trim_and_pack(ds, lengths) if d.pack else packing.pad_unpacked(ds, lengths)
  if not train and d.eval_repeat:
    ds = ds.repeat()
  options = tf.data.Options()
  options.deterministic = True
  # TFDS sources tokenize in a py_function: stateless in effect, so checkpointing is safe.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  ds = ds.with_options(options)
  if not batched:
    return ds, vocab

  if batch_size is None:
    batch_size = partitioning.split_batch(config.train, num_shards, f'num_shards={num_shards}')
  drop = train or bool(d.eval_repeat)
  ds = ds.batch(batch_size, drop_remainder=drop)
  if not drop:
    row_lengths = {k + sfx: n for k, n in lengths.items() for sfx in ('', '_segment_ids', '_positions')}

    def pad_batch(rows):
      return {k: tf.ensure_shape(tf.pad(v, [[0, batch_size - tf.shape(v)[0]], [0, 0]]),
                                 [batch_size, row_lengths[k]]) for k, v in rows.items()}
    ds = ds.map(pad_batch)
  ds = ds.map(packing.CONVERTERS[config.model.family])
  return ds.prefetch(2), vocab


class DataIterator:
  """Iterator of numpy batches whose exact position can be saved and restored."""

  def __init__(self, dataset: tf.data.Dataset, *, vocab, shard_index: int, num_shards: int,
               seed: int, split: str, skips: src_lib.SkipCounter):
    self.dataset = dataset
    self.vocab = vocab
    self.shard_index, self.num_shards, self.seed, self.split = shard_index, num_shards, seed, split
    self.skips = skips
    self._it = iter(dataset)
    self._ckpt = tf.train.Checkpoint(iterator=self._it)

  @property
  def element_spec(self) -> dict:
    return self.dataset.element_spec

  @property
  def shapes(self) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in self.dataset.element_spec.items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    return {k: v.numpy() for k, v in batch.items()}

  def _prefix(self, directory: str) -> str:
    return os.path.join(directory, f'data_iterator-shard-{self.shard_index:05d}-of-{self.num_shards:05d}')

  def save(self, directory: str) -> str:
    """Writes this shard's position under `directory` (created if needed); returns the prefix."""
    tf.io.gfile.makedirs(directory)
    prefix = self._prefix(directory)
    try:
      self._ckpt.write(prefix)
    except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError) as e:
      raise DataError(f'the {self.split} data iterator cannot be checkpointed: '
                      f'{e.message.split("}} ")[-1].split(" [Op:")[0]}') from None
    with tf.io.gfile.GFile(prefix + '.json', 'w') as f:
      json.dump(dict(shard_index=self.shard_index, num_shards=self.num_shards, seed=self.seed,
                     split=self.split, element_spec=self.shapes), f)
    return prefix

  def restore(self, directory: str) -> None:
    """Restores the position saved by `save(directory)` for this shard."""
    prefix = self._prefix(directory)
    if not tf.io.gfile.exists(prefix + '.index'):
      raise DataError(f'no data iterator state for shard {self.shard_index} of {self.num_shards} '
                      f'in {directory!r} (expected {os.path.basename(prefix)}.index).')
    with tf.io.gfile.GFile(prefix + '.json') as f:
      meta = json.load(f)
    if meta['seed'] != self.seed or meta['split'] != self.split:
      raise DataError(f'data iterator state in {directory!r} was saved with seed {meta["seed"]}, '
                      f'split {meta["split"]!r}; this pipeline has seed {self.seed}, split {self.split!r}.')
    if {k: list(v) for k, v in self.shapes.items()} != meta['element_spec']:
      raise DataError(f'data iterator state in {directory!r} has features {meta["element_spec"]}; '
                      f'this pipeline makes {self.shapes}.')
    self._ckpt.read(prefix).assert_consumed()


def get_dataset(config, split: str, *, shard_index: int = 0, num_shards: int = 1,
                seed: int | None = None, batch_size: int | None = None) -> DataIterator:
  """Batches for `split` ('train': endless, reshuffled per epoch; 'validation': one pass,
  or endless with data.eval_repeat) of shard `shard_index` of `num_shards`."""
  skips = src_lib.SkipCounter()
  seed = config.data.seed if seed is None else seed
  ds, vocab = build_dataset(config, split, shard_index=shard_index, num_shards=num_shards,
                            seed=seed, batch_size=batch_size, skips=skips)
  return DataIterator(ds, vocab=vocab, shard_index=shard_index, num_shards=num_shards, seed=seed,
                      split=split, skips=skips)
