"""Trim-and-pack and feature converters (docs/t5.md §3-4, §7.8)."""
import numpy as np
import pytest

from data_helpers import EOS, data_config, segments, strip_pad

import tensorflow as tf  # noqa: E402

from t5x_lite.data import packing, pipeline  # noqa: E402


def _one_stream(cfg):
  """Objective tests read one pass in file order: a single virtual shard."""
  cfg.data.num_virtual_shards = 1
  return cfg


def _ds(examples):
  def gen():
    for ex in examples:
      yield {k: np.array(v, np.int32) for k, v in ex.items()}
  keys = examples[0].keys()
  return tf.data.Dataset.from_generator(gen, output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})


def _pack_and_convert(examples, lengths, converter, prefix_lm=False):
  ds = _ds(examples)
  if prefix_lm:
    ds = ds.map(packing.concat_for_decoder)
  rows = packing.trim_and_pack(ds, lengths).batch(100).map(converter)
  return next(rows.as_numpy_iterator())


def test_reference_example_shift_right_per_segment():
  # §4: targets [3 8 1 9 1 5 4 1 0 0], ids [1 1 1 2 2 3 3 3 0 0] -> [0 3 8 0 9 0 5 4 0 0].
  ex = [dict(inputs=[7, 1], targets=[3, 8, 1]), dict(inputs=[6, 1], targets=[9, 1]),
        dict(inputs=[5, 1], targets=[5, 4, 1])]
  b = _pack_and_convert(ex, {'inputs': 10, 'targets': 10}, packing.encoder_decoder_features)
  assert b['decoder_target_tokens'].tolist() == [[3, 8, 1, 9, 1, 5, 4, 1, 0, 0]]
  assert b['decoder_segment_ids'].tolist() == [[1, 1, 1, 2, 2, 3, 3, 3, 0, 0]]
  assert b['decoder_input_tokens'].tolist() == [[0, 3, 8, 0, 9, 0, 5, 4, 0, 0]]
  assert b['decoder_positions'].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 0, 0]]
  assert b['decoder_loss_weights'].tolist() == [[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]
  assert b['encoder_input_tokens'].tolist() == [[7, 1, 6, 1, 5, 1, 0, 0, 0, 0]]
  assert b['encoder_segment_ids'].tolist() == [[1, 1, 2, 2, 3, 3, 0, 0, 0, 0]]
  assert b['encoder_positions'].tolist() == [[0, 1, 0, 1, 0, 1, 0, 0, 0, 0]]


def test_greedy_trim_and_pack_by_hand():
  ex = [dict(inputs=[2, 1], targets=[3, 1]),
        dict(inputs=[4, 5, 1], targets=[6, 1]),          # fits beside the first: 5/5, 4/4
        dict(inputs=[7, 1], targets=[8, 9, 1]),          # does not fit: new row
        dict(inputs=[10, 11, 12, 13, 14, 15, 1], targets=[16, 1])]  # trimmed to 5: new row
  rows = list(packing.trim_and_pack(_ds(ex), {'inputs': 5, 'targets': 4}).as_numpy_iterator())
  assert [r['inputs'].tolist() for r in rows] == [[2, 1, 4, 5, 1], [7, 1, 0, 0, 0], [10, 11, 12, 13, 14]]
  assert [r['targets'].tolist() for r in rows] == [[3, 1, 6, 1], [8, 9, 1, 0], [16, 1, 0, 0]]
  assert [r['inputs_segment_ids'].tolist() for r in rows] == [[1, 1, 2, 2, 2], [1, 1, 0, 0, 0], [1] * 5]
  assert [r['targets_positions'].tolist() for r in rows] == [[0, 1, 0, 1], [0, 1, 2, 0], [0, 1, 0, 0]]


def test_seqio_prefix_lm_decoder_examples():
  # seqio PrefixLMFeatureConverter, packed example: the bidirectional region is inputs (EOS
  # included) plus one position, so the page's "first len(inputs)+1" counts inputs with EOS.
  ex = [dict(inputs=[7, 8, 5, 1], targets=[3, 9, 1]), dict(inputs=[8, 4, 9, 3, 1], targets=[4, 1])]
  n = 15
  b = _pack_and_convert(ex, {'targets': n, 'causal_attention': n, 'loss_weights': n},
                        packing.decoder_features, prefix_lm=True)
  assert b['decoder_target_tokens'].tolist() == [[7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0]]
  assert b['decoder_input_tokens'].tolist() == [[0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0]]
  assert b['decoder_loss_weights'].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]]
  assert b['decoder_positions'].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0]]
  assert b['decoder_segment_ids'].tolist() == [[1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0]]
  assert b['decoder_causal_attention'].tolist() == [[1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]]
  # Unpacked example: identical except that seqio's plain shift leaves the final EOS at the
  # first padding position ([0 9 4 6 1 3 9 1 0]); here padding is always 0, as in the
  # page's packed example (the position has no loss and no attention either way).
  ex = [dict(inputs=[9, 4, 6, 1], targets=[3, 9, 1])]
  ds = _ds(ex).map(packing.concat_for_decoder)
  b = next(packing.pad_unpacked(ds, {'targets': 9, 'causal_attention': 9, 'loss_weights': 9})
           .batch(1).map(packing.decoder_features).as_numpy_iterator())
  assert b['decoder_target_tokens'].tolist() == [[9, 4, 6, 1, 3, 9, 1, 0, 0]]
  assert b['decoder_input_tokens'].tolist() == [[0, 9, 4, 6, 1, 3, 9, 0, 0]]
  assert b['decoder_loss_weights'].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0]]
  assert b['decoder_causal_attention'].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0, 0]]


def check_packed(b, encoder=True):
  """§7.8 on a batch of converted rows."""
  sides = (['encoder', 'decoder'] if encoder else ['decoder'])
  for side in sides:
    seg, pos = b[f'{side}_segment_ids'], b[f'{side}_positions']
    tok = b[f'{side}_input_tokens'] if side == 'encoder' else b['decoder_target_tokens']
    for s, p, t in zip(seg, pos, tok):
      assert (np.diff(s[s > 0]) >= 0).all()                    # non-decreasing
      assert ((s == 0) == (t == 0)).all()                      # 0 exactly on padding
      n = int((s > 0).sum())
      assert (s[n:] == 0).all() and (p[n:] == 0).all()         # padding only at the end
      assert (np.diff(s[:n]) <= 1).all() and (s[0] == 1 or n == 0)
      for k in range(1, s.max() + 1):                          # positions reset per segment
        np.testing.assert_array_equal(p[s == k], np.arange((s == k).sum()))
  if encoder:
    np.testing.assert_array_equal(b['encoder_segment_ids'].max(1), b['decoder_segment_ids'].max(1))
  real = b['decoder_target_tokens'] != 0
  if 'decoder_causal_attention' in b:
    # Prefix LM: the bidirectional region covers inputs + EOS plus the first target position
    # (seqio's convention), so a position is an input exactly when it and the next position
    # of the same segment are both in that region; loss weights are on the rest.
    dca, seg = b['decoder_causal_attention'] > 0, b['decoder_segment_ids']
    next_dca = np.concatenate([dca[:, 1:], np.zeros_like(dca[:, :1])], axis=1)
    next_seg = np.concatenate([seg[:, 1:], np.zeros_like(seg[:, :1])], axis=1)
    real &= ~(dca & next_dca & (next_seg == seg))
  np.testing.assert_array_equal(b['decoder_loss_weights'] > 0, real)
  # Decoder inputs: shifted right inside each segment, 0 at segment starts.
  for t, i, s in zip(b['decoder_target_tokens'], b['decoder_input_tokens'], b['decoder_segment_ids']):
    for k in range(1, s.max() + 1):
      seg_t, seg_i = t[s == k], i[s == k]
      assert seg_i[0] == 0
      np.testing.assert_array_equal(seg_i[1:], seg_t[:-1])
    assert (i[s == 0] == 0).all()


@pytest.mark.parametrize('objective,il,tl', [('span_corruption', 128, 30), ('prefix_lm', 64, 64),
                                             ('text_to_text', 64, 16)])
def test_packed_invariants_and_split_recovers_examples(objective, il, tl):
  source = {}
  if objective == 'text_to_text':
    source = dict(train_source='jsonl:data/tasks/speaker/train.jsonl',
                  validation_source='jsonl:data/tasks/speaker/validation.jsonl')
  packed_cfg = _one_stream(data_config(objective=objective, inputs_length=il, targets_length=tl, pack=True, **source))
  plain_cfg = data_config(objective=objective, inputs_length=il, targets_length=tl, pack=False, **source)
  it = pipeline.get_dataset(packed_cfg, 'validation', batch_size=64)
  batches = [next(it) for _ in range(4)]
  b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
  check_packed(b)
  if objective != 'span_corruption':  # (span corruption chunks nearly fill a row by design)
    assert b['encoder_segment_ids'].max() >= 2                 # rows really hold several examples
  # Splitting the packed rows by segment gives back the unpacked examples, in order.
  plain, _ = pipeline.build_dataset(_one_stream(plain_cfg), 'validation')
  got_in = [x for r, s in zip(b['encoder_input_tokens'], b['encoder_segment_ids']) for x in segments(r, s)]
  got_tg = [x for r, s in zip(b['decoder_target_tokens'], b['decoder_segment_ids']) for x in segments(r, s)]
  plain = list(plain.take(len(got_in)).as_numpy_iterator())   # the same examples, in order
  assert len(got_in) == len(got_tg) == len(plain) >= 256
  for gi, gt, ex in zip(got_in, got_tg, plain):
    np.testing.assert_array_equal(gi, strip_pad(ex['inputs']))
    np.testing.assert_array_equal(gt, strip_pad(ex['targets']))
    assert gi[-1] == EOS and gt[-1] == EOS


def test_unpacked_rows_fill_segment_ids_and_positions():
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=30, pack=False)
  b = next(pipeline.get_dataset(cfg, 'validation', batch_size=16))
  check_packed(b)
  assert b['encoder_segment_ids'].max() == 1 and b['decoder_segment_ids'].min() == 0


def test_decoder_causal_lm_features():
  cfg = data_config(objective='causal_lm', inputs_length=64, targets_length=64, pack=True)
  cfg.model.family = 'decoder'
  b = next(pipeline.get_dataset(cfg, 'validation', batch_size=16))
  assert set(b) == {'decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights',
                    'decoder_segment_ids', 'decoder_positions'}
  assert b['decoder_target_tokens'].shape == (16, 64)
  check_packed(b, encoder=False)
  np.testing.assert_array_equal(b['decoder_loss_weights'], b['decoder_target_tokens'] != 0)
  assert (b['decoder_target_tokens'] == EOS).sum() > 16       # EOS after every document


def test_decoder_prefix_lm_features():
  cfg = data_config(objective='prefix_lm', inputs_length=32, targets_length=32, pack=True)
  cfg.model.family = 'decoder'
  b = next(pipeline.get_dataset(cfg, 'validation', batch_size=16))
  assert b['decoder_target_tokens'].shape == (16, 64)
  check_packed(b, encoder=False)
  for t, w, c, s in zip(b['decoder_target_tokens'], b['decoder_loss_weights'],
                        b['decoder_causal_attention'], b['decoder_segment_ids']):
    for k in range(1, s.max() + 1):
      tt, ww, cc = t[s == k], w[s == k], c[s == k]
      n_in = int(np.argmax(tt == EOS)) + 1                     # inputs end at the first EOS
      assert tt[-1] == EOS and n_in < len(tt)
      assert cc.tolist() == [1] * (n_in + 1) + [0] * (len(tt) - n_in - 1)
      assert ww.tolist() == [0] * n_in + [1] * (len(tt) - n_in)
    assert (c[s == 0] == 0).all() and (w[s == 0] == 0).all()
