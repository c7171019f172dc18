"""Pretraining and fine-tuning objectives as tf.data transforms (docs/t5.md §1-3).

Owns: turning a stream of token documents into examples `{'inputs', 'targets'}` (plus
`'loss_weights'` for masked LM), in two stages:

  pieces           per source, before a mixture: documents -> token pieces of an example's
                   raw length (`piece_length`): EOS after each document (mlm, causal_lm),
                   concatenate groups of 128 documents, split; span corruption first keeps
                   one random chunk of an over-long document. prefix_lm (as T5's, which
                   has no reduce_concat_tokens) splits each document on its own, so an
                   example never runs from one document into the next. text_to_text:
                   records as read.
  then, after the mixture, per piece:
  span_corruption  T5: noise spans -> unique sentinels (`span_corruption_lengths`)
  mlm              BERT: 15% of non-special positions (or whole words) selected,
                   80% [MASK] / 10% random / 10% unchanged, loss on every selected position
  iid_noise        T5's BERT-style objective (iid_15_r10s90_f): iid 15% noise, each noise
                   token -> random id (p 0.1) or <extra_id_0>; targets = original + EOS
  causal_lm        the piece is the targets
  prefix_lm        split at k ~ U[1, L-1]: inputs = x[:k] + EOS, targets = x[k:] + EOS,
                   where x is one document's piece
  text_to_text     (inputs, targets) records, truncated to fit, EOS appended

Mixtures sample pieces, so a mixture's rates weight examples as seqio's do (its tasks'
preprocessors split documents before the mixture samples): a source of long documents
gets its rate's share of examples, not a share of documents.

Randomness is stateless: every example draws from a seed folded from (data seed, shard,
objective, example index), so the same seed gives the same examples, and a restored
iterator reproduces them. Each function is a pure TF op on 1-D int32 tensors, usable
outside tf.data (tests call them directly).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

EOS = 1
MAX_DOC_TOKENS = 65536
DOCS_PER_GROUP = 128


# ---------------------------------------------------------------- span corruption lengths
def _span_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float):
  """(inputs, targets) lengths of a corrupted chunk of `tokens_length`, with the noise
  mask's own counts (`noise_counts`: T5's helper without the clamps would pick, for short
  inputs or long spans, a length with no noise span whose corruption then does not fit)."""
  if tokens_length == 1:  # one token keeps no noise
    return 2, 1
  n, s = (int(x) for x in noise_counts(tokens_length, noise_density, mean_noise_span_length))
  return tokens_length - n + s + 1, n + s + 1


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """(raw chunk length T, targets length) so that span-corrupted inputs fill `inputs_length`.

  T5's random_spans_helper: f(T) = (T - N + S + 1, N + S + 1), N = round(T d),
  S = round(N / m) (with the noise mask's clamps N in [1, T - 1], S >= 1); start at
  T = inputs_length - 1 and grow while f(T + 1) still fits.
  512 -> (568, 114); 1024 -> (1137, 229).
  """
  t = inputs_length - 1
  while _span_lengths(t + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
    t += 1
  return t, _span_lengths(t, noise_density, mean_noise_span_length)[1]


def noise_counts(length, noise_density: float, mean_noise_span_length: float):
  """(N, S) the noise mask uses for a chunk of `length` (numpy, float32 rounding, clamps:
  N in [1, L' - 1], S in [1, min(N, L' - N)])."""
  length = np.maximum(np.asarray(length), 2)
  n = np.round(length.astype(np.float32) * np.float32(noise_density)).astype(np.int64)
  n = np.clip(n, 1, length - 1)
  s = np.round(n.astype(np.float32) / np.float32(mean_noise_span_length)).astype(np.int64)
  return n, np.clip(s, 1, np.minimum(n, length - n))


# ---------------------------------------------------------------- noise masks
def _stateless_shuffle(x, seed):
  return tf.gather(x, tf.argsort(tf.random.stateless_uniform(tf.shape(x), seed=seed)))


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of `num_segments` positive parts of `num_items`, uniformly at random."""
  first = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  first = tf.pad(_stateless_shuffle(first, seed), [[1, 0]])
  segment_id = tf.cumsum(first)
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length, noise_density: float, mean_noise_span_length: float, seed):
  """Boolean [length] noise mask with round(L d) noise tokens in round(N / m) spans
  (clamped to [1, min(N, L - N)]: every span has a noise and a non-noise part).

  The mask starts with non-noise and ends with noise (before truncating to `length`, so
  length 1 gives no noise). `seed` is a [2] int tensor.
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  orig_length = length
  length = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_nonnoise = length - num_noise
  # Each span needs >= 1 noise and >= 1 non-noise token: T5's round(N / m) alone asks for
  # more spans than that when m < 1 or d is near or above 0.5 (a shape error); it never
  # binds at 0.15 / 3, so the default masks are T5's.
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, num_nonnoise))
  seeds = tf.random.experimental.stateless_split(seed, 2)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  is_noise = tf.equal(tf.cumsum(indicator) % 2, 1)
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(tokens, noise_mask, vocab_size):
  """Replaces each noise span by one sentinel (vocab_size-1, vocab_size-2, ... in order)."""
  prev_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_noise))
  later_noise = tf.logical_and(noise_mask, prev_noise)
  sentinel = vocab_size - tf.cumsum(tf.cast(first_noise, tokens.dtype))
  tokens = tf.where(first_noise, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def span_corrupt_example(tokens, vocab_size: int, noise_density: float,
                         mean_noise_span_length: float, seed):
  """One raw chunk -> {'inputs', 'targets'}, both ending in EOS (§1, step 4)."""
  tokens = tf.convert_to_tensor(tokens, tf.int32)
  mask = random_spans_noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
  eos = tf.constant([EOS], tf.int32)
  targets = noise_span_to_unique_sentinel(tokens, tf.logical_not(mask), vocab_size)
  # No noise (L = 1, or density 0): the targets are just EOS, N = S = 0 (reference §1, §7.1).
  # seqio would emit [<extra_id_0>, EOS] here, a sentinel the inputs never mention.
  targets = tf.cond(tf.reduce_any(mask), lambda: targets, lambda: targets[:0])
  return {
      'inputs': tf.concat([noise_span_to_unique_sentinel(tokens, mask, vocab_size), eos], 0),
      'targets': tf.concat([targets, eos], 0),
  }


# ---------------------------------------------------------------- stream helpers
def _example_seeds(ds, seed, salt: int):
  """Pairs every element with its own stateless seed, folded from (seed, salt, index)."""
  base = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), salt)
  return ds.enumerate().map(
      lambda i, x: (x, tf.random.experimental.stateless_fold_in(base, i)))


def select_random_chunk(ds, seed, max_length: int = MAX_DOC_TOKENS, on_cut=None, salt: int = 101):
  """Documents longer than `max_length` keep one aligned chunk chosen at random (T5's
  select_random_chunk); `on_cut()`, if given, is called (in Python) for each one cut."""
  def cut(x, start):
    if on_cut is None:
      return x[start:start + max_length]
    with tf.control_dependencies([tf.py_function(lambda: on_cut() or True, [], tf.bool)]):
      return tf.identity(x[start:start + max_length])

  def chunk(x, s):
    n = tf.size(x)
    num = (n + max_length - 1) // max_length
    start = max_length * tf.random.stateless_uniform([], s, 0, tf.maximum(num, 1), tf.int32)
    return tf.cond(n > max_length, lambda: cut(x, start), lambda: x)
  return _example_seeds(ds, seed, salt).map(chunk)


def concat_and_split(ds, length: int, *, append_eos: bool = False,
                     within_documents: bool = False, docs_per_group: int = DOCS_PER_GROUP):
  """Concatenates groups of documents (optionally each followed by EOS) and splits the
  stream into pieces of `length` tokens; the shorter last piece of a group is kept. With
  `within_documents` each document is split on its own (its shorter last piece kept): no
  piece holds tokens of two documents.

  Worked example, length 3, documents [5 6 7 8] and [9 10]: concatenated, [5 6 7] [8 9 10];
  within documents, [5 6 7] [8] [9 10].
  """
  if append_eos:
    ds = ds.map(lambda x: tf.concat([x, [EOS]], 0))
  ds = ds.ragged_batch(docs_per_group)

  def split(batch):
    flat = batch.flat_values
    if within_documents:  # piece j of a document of n tokens: min(length, n - j * length)
      doc_lengths = tf.cast(batch.row_lengths(), tf.int64)
      piece_index = tf.ragged.range((doc_lengths + length - 1) // length)
      remaining = tf.gather(doc_lengths, piece_index.value_rowids()) - piece_index.flat_values * length
      return tf.RaggedTensor.from_row_lengths(flat, tf.minimum(remaining, length))
    n = tf.size(flat, out_type=tf.int64)
    full = n // length
    rem = n - full * length
    lengths = tf.concat([tf.fill([full], tf.constant(length, tf.int64)),
                         tf.reshape(rem, [1])[:tf.cast(rem > 0, tf.int32)]], 0)
    return tf.RaggedTensor.from_row_lengths(flat, lengths)

  return ds.map(split).unbatch()


# ---------------------------------------------------------------- objectives on datasets
def piece_length(objective: str, inputs_length: int, targets_length: int,
                 noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
  """Tokens per piece: what one example is made of before its EOS and noise."""
  return {'span_corruption': lambda: span_corruption_lengths(
              inputs_length, noise_density, mean_noise_span_length)[0],
          'mlm': lambda: inputs_length,
          'iid_noise': lambda: min(inputs_length, targets_length) - 1,
          'causal_lm': lambda: targets_length,
          'prefix_lm': lambda: min(inputs_length, targets_length),
          'text_to_text': lambda: 0}[objective]()  # records are not split


def pieces(ds, objective: str, length: int, *, seed=(0, 0), source: int = 0, on_cut=None):
  """Stage one (per source, before a mixture): token documents -> pieces of `length`
  tokens (`piece_length`); text_to_text records pass unchanged. `source` (its index in the
  mixture) gives each source its own random chunks."""
  if objective == 'text_to_text':
    return ds
  if objective in ('span_corruption', 'prefix_lm'):
    ds = ds.filter(lambda x: tf.size(x) > 0)
    ds = select_random_chunk(ds, seed, on_cut=on_cut, salt=101 + 1000 * source)
  return concat_and_split(ds, length, append_eos=objective in ('mlm', 'causal_lm'),
                          within_documents=objective == 'prefix_lm')


def span_corruption(ds, *, vocab_size: int, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0, seed=(0, 0)):
  """Pieces -> span-corrupted examples."""
  return _example_seeds(ds, seed, 1).map(
      lambda x, s: span_corrupt_example(x, vocab_size, noise_density, mean_noise_span_length, s),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def mlm_example(tokens, seed, *, special_mask, regular_ids, word_start_mask, mask_id: int,
                rate: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1,
                whole_word: bool = False):
  """BERT masking of one chunk -> {'inputs', 'targets', 'loss_weights'}.

  Each non-special position (each word, with `whole_word`) is selected with probability
  `rate`; a selected token becomes [MASK] (p mask_prob), a random regular token
  (p random_prob) or stays. `loss_weights` is 1 on exactly the selected positions.
  """
  tokens = tf.convert_to_tensor(tokens, tf.int32)
  n = tf.size(tokens)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  special = tf.gather(special_mask, tokens)
  if whole_word:
    starts = tf.logical_or(tf.gather(word_start_mask, tokens), tf.range(n) == 0)
    unit = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    picked = tf.random.stateless_uniform([n], seeds[0]) < rate
    selected = tf.gather(picked, unit)
  else:
    selected = tf.random.stateless_uniform([n], seeds[0]) < rate
  selected = tf.logical_and(selected, tf.logical_not(special))
  r = tf.random.stateless_uniform([n], seeds[1])
  random_tokens = tf.gather(regular_ids, tf.random.stateless_uniform(
      [n], seeds[2], 0, tf.size(regular_ids), tf.int32))
  inputs = tf.where(tf.logical_and(selected, r < mask_prob), mask_id,
                    tf.where(tf.logical_and(selected, r < mask_prob + random_prob), random_tokens, tokens))
  return {'inputs': inputs, 'targets': tokens, 'loss_weights': tf.cast(selected, tf.int32)}


def mlm(ds, *, vocab, rate: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1,
        whole_word: bool = False, seed=(0, 0)):
  """Pieces -> BERT MLM examples (masked, loss weights on the selected positions)."""
  special = tf.constant(vocab.special_mask)
  regular = tf.constant(vocab.regular_ids)
  word_start = tf.constant(vocab.word_start_mask)
  return _example_seeds(ds, seed, 2).map(
      lambda x, s: mlm_example(x, s, special_mask=special, regular_ids=regular,
                               word_start_mask=word_start, mask_id=vocab.mask_id, rate=rate,
                               mask_prob=mask_prob, random_prob=random_prob, whole_word=whole_word),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def iid_noise_example(tokens, seed, *, vocab_size: int, regular_ids, noise_density: float = 0.15,
                      random_prob: float = 0.1):
  """T5 BERT-style (iid_15_r10s90_f): iid noise; noise token -> random id (p random_prob)
  else <extra_id_0>; targets are the whole original chunk + EOS."""
  tokens = tf.convert_to_tensor(tokens, tf.int32)
  n = tf.size(tokens)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  noise = tf.random.stateless_uniform([n], seeds[0]) < noise_density
  use_random = tf.random.stateless_uniform([n], seeds[1]) < random_prob
  random_tokens = tf.gather(regular_ids, tf.random.stateless_uniform(
      [n], seeds[2], 0, tf.size(regular_ids), tf.int32))
  inputs = tf.where(noise, tf.where(use_random, random_tokens, vocab_size - 1), tokens)
  eos = tf.constant([EOS], tf.int32)
  return {'inputs': tf.concat([inputs, eos], 0), 'targets': tf.concat([tokens, eos], 0)}


def iid_noise(ds, *, vocab, noise_density: float = 0.15, random_prob: float = 0.1, seed=(0, 0)):
  """Pieces -> T5 BERT-style (iid noise) examples."""
  regular = tf.constant(vocab.regular_ids)
  return _example_seeds(ds, seed, 3).map(
      lambda x, s: iid_noise_example(x, s, vocab_size=vocab.vocab_size, regular_ids=regular,
                                     noise_density=noise_density, random_prob=random_prob),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def causal_lm(ds):
  """Pieces (EOS after each document, concatenated, split) -> {'targets'}."""
  return ds.map(lambda x: {'targets': x})


def prefix_lm_example(tokens, seed):
  """Split at k ~ U[1, L-1]: inputs = x[:k] + EOS, targets = x[k:] + EOS (L = 1: k = 1)."""
  tokens = tf.convert_to_tensor(tokens, tf.int32)
  n = tf.size(tokens)
  k = tf.random.stateless_uniform([], seed, 1, tf.maximum(n, 2), tf.int32)
  eos = tf.constant([EOS], tf.int32)
  return {'inputs': tf.concat([tokens[:k], eos], 0), 'targets': tf.concat([tokens[k:], eos], 0)}


def prefix_lm(ds, *, seed=(0, 0)):
  """Pieces -> prefix-LM examples."""
  return _example_seeds(ds, seed, 4).map(lambda x, s: prefix_lm_example(x, s))


def text_to_text(ds, *, inputs_length: int, targets_length: int):
  """(inputs ids, targets ids) records -> examples truncated to fit, EOS appended. Records
  that also carry the two texts as read keep them, untouched, as `inputs_pretokenized` and
  `targets_pretokenized` (`packing.TEXT_FEATURES`)."""
  eos = tf.constant([EOS], tf.int32)

  def example(i, t, *texts):
    ex = {'inputs': tf.concat([i[:inputs_length - 1], eos], 0),
          'targets': tf.concat([t[:targets_length - 1], eos], 0)}
    return {**ex, **dict(zip(('inputs_pretokenized', 'targets_pretokenized'), texts))}
  return ds.map(example)
