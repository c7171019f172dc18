"""Span corruption (docs/t5.md §1 and the invariants of §7) on the shipped corpus."""
import os

import numpy as np
import pytest

from data_helpers import EOS, ROOT, blank_line_documents, data_config, spec_counts, strip_pad

import tensorflow as tf  # noqa: E402  (after the helpers set the TF log level)

from t5x_lite.data import objectives, pipeline, sources, vocab as vocab_lib  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402

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


@pytest.mark.parametrize('density,mean', [(0.15, 3.0), (0.15, 100.0), (0.5, 1.0), (0.05, 8.0)])
def test_the_helpers_lengths_always_fit(density, mean):
  """For every inputs length, the helper's targets length passes the config check: its raw
  chunk (and every shorter one) corrupts, with the noise mask's own counts and clamps, to
  at most both lengths. T5's helper without the clamps picked, e.g. at inputs 7 (0.15 / 3),
  a raw length of 7 with no noise span, whose corruption needs 8 inputs."""
  for inputs_length in range(3, 400):
    raw, targets = objectives.span_corruption_lengths(inputs_length, density, mean)
    pipeline.check_span_corruption(inputs_length, targets, density, mean, extra_ids=1000)
  assert objectives.span_corruption_lengths(7) == (6, 3)
  # inputs of 2 hold one raw token and EOS: a one-token chunk is never corrupted
  assert objectives.span_corruption_lengths(2, density, mean)[0] == 1
  with pytest.raises(DataError, match='data.inputs_length=2 leaves raw chunks of 1 token'):
    pipeline.check_span_corruption(2, 1, density, mean, extra_ids=1000)


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


def _masks(length, count, seed=3):
  """`count` masks from seeds (seed, 0..count-1), built in one tf.data graph (fast)."""
  ds = tf.data.Dataset.range(count).map(lambda i: objectives.random_spans_noise_mask(
      length, 0.15, 3.0, tf.stack([tf.constant(seed, tf.int64), i])))
  return next(ds.batch(count).as_numpy_iterator())


def _run_lengths(mask):
  """Lengths of the runs of equal values, in order (non-noise first)."""
  edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
  return np.diff(np.concatenate([[0], edges, [len(mask)]]))


def _partition_part_pmf(n, s):
  """P(one part = k), k = 1..n-s+1, for n split into s positive parts uniformly at random:
  the other s-1 parts are a uniform composition of n-k, so C(n-k-1, s-2) / C(n-1, s-1)."""
  from math import comb
  return np.array([comb(n - k - 1, s - 2) / comb(n - 1, s - 1) for k in range(1, n - s + 2)])


def _chi_square_p(lengths, pmf, min_expected=20):
  """p-value of a chi-square test of observed part lengths against pmf (tail bins merged)."""
  from scipy import stats
  observed = np.bincount(lengths - 1, minlength=len(pmf))[:len(pmf)].astype(float)
  expected = pmf * len(lengths)
  cut = int(np.argmax(expected[::-1].cumsum()[::-1] < min_expected)) or len(pmf)
  obs = np.concatenate([observed[:cut - 1], [observed[cut - 1:].sum()]])
  exp = np.concatenate([expected[:cut - 1], [expected[cut - 1:].sum()]])
  return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def test_span_lengths_follow_the_random_partition_distribution():
  """568 tokens: N 85 noise tokens in S 28 spans, M 483 non-noise in 28. Over 400 masks the
  span lengths match the distribution of one part of a uniform random composition."""
  masks = _masks(568, 400)
  noise, nonnoise = [], []
  for m in masks:
    assert m.sum() == 85 and not m[0] and m[-1]
    runs = _run_lengths(m)
    assert len(runs) == 56
    nonnoise.extend(runs[0::2])
    noise.extend(runs[1::2])
  for name, got, (n, s) in (('noise', noise, (85, 28)), ('non-noise', nonnoise, (483, 28))):
    p = _chi_square_p(np.array(got), _partition_part_pmf(n, s))
    assert p > 1e-4, (name, p, np.mean(got))


def _spec_masks(length, n, s, count, rng):
  """Noise masks drawn in numpy per docs/t5.md §1 (independent of the library)."""
  def compositions(total):
    cuts = np.sort(np.argsort(rng.random((count, total - 1)), axis=1)[:, :s - 1], axis=1) + 1
    bounds = np.concatenate([np.zeros((count, 1), int), cuts, np.full((count, 1), total)], 1)
    return np.diff(bounds, axis=1)
  runs = np.stack([compositions(length - n), compositions(n)], axis=2).reshape(count, 2 * s)
  kinds = np.tile([False, True], s)
  return np.stack([np.repeat(kinds, r) for r in runs])


def test_per_position_noise_rates_match_the_spec():
  """The rate at which each position is noise (0 at the start, rising to 1 at the end) over
  2,000 masks equals that of 20,000 masks drawn from the spec in numpy."""
  got = _masks(141, 2000).mean(axis=0)
  n, s = spec_counts(141)
  want = _spec_masks(141, n, s, 20000, np.random.default_rng(0)).mean(axis=0)
  assert got[0] == want[0] == 0 and got[-1] == want[-1] == 1
  sigma = np.sqrt(want * (1 - want) / 2000 + want * (1 - want) / 20000)
  z = np.abs(got - want) / np.maximum(sigma, 1e-9)
  assert z.max() < 5, (int(z.argmax()), got[z.argmax()], want[z.argmax()])
  # Averaged over the first and last 10 positions (where the ends shape the rate).
  for part in (slice(0, 10), slice(-10, None)):
    assert abs(got[part].mean() - want[part].mean()) < 0.01, (part, got[part], want[part])


def test_same_seed_same_mask_different_seeds_different_masks():
  masks = _masks(568, 50)
  assert len({m.tobytes() for m in masks}) == 50
  again = objectives.random_spans_noise_mask(568, 0.15, 3.0, tf.constant([3, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(again, masks[0])


def test_rows_of_the_dataset_get_distinct_masks(vocab):
  """Through the dataset transform (where each example gets its own seed): full-length
  rows must not share one noise pattern."""
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))[:800]
  ds = tf.data.Dataset.from_generator(
      lambda: iter([np.array(t, np.int32) for t in vocab.encode_batch(docs)]),
      output_signature=tf.TensorSpec([None], tf.int32))
  pieces = objectives.pieces(ds, 'span_corruption', objectives.piece_length('span_corruption', 64, 0))
  ds = objectives.span_corruption(pieces, vocab_size=vocab.vocab_size)
  patterns = []
  for ex in ds.take(200).as_numpy_iterator():
    # The noise pattern: where the sentinels sit in the inputs, and the span lengths in
    # the targets (sentinel positions there).
    patterns.append((tuple(np.flatnonzero(ex['inputs'] >= vocab.piece_size)),
                     tuple(np.flatnonzero(ex['targets'] >= vocab.piece_size))))
  assert len(patterns) == 200
  assert len(set(patterns)) >= 195, len(set(patterns))


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
  # S > 100 once L >= 2010 at 0.15 / 3: inputs_length 2048 -> raw 2274 tokens.
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


def test_a_document_over_the_chunk_limit_is_cut_and_counted(tmp_path):
  """T5 keeps one random 65,536-token chunk of a longer document: the rest is unused, so
  each such document is counted and reported, not dropped silently."""
  (tmp_path / 'long.txt').write_text(' '.join(['the king'] * 40000) + '\n\nshort one\n')
  cfg = _one_stream(data_config(objective='span_corruption', inputs_length=512,
                                targets_length=114, validation_source=f'text:{tmp_path}/long.txt'))
  it = pipeline.get_dataset(cfg, 'validation')
  tokens = sum(int((b['encoder_segment_ids'] > 0).sum()) for b in it)
  assert 0 < tokens < 65536
  assert it.skips.counts == {pipeline._CUT: 1}
  # reported as cut, not skipped: the chunk is trained on
  assert it.skips.summary() == ('cut 1 x document over 65536 tokens to one random 65536-token '
                                'chunk (span corruption and prefix LM, as T5 does) (first at '
                                'validation stream 0)')


def test_cut_documents_are_reported_apart_from_skipped_input(caplog):
  """A skipped line is lost; a cut document is trained on in part: the report says which."""
  from t5x_lite.data import sources
  skips = sources.SkipCounter()
  with caplog.at_level('WARNING', logger='t5x_lite'):
    skips.add('empty line', 'a.txt:3')
    skips.add(pipeline._CUT, 'train stream 0', 2)
  cut = ('document over 65536 tokens to one random 65536-token chunk (span corruption and '
         'prefix LM, as T5 does)')
  assert skips.summary() == (f'skipped 1 x empty line (first at a.txt:3); cut 2 x {cut} (first '
                             'at train stream 0)')
  assert [r.getMessage() for r in caplog.records] == [
      'data: skipping empty line at a.txt:3 (counted; later ones are only counted)',
      f'data: cutting {cut} at train stream 0 (counted; later ones are only counted)']
