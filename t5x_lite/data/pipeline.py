"""The input pipeline: config -> deterministic, sharded, resumable batches.

Owns: validating `config.data` against the model (`validate`), wiring one virtual shard
(stream): sources -> pieces -> mixture -> objective -> pack (`build_stream`), and assembling host
batches from the streams a process owns (`get_dataset`; the iterator is in iterator.py).

    it = get_dataset(config, 'train', shard_index=jax.process_index(),
                     num_shards=jax.process_count(), batch_size=host_batch)
    batch = next(it)            # dict[str, np.ndarray int32 [batch, length]]
    it.save(step_dir)           # writes step_dir/stream-<v>-of-<V>.* for each owned stream
    it.restore(step_dir)        # the next batch is the one that followed the save

Virtual shards: the global batch is always built from `data.num_virtual_shards` (V)
independent deterministic streams; stream v feeds a fixed block of rows of every global
batch (`stream_rows`) and process p of P runs streams [p V/P, (p+1) V/P). So the global
batch at every step is the same for any process count dividing V, and a checkpoint (one
position per stream) written by N processes resumes exactly on M.

Every feature is int32 (loss weights and decoder_causal_attention included). Segment ids
and positions are always present: packed rows carry one id per example, unpacked rows
(data.pack=False) have segment id 1 on real tokens. Validation batches of a finite pass
are padded to the full batch with all-zero rows (zero loss weights) so shapes never change.

Feature lengths: `families.feature_lengths` (the one lengths function; plan, bench and
train count tokens with it too).
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf  # the package's __init__ has set TF's environment variables

try:  # TF only feeds the host; keep it off accelerators.
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):
  pass
# Grappler's rewrites of every tf.data function, run as each stream's iterator is made, cost
# start-up time and bought no throughput on these integer-op pipelines (data.bench, default
# config, 2 cores: 3.8 -> 3.1 s to build its 4 streams; 331-347k -> 330-357k positions/s).
# Batches are identical, and positions saved either way restore either way.
tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})

from t5x_lite import families, partitioning  # noqa: E402
from t5x_lite.data import objectives as obj_lib  # noqa: E402
from t5x_lite.data import packing  # noqa: E402
from t5x_lite.data import sources as src_lib  # noqa: E402
from t5x_lite.data import vocab as vocab_lib  # noqa: E402
from t5x_lite.data.iterator import DataIterator  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402

_CUT = (f'cutting document over {obj_lib.MAX_DOC_TOKENS} tokens to one random {obj_lib.MAX_DOC_TOKENS}-'
        f'token chunk (span corruption and prefix LM, as T5 does)')


# ---------------------------------------------------------------- validation
def validate(config, vocab: vocab_lib.Vocabulary | None = None) -> vocab_lib.Vocabulary:
  """Checks config.data against itself, the vocabulary and config.model; returns the
  vocabulary. Raises DataError with one sentence naming the bad field."""
  d, family = config.data, config.model.family
  try:
    families.check_objective(family, d.objective)
  except ValueError as e:
    raise DataError(str(e)) from None
  for name in ('inputs_length', 'targets_length'):
    if int(d[name]) < 2:
      raise DataError(f'data.{name}={d[name]} must be at least 2.')
  if d.doc_boundary not in src_lib.BOUNDARIES:
    raise DataError(f'data.doc_boundary={d.doc_boundary!r} is not one of {", ".join(src_lib.BOUNDARIES)}.')
  if d.on_bad_input not in ('skip', 'error'):
    raise DataError(f"data.on_bad_input={d.on_bad_input!r} must be 'skip' or 'error'.")
  if d.objective in ('span_corruption', 'iid_noise') and not 0.0 < float(d.noise_density) < 1.0:
    # 0 corrupts nothing: targets of only EOS, nothing to learn
    raise DataError(f'data.noise_density={d.noise_density} must be in (0, 1).')
  if not 0.0 < float(d.mlm_rate) < 1.0:  # 0 selects nothing: a loss of 0 at every step
    raise DataError(f'data.mlm_rate={d.mlm_rate} must be in (0, 1).')
  if not 0.0 <= float(d.iid_random_prob) <= 1.0:
    raise DataError(f'data.iid_random_prob={d.iid_random_prob} must be in [0, 1].')
  if int(d.shuffle_buffer_size) < 1:
    raise DataError(f'data.shuffle_buffer_size={d.shuffle_buffer_size} must be at least 1 '
                    '(1 = no shuffling).')
  check_stream_rows(config.train.batch_size, d.num_virtual_shards)
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
  if not 0 < mean_noise_span_length < float('inf'):  # NaN fails too
    raise DataError(f'data.mean_noise_span_length={mean_noise_span_length} must be positive '
                    'and finite.')
  raw, needed = obj_lib.span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)
  if raw < 2:  # a one-token chunk is never corrupted: inputs [token, EOS], targets [EOS]
    raise DataError(f'data.inputs_length={inputs_length} leaves raw chunks of {raw} token, '
                    'which span corruption cannot corrupt; raise data.inputs_length.')
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
  inputs, targets = int((lengths - n + s + 1).max()), int((n + s + 1).max())
  if inputs > inputs_length:
    raise DataError(f'data.inputs_length={inputs_length}: raw chunks of up to {raw} tokens '
                    f'corrupt to inputs of up to {inputs} tokens (noise {noise_density}, mean '
                    f'span {mean_noise_span_length}); try another data.inputs_length.')
  if targets > targets_length:
    raise DataError(f'data.targets_length={targets_length} is smaller than the {targets} tokens '
                    f'that span corruption of data.inputs_length={inputs_length} can produce '
                    f'(noise {noise_density}, mean span {mean_noise_span_length}).')


# ---------------------------------------------------------------- virtual shards
def check_stream_rows(global_batch: int, num_streams: int) -> None:
  """DataError unless every stream can feed an equal block of each batch."""
  problem = partitioning.stream_rows_problem(global_batch, num_streams)
  if problem:
    raise DataError(problem)


def stream_rows(global_batch: int, num_streams: int) -> list[int]:
  """Rows of every global batch that each stream feeds: a fixed, equal block per stream.

  Stream v feeds rows [v G / V, (v + 1) G / V): whatever the process count P dividing V,
  process p's rows [p G / P, (p + 1) G / P) are exactly the blocks of its streams."""
  check_stream_rows(global_batch, num_streams)
  return [global_batch // num_streams] * num_streams


def owned_streams(shard_index: int, num_shards: int, num_streams: int) -> range:
  """The streams process `shard_index` of `num_shards` runs (a contiguous block)."""
  if num_streams < 1:
    raise DataError(f'data.num_virtual_shards={num_streams} must be at least 1.')
  if num_streams % num_shards:
    raise DataError(f'data.num_virtual_shards={num_streams} is not divisible by the process count '
                    f'{num_shards}; use a process count that divides it (or a multiple of '
                    f'{num_shards} streams, which changes the data order of a fresh run).')
  per = num_streams // num_shards
  return range(shard_index * per, (shard_index + 1) * per)


# ---------------------------------------------------------------- dataset
# Every dataset function below (and in sources/files/objectives/packing, called from here)
# is plain graph code with no Python control flow on tensors: AutoGraph's source rewrite
# would only cost start-up time (it was most of each stream's build), so it is off.
_no_autograph = tf.autograph.experimental.do_not_convert


@_no_autograph
def build_stream(config, split: str, *, stream: int, num_streams: int, seed: int,
                 skips: src_lib.SkipCounter, vocab: vocab_lib.Vocabulary,
                 keep_text: bool = False, in_order: bool = False,
                 survey: src_lib.FileSurvey | None = None) -> tf.data.Dataset:
  """Packed rows (unbatched) of virtual shard `stream`: its part of every source, the
  mixture, the objective and packing all run inside the stream, seeded by (seed, stream).
  `keep_text` (unpacked text_to_text only): rows also carry the texts as read
  (`packing.TEXT_FEATURES`). `in_order`: the train split read as a validation split is, one
  pass in file order, unshuffled (eval decoding --split=train). `survey`: one per build,
  shared by its streams, so each file is globbed and opened once at start-up, not once per
  stream."""
  d = config.data
  if keep_text and (d.objective != 'text_to_text' or d.pack):
    raise ValueError('keep_text needs unpacked text_to_text rows.')
  train = split == 'train' and not in_order  # endless and shuffled
  spec = d.train_source if split == 'train' else d.validation_source
  what = 'data.train_source' if split == 'train' else 'data.validation_source'
  specs = src_lib.parse_sources(spec, what)
  fields = ((d.inputs_field, d.targets_field) if d.objective == 'text_to_text' else (d.text_field,))
  unread = ('field',) if d.objective == 'text_to_text' else ('inputs', 'targets')
  for s in specs:  # an option the objective does not read would be silently ignored
    option = next((o for o in unread if s.get(o)), None)
    if option:
      raise DataError(f'{what}: option {option}= of source {s} is not read by data.objective='
                      f'{d.objective!r} (text_to_text reads inputs= and targets=, the other '
                      f'objectives field=).')

  # data.shuffle_buffer_size documents in all, split over the streams and a mixture's
  # sources: memory and the time to fill the buffers before the first batch do not grow
  # with the stream or source count.
  buffer = -(-int(d.shuffle_buffer_size) // (num_streams * len(specs)))
  il, tl = d.inputs_length, d.targets_length
  max_tokens = None
  if d.objective == 'text_to_text':  # counted as read: how many examples the objective cuts
    skips.limits = {'inputs': ('data.inputs_length', il), 'targets': ('data.targets_length', tl)}
    max_tokens = (il - 1, tl - 1)    # room for the EOS text_to_text appends
  pair = (int(seed), int(stream))
  length = obj_lib.piece_length(d.objective, il, tl, d.noise_density, d.mean_noise_span_length)
  sources = []
  for i, s in enumerate(specs):
    f = fields
    if d.objective == 'text_to_text':
      f = (s.get('inputs', fields[0]), s.get('targets', fields[1]))
    elif s.get('field'):
      f = (s.get('field'),)
    ds = src_lib.token_dataset(
        s, vocab, f, split=split, train=train, seed=seed * 1000 + i, stream=stream,
        num_streams=num_streams, boundary=d.doc_boundary, on_bad_input=d.on_bad_input,
        tfds_data_dir=d.tfds_data_dir, shuffle_buffer_size=buffer, skips=skips,
        max_tokens=max_tokens, keep_text=keep_text, survey=survey)
    if d.objective != 'text_to_text':
      ds = ds.map(lambda x: x)  # 1-tuples -> the tensor
    if train and len(specs) > 1:  # (a lone source's end: the iterator says so)
      ds = ds.concatenate(_no_records(ds.element_spec, s, split, stream, num_streams, skips))
    # Before the mixture: its rates weight pieces (examples), as seqio's do, not documents.
    sources.append(obj_lib.pieces(ds, d.objective, length, seed=pair, source=i,
                                  on_cut=lambda: skips.add(_CUT, f'{split} stream {stream}')))
  if len(sources) == 1:
    ds = sources[0]
  else:
    rates = np.array([s.rate for s in specs], np.float64)
    if not np.isfinite(rates.sum()):  # rates near the float maximum overflow their sum
      rates = rates / rates.max()
    ds = tf.data.Dataset.sample_from_datasets(
        sources, weights=(rates / rates.sum()).tolist(), seed=seed * 1000 + 997 * stream + 1,
        stop_on_empty_dataset=False)

  if d.objective == 'span_corruption':
    ds = obj_lib.span_corruption(ds, vocab_size=vocab.vocab_size, noise_density=d.noise_density,
                                 mean_noise_span_length=d.mean_noise_span_length, seed=pair)
  elif d.objective == 'mlm':
    ds = obj_lib.mlm(ds, vocab=vocab, rate=d.mlm_rate, mask_prob=d.mlm_mask_prob,
                     random_prob=d.mlm_random_prob, whole_word=d.mlm_whole_word, seed=pair)
  elif d.objective == 'iid_noise':
    ds = obj_lib.iid_noise(ds, vocab=vocab, noise_density=d.noise_density,
                           random_prob=d.iid_random_prob, seed=pair)
  elif d.objective == 'causal_lm':
    ds = obj_lib.causal_lm(ds)
  elif d.objective == 'prefix_lm':
    ds = obj_lib.prefix_lm(ds, seed=pair)
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
  # No autotuning: its background thread re-optimises the pipeline model while the train
  # step wants the CPU, and an iterator's destruction waits for it (a restored validation
  # pass took 20-76 s to delete beside one busy process on 2 cores). Without it, parallel
  # maps take TF's default parallelism (one call per core, at most 16); on this 2-core
  # machine the demo's pipeline gave 141 batches/s (111 with autotuning) and its first
  # batch in 0.8 s (1.15 s).
  options.autotune.enabled = False
  # Bad-input hooks and TFDS reads are py_functions: stateless in effect, so checkpoints are exact.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return ds.with_options(options)


def _no_records(spec, src, split: str, stream: int, num_streams: int,
                skips: src_lib.SkipCounter) -> tf.data.Dataset:
  """What an endless training source continues with if it ends (it held no usable record
  for this stream): an error naming the source and stream. A mixture would otherwise go on
  silently without that source (sample_from_datasets skips an ended one)."""
  def call():
    skips.error = DataError(
        f'data {split}: stream {stream} of {num_streams} (data.num_virtual_shards) has no usable '
        f'records of source {src} (its share holds none: the files dealt to it or, with fewer '
        f'files than streams, every {num_streams}-th document of a file; a source needs usable '
        f'documents in every share); {skips.summary()}.')
    raise skips.error

  def fail(_):
    done = tf.py_function(call, [], tf.bool)
    with tf.control_dependencies([done]):
      return tf.nest.map_structure(lambda x: tf.zeros([0], x.dtype), spec)
  return tf.data.Dataset.from_tensors(0).map(fail).filter(lambda *x: False)


def _check_split(split, shard_index, num_shards):
  if split not in ('train', 'validation'):
    raise DataError(f"split={split!r} must be 'train' or 'validation'.")
  if not 0 <= shard_index < num_shards:
    raise DataError(f'shard_index={shard_index} is not in [0, num_shards={num_shards}).')


@_no_autograph
def build_dataset(config, split: str, *, shard_index: int = 0, num_shards: int = 1,
                  seed: int | None = None, skips: src_lib.SkipCounter | None = None):
  """(packed rows of this process's streams, taken in turn, vocab): what `inspect` and the
  tests look at before batching (with config.data.pack False: padded examples)."""
  _check_split(split, shard_index, num_shards)
  vocab = validate(config)
  seed = config.data.seed if seed is None else seed
  skips = skips if skips is not None else src_lib.SkipCounter()
  num_streams = config.data.num_virtual_shards
  survey = src_lib.FileSurvey()
  streams = [build_stream(config, split, stream=v, num_streams=num_streams, seed=seed,
                          skips=skips.stream_counter(), vocab=vocab, survey=survey)
             for v in owned_streams(shard_index, num_shards, num_streams)]
  if len(streams) == 1:
    return streams[0], vocab
  order = tf.data.Dataset.range(len(streams)).repeat()
  return tf.data.Dataset.choose_from_datasets(streams, order, stop_on_empty_dataset=False), vocab


@_no_autograph
def get_dataset(config, split: str, *, shard_index: int = 0, num_shards: int = 1,
                seed: int | None = None, batch_size: int | None = None,
                skips: src_lib.SkipCounter | None = None, keep_text: bool = False,
                in_order: bool = False) -> DataIterator:
  """Host batches for `split` ('train': endless, shuffled; 'validation': one pass, or
  endless with data.eval_repeat) of process `shard_index` of `num_shards`: the rows of the
  global batch (batch_size x num_shards rows) that this process's virtual shards feed.
  Skipped and truncated input of all of them is counted in `skips` (`it.skips`; a new
  counter unless given), and of each stream in its own counter, saved with its position.
  `keep_text`, `in_order`: see `build_stream` (eval's decoding; batches then hold string
  arrays too)."""
  _check_split(split, shard_index, num_shards)
  d = config.data
  vocab = validate(config)
  seed = d.seed if seed is None else seed
  skips = skips if skips is not None else src_lib.SkipCounter()
  if batch_size is None:
    batch_size = partitioning.split_batch(config.train, num_shards, f'num_shards={num_shards}')
  num_streams = d.num_virtual_shards
  owned = owned_streams(shard_index, num_shards, num_streams)
  rows = stream_rows(batch_size * num_shards, num_streams)
  lengths = families.feature_lengths(config)
  drop = (split == 'train' and not in_order) or bool(d.eval_repeat)
  row_lengths = {k + sfx: n for k, n in lengths.items() for sfx in ('', '_segment_ids', '_positions')}
  datasets = {}
  stream_skips = {v: skips.stream_counter() for v in owned}  # saved with each stream
  survey = src_lib.FileSurvey()
  for v in owned:
    ds = build_stream(config, split, stream=v, num_streams=num_streams, seed=seed,
                      skips=stream_skips[v], vocab=vocab, keep_text=keep_text,
                      in_order=in_order, survey=survey).batch(rows[v], drop_remainder=drop)
    if not drop:
      ds = ds.map(functools.partial(_pad_batch, n=rows[v], row_lengths=row_lengths))
    convert = packing.CONVERTERS[config.model.family]
    datasets[v] = ds.map(lambda row: packing.with_texts(row, convert(row))).prefetch(2)
  source = 'train_source' if split == 'train' else 'validation_source'
  listing = src_lib.files_listing(d[source], f'data.{source}')
  return DataIterator(datasets, vocab=vocab, num_streams=num_streams, seed=seed, split=split,
                      skips=skips, stream_skips=stream_skips, finite=not drop,
                      settings=stream_settings(config, split, listing), listing=listing,
                      files=survey.matched_files())


# What a saved stream position depends on: a resume under other values is refused (the
# restored tf.data state would keep reading the old files and buffers). Not here: paths of
# TFDS data, the bad-input policy and eval_repeat, which a resume may change.
STREAM_FIELDS = ('objective', 'vocab', 'extra_ids', 'doc_boundary', 'text_field',
                 'inputs_field', 'targets_field', 'pack', 'shuffle_buffer_size', 'noise_density',
                 'mean_noise_span_length', 'iid_random_prob', 'mlm_rate', 'mlm_mask_prob',
                 'mlm_random_prob', 'mlm_whole_word')


def stream_settings(config, split: str, listing: dict) -> dict:
  """What a saved position of `split` depends on; `listing`: its sources' files
  (`files_listing`)."""
  source = 'train_source' if split == 'train' else 'validation_source'
  fields = (source,) + STREAM_FIELDS
  out = {f'data.{k}': config.data[k] for k in fields if k in config.data}
  out[f'data.{source} files'], out[f'data.{source} file sizes'] = src_lib.files_fingerprint(
      listing)
  return out


def _pad_batch(rows, *, n, row_lengths):
  """A short last batch of a finite pass, padded with all-zero rows (texts: empty) to the
  full size."""
  def pad(k, v):
    if k in packing.TEXT_FEATURES:
      return tf.ensure_shape(tf.pad(v, [[0, n - tf.shape(v)[0]]]), [n])
    return tf.ensure_shape(tf.pad(v, [[0, n - tf.shape(v)[0]], [0, 0]]), [n, row_lengths[k]])
  return {k: pad(k, v) for k, v in rows.items()}
