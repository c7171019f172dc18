"""Span corruption (docs/t5.md §1 and the invariants of §7) on the shipped corpus."""
import os

import numpy as np
import pytest

from data_helpers import EOS, ROOT, blank_line_documents, data_config, spec_counts, strip_pad

import tensorflow as tf  # noqa: E402  (after the helpers set the TF log level)

from t5x_lite.data import objectives, pipeline, sources, vocab as vocab_lib  # noqa: E402

VOCAB = os.path.join(ROOT, 'data/vocab/shakespeare_1k.model')


@pytest.fixture(scope='module')
def vocab():
  return vocab_lib.Vocabulary(VOCAB, extra_ids=100)


# ---------------------------------------------------------------- the length helper
def test_length_helper_known_values():
  assert objectives.span_corruption_lengths(512) == (568, 114)
  assert objectives.span_corruption_lengths(1024) == (1137, 229)
  assert objectives.span_corruption_lengths(1024, 0.15, 20.0)[1] == 189
  assert objectives.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)


def _one_stream(cfg):
  """Objective tests read one pass in file order: a single virtual shard."""
  cfg.data.num_virtual_shards = 1
  return cfg


def test_length_helper_568_has_85_noise_tokens_in_28_spans(vocab):
  x = tf.range(2, 570, dtype=tf.int32)  # 568 tokens
  ex = objectives.span_corrupt_example(x, vocab.vocab_size, 0.15, 3.0, tf.constant([1, 2], tf.int64))
  inputs, targets = ex['inputs'].numpy(), ex['targets'].numpy()
  assert len(inputs) == 512 and len(targets) == 114     # fills inputs exactly
  assert len(targets) - 28 - 1 == 85                      # N 85 noise tokens, S 28 spans


def _check_example(x, inputs, targets, vocab, density=0.15, mean=3.0):
  """Every invariant of §7 (1-6) for one raw chunk x and its inputs/targets."""
  v = vocab.vocab_size
  n, s = spec_counts(len(x), density, mean)
  # 1. lengths are fixed by L (the noise count is not random).
  assert len(inputs) == len(x) - n + s + 1, (len(x), len(inputs))
  assert len(targets) == n + s + 1, (len(x), len(targets))
  # 2. both end in EOS, no 0 or 1 elsewhere.
  assert inputs[-1] == EOS and targets[-1] == EOS
  assert not np.isin(inputs[:-1], [0, 1]).any() and not np.isin(targets[:-1], [0, 1]).any()
  is_sent_i = inputs >= vocab.piece_size
  is_sent_t = targets >= vocab.piece_size
  # 3. sentinels in order 0..S-1 in both.
  expected = [v - 1 - k for k in range(s)]
  assert list(inputs[is_sent_i]) == expected
  assert list(targets[is_sent_t]) == expected
  if s:
    # 4. T[0] is sentinel 0; I[0] is not a sentinel; I[-2] is; T[-2] is not.
    assert targets[0] == v - 1
    assert not is_sent_i[0]
    assert is_sent_i[-2] and not is_sent_t[-2]
  # 5. no two sentinels adjacent.
  assert not (is_sent_i[1:] & is_sent_i[:-1]).any()
  assert not (is_sent_t[1:] & is_sent_t[:-1]).any()
  # 6. reconstruction is exact.
  np.testing.assert_array_equal(reconstruct(inputs, targets, vocab), x)


def reconstruct(inputs, targets, vocab):
  """Replace each sentinel of I (EOS dropped) by what follows it in T up to the next
  sentinel or EOS."""
  spans, key = {}, None
  for t in targets[:-1]:
    if t >= vocab.piece_size:
      key = int(t)
      spans[key] = []
    else:
      spans[key].append(int(t))
  out = []
  for t in inputs[:-1]:
    out.extend(spans[int(t)] if t >= vocab.piece_size else [int(t)])
  return np.array(out, np.int32)


def test_invariants_on_thousands_of_corpus_chunks(vocab):
  """Raw chunks of every length 1..568 and thousands of real ones from the corpus."""
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/train.txt'))[:6000]
  stream = np.concatenate([np.array(t, np.int32) for t in vocab.encode_batch(docs)])
  rng = np.random.default_rng(0)
  lengths = list(range(1, 569)) + list(rng.integers(1, 1138, size=1500)) + [141] * 500
  starts = rng.integers(0, len(stream) - 1200, size=len(lengths))
  chunks = [stream[a:a + n] for a, n in zip(starts, lengths)]
  ds = tf.data.Dataset.from_generator(lambda: iter(chunks), output_signature=tf.TensorSpec([None], tf.int32))
  ds = ds.enumerate().map(lambda i, x: objectives.span_corrupt_example(
      x, vocab.vocab_size, 0.15, 3.0, tf.stack([tf.constant(7, tf.int64), i])))
  ds = ds.map(lambda e: (e['inputs'], e['targets'])).padded_batch(256)
  k = 0
  for inputs, targets in ds.as_numpy_iterator():
    for i, t in zip(inputs, targets):
      _check_example(chunks[k], strip_pad(i), strip_pad(t), vocab)
      k += 1
  assert k == len(chunks) >= 2500


def test_pipeline_output_reconstructs_the_validation_corpus(vocab):
  """End to end through get-dataset's objective stage (unpacked rows, one pass over the
  validation file): every row satisfies the invariants and the reconstructions,
  concatenated, are exactly the tokenized documents."""
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=30, pack=False)
  ds, _ = pipeline.build_dataset(_one_stream(cfg), 'validation')
  raw_length, _ = objectives.span_corruption_lengths(128)
  pieces = []
  for row in ds.batch(512).as_numpy_iterator():
    for i, t in zip(row['inputs'], row['targets']):
      pieces.append(reconstruct(strip_pad(i), strip_pad(t), vocab))
      _check_example(pieces[-1], strip_pad(i), strip_pad(t), vocab)
  assert len(pieces) > 500
  assert all(len(p) <= raw_length for p in pieces)
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))
  expected = np.concatenate([np.array(t, np.int32) for t in vocab.encode_batch(docs)])
  np.testing.assert_array_equal(np.concatenate(pieces), expected)


def test_mean_span_length_and_density_over_many_masks():
  masks = [objectives.random_spans_noise_mask(568, 0.15, 3.0, tf.constant([3, i], tf.int64)).numpy()
           for i in range(50)]
  for m in masks:
    assert m.sum() == 85 and not m[0] and m[-1]
    starts = m & ~np.pad(m[:-1], (1, 0))
    assert starts.sum() == 28
  # Different seeds give different masks, the same seed the same one (invariant 7).
  assert len({m.tobytes() for m in masks}) == 50
  again = objectives.random_spans_noise_mask(568, 0.15, 3.0, tf.constant([3, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(again, masks[0])


def test_length_one_has_no_noise(vocab):
  mask = objectives.random_spans_noise_mask(1, 0.15, 3.0, tf.constant([0, 0], tf.int64)).numpy()
  assert mask.tolist() == [False]
  ex = objectives.span_corrupt_example([42], vocab.vocab_size, 0.15, 3.0, tf.constant([0, 0], tf.int64))
  assert ex['inputs'].numpy().tolist() == [42, EOS]
  assert ex['targets'].numpy().tolist() == [EOS]


def test_zero_density_has_no_noise():
  mask = objectives.random_spans_noise_mask(50, 0.0, 3.0, tf.constant([0, 0], tf.int64)).numpy()
  assert not mask.any()


def test_more_spans_than_sentinels_is_a_config_error():
  # S > 100 once L >= 2010 at 0.15 / 3: inputs_length 2048 -> raw 2272 tokens.
  raw, tl = objectives.span_corruption_lengths(2048)
  with pytest.raises(sources.DataError, match=r'noise spans, more than the 100 sentinels'):
    pipeline.check_span_corruption(2048, tl, 0.15, 3.0, extra_ids=100)
  cfg = data_config(objective='span_corruption', inputs_length=2048, targets_length=tl)
  with pytest.raises(sources.DataError, match='data.extra_ids'):
    pipeline.get_dataset(cfg, 'train')
  # Just below the limit it is fine.
  pipeline.check_span_corruption(1024, 229, 0.15, 3.0, extra_ids=100)


def test_targets_length_below_the_helper_is_a_config_error():
  cfg = data_config(objective='span_corruption', inputs_length=512, targets_length=113)
  with pytest.raises(sources.DataError, match=r'data.targets_length=113 is smaller than the 114'):
    pipeline.get_dataset(cfg, 'train')
