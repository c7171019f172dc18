"""Trim-and-pack and feature converters (docs/t5.md §3-4).

Owns: fitting variable-length examples into fixed-length rows and naming the result for
the model.

`trim_and_pack(ds, lengths)` truncates each listed feature to its length, then greedily
appends examples, in order, into one row while every feature still fits; otherwise it
emits the row (zero padded) and starts a new one. For each feature `f` it adds
`f_segment_ids` (1, 2, 3, ... per example, 0 on padding) and `f_positions` (0..len-1 inside
each example, 0 on padding). `pad_unpacked` gives the same keys for one example per row
(segment id 1), so batches have the same features whether packed or not.

Feature converters (on batches of rows, docs/design.md names; every feature int32):
  encoder_decoder: encoder_input_tokens, encoder_segment_ids, encoder_positions,
                   decoder_target_tokens, decoder_input_tokens (shifted right per segment),
                   decoder_loss_weights (targets != 0), decoder_segment_ids, decoder_positions
  decoder:         decoder_* as above; prefix LM adds decoder_causal_attention (1 on
                   the inputs + EOS + one more position of each example, seqio's convention)
                   and loss weights on target positions only
  encoder:         encoder_input_tokens, encoder_target_tokens, encoder_loss_weights
                   (the MLM selection), encoder_segment_ids, encoder_positions
"""
from __future__ import annotations

import tensorflow as tf


def trim_and_pack(ds: tf.data.Dataset, lengths: dict[str, int]) -> tf.data.Dataset:
  """Greedy trim-and-pack of dict examples into rows of `lengths` (see module doc).

  Works on finite and endless datasets: the last partial row of a finite one is emitted
  after its last example. State lives in a `scan`, so it checkpoints with the iterator.
  """
  keys = sorted(lengths)
  lens = {k: tf.constant(lengths[k], tf.int32) for k in keys}

  def trim(ex):
    return {k: ex[k][:lengths[k]] for k in keys}, tf.constant(False)

  flush = tf.data.Dataset.from_tensors(({k: tf.zeros([0], tf.int32) for k in keys}, tf.constant(True)))
  ds = ds.map(trim).concatenate(flush)

  def empty():
    z = {k: tf.zeros([lengths[k]], tf.int32) for k in keys}
    return dict(tok=z, seg=dict(z), pos=dict(z), fill={k: tf.constant(0, tf.int32) for k in keys},
                nseg=tf.constant(0, tf.int32))

  def step(state, inp):
    ex, is_flush = inp
    n = {k: tf.size(ex[k], tf.int32) for k in keys}
    fits = tf.logical_and(
        tf.reduce_all(tf.stack([state['fill'][k] + n[k] <= lens[k] for k in keys])),
        tf.logical_not(is_flush))
    emit = tf.logical_and(tf.logical_not(fits), state['nseg'] > 0)
    row = {}
    for k in keys:
      row[k] = state['tok'][k]
      row[k + '_segment_ids'] = state['seg'][k]
      row[k + '_positions'] = state['pos'][k]
    keep = tf.cast(fits, tf.int32)
    nseg = state['nseg'] * keep + 1
    new = dict(tok={}, seg={}, pos={}, fill={}, nseg=nseg)
    for k in keys:
      fill = state['fill'][k] * keep
      pad = [[fill, lens[k] - fill - n[k]]]
      new['tok'][k] = state['tok'][k] * keep + tf.pad(ex[k], pad)
      new['seg'][k] = state['seg'][k] * keep + tf.pad(tf.fill([n[k]], nseg), pad)
      new['pos'][k] = state['pos'][k] * keep + tf.pad(tf.range(n[k], dtype=tf.int32), pad)
      new['fill'][k] = fill + n[k]
    return new, (emit, row)

  def emitted(emit, row):
    del row
    return emit

  def row_of(emit, row):
    del emit
    return row

  return ds.scan(empty(), step).filter(emitted).map(row_of)


# Texts as read, carried beside the tokens of unpacked text-to-text rows when eval asks
# (`pipeline.get_dataset(keep_text=True)`): predictions are scored against these, not
# against the truncated targets decoded back from their ids.
TEXT_FEATURES = ('inputs_pretokenized', 'targets_pretokenized')


def with_texts(row: dict, features: dict) -> dict:
  """`features` plus the `TEXT_FEATURES` that `row` carries."""
  return {**features, **{k: row[k] for k in TEXT_FEATURES if k in row}}


def pad_unpacked(ds: tf.data.Dataset, lengths: dict[str, int]) -> tf.data.Dataset:
  """One example per row, truncated and zero padded, with segment id 1 and positions
  (and the example's `TEXT_FEATURES`, if it has them)."""
  def pad(ex):
    row = with_texts(ex, {})
    for k, length in lengths.items():
      x = ex[k][:length]
      n = tf.size(x)
      row[k] = tf.pad(x, [[0, length - n]])
      row[k + '_segment_ids'] = tf.pad(tf.ones([n], tf.int32), [[0, length - n]])
      row[k + '_positions'] = tf.pad(tf.range(n, dtype=tf.int32), [[0, length - n]])
      for f in (k, k + '_segment_ids', k + '_positions'):  # static: batches of an endless
        row[f] = tf.ensure_shape(row[f], [length])      # split are not padded afterwards
    return row
  return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def shift_right(targets, positions):
  """Decoder inputs: targets shifted right by one, 0 at each segment start and on padding
  (positions are 0 exactly there)."""
  shifted = tf.pad(targets, [[0, 0], [1, 0]])[:, :-1]
  return tf.where(positions == 0, tf.zeros_like(shifted), shifted)


def concat_for_decoder(ex):
  """Prefix-LM example for a decoder-only model: one sequence inputs + targets (each
  already ending in EOS), causal_attention 1 on the first len(inputs) + 1 positions,
  loss_weights 1 on the targets."""
  ni, nt = tf.size(ex['inputs']), tf.size(ex['targets'])
  n = ni + nt
  return with_texts(ex, {'targets': tf.concat([ex['inputs'], ex['targets']], 0),
                         'causal_attention': tf.cast(tf.range(n) < ni + 1, tf.int32),
                         'loss_weights': tf.cast(tf.range(n) >= ni, tf.int32)})


def encoder_decoder_features(row):
  return {
      'encoder_input_tokens': row['inputs'],
      'encoder_segment_ids': row['inputs_segment_ids'],
      'encoder_positions': row['inputs_positions'],
      **decoder_features(row),  # rows of this family have no causal_attention (and its texts)
  }


def decoder_features(row):
  targets = row['targets']
  out = {
      'decoder_target_tokens': targets,
      'decoder_input_tokens': shift_right(targets, row['targets_positions']),
      'decoder_loss_weights': tf.cast(targets != 0, tf.int32),
      'decoder_segment_ids': row['targets_segment_ids'],
      'decoder_positions': row['targets_positions'],
  }
  if 'causal_attention' in row:
    out['decoder_causal_attention'] = row['causal_attention']
    out['decoder_loss_weights'] = row['loss_weights'] * out['decoder_loss_weights']
  return with_texts(row, out)


def encoder_features(row):
  return {
      'encoder_input_tokens': row['inputs'],
      'encoder_target_tokens': row['targets'],
      'encoder_loss_weights': row['loss_weights'],
      'encoder_segment_ids': row['inputs_segment_ids'],
      'encoder_positions': row['inputs_positions'],
  }


CONVERTERS = {'encoder_decoder': encoder_decoder_features, 'decoder': decoder_features,
              'encoder': encoder_features}
