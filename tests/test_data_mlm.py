"""Masked-LM objectives (docs/t5.md §2): BERT 80/10/10 and T5's iid-noise BERT style."""
import os

import numpy as np
import pytest

from data_helpers import EOS, ROOT, blank_line_documents, data_config

import tensorflow as tf  # noqa: E402

from t5x_lite.data import objectives, pipeline, vocab as vocab_lib  # noqa: E402


@pytest.fixture(scope='module')
def vocab():
  return vocab_lib.Vocabulary(os.path.join(ROOT, 'data/vocab/shakespeare_1k.model'), extra_ids=100)


def _one_stream(cfg):
  """Objective tests read one pass in file order: a single virtual shard."""
  cfg.data.num_virtual_shards = 1
  return cfg


def _special_ids(vocab):
  # pad 0, eos 1, unk 2, [MASK] 3 (control piece), sentinels at the top.
  return {0, 1, 2, 3} | set(range(vocab.piece_size, vocab.vocab_size))


def _rows(cfg, split='validation'):
  ds, _ = pipeline.build_dataset(_one_stream(cfg), split)
  return next(ds.batch(100000).as_numpy_iterator())


def _within(value, p, n, sigmas=5.0):
  return abs(value - p) <= sigmas * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope='module')
def mlm_rows():
  cfg = data_config(objective='mlm', inputs_length=128, pack=True)
  cfg.model.family = 'encoder'
  return _rows(cfg)


def test_mask_token_layout(vocab):
  assert vocab.mask_id == 3 and vocab.id_to_piece(3) == '[MASK]'
  assert vocab.sentinel(0) == vocab.vocab_size - 1 == 1099


def test_selection_rate_and_80_10_10(mlm_rows):
  x, inp, w = mlm_rows['targets'], mlm_rows['inputs'], mlm_rows['loss_weights']
  real = mlm_rows['inputs_segment_ids'] > 0
  candidates = real & (x > 3)               # non-special positions (the corpus has no sentinels)
  n = int(candidates.sum())
  assert n > 60000
  selected = w == 1
  frac = selected.sum() / n
  assert _within(frac, 0.15, n), frac
  k = int(selected.sum())
  masked = (inp == 3) & selected
  changed = (inp != x) & (inp != 3) & selected
  kept = (inp == x) & selected
  assert _within(masked.sum() / k, 0.8, k), masked.sum() / k
  # A random token equals the original with probability ~1/996: inside the tolerance.
  assert _within(changed.sum() / k, 0.1, k), changed.sum() / k
  assert _within(kept.sum() / k, 0.1, k), kept.sum() / k


def test_loss_weights_are_exactly_the_selected_positions(mlm_rows):
  x, inp, w = mlm_rows['targets'], mlm_rows['inputs'], mlm_rows['loss_weights']
  # Every changed position carries weight; unweighted positions are untouched.
  assert (w[inp != x] == 1).all()
  assert (inp[w == 0] == x[w == 0]).all()
  # The unchanged 10% keep their weight too (weights are not `inputs == mask_id`).
  assert ((w == 1) & (inp == x)).sum() > 0
  assert ((w == 1) & (inp != 3)).sum() > 0.15 * (w == 1).sum()
  # Through the encoder feature converter the weights are the same positions.
  cfg = _one_stream(data_config(objective='mlm', inputs_length=128, pack=True))
  cfg.model.family = 'encoder'
  it = pipeline.get_dataset(cfg, 'validation', batch_size=8)
  b = next(it)
  assert set(b) == {'encoder_input_tokens', 'encoder_target_tokens', 'encoder_loss_weights',
                    'encoder_segment_ids', 'encoder_positions'}
  np.testing.assert_array_equal(b['encoder_loss_weights'], mlm_rows['loss_weights'][:8])
  np.testing.assert_array_equal(b['encoder_input_tokens'], mlm_rows['inputs'][:8])


def test_special_tokens_are_never_selected(mlm_rows, vocab):
  x, inp, w = mlm_rows['targets'], mlm_rows['inputs'], mlm_rows['loss_weights']
  special = np.isin(x, list(_special_ids(vocab)))
  assert (x == EOS).sum() > 100                 # documents are separated by EOS
  assert (w[special] == 0).all() and (inp[special] == x[special]).all()
  # Random replacements are never special tokens.
  assert not np.isin(inp[(inp != x) & (inp != 3)], list(_special_ids(vocab))).any()
  # A chunk made of special tokens only (pad aside) selects nothing, whatever the seed.
  tokens = tf.constant([1, 2, 3, 1099, 1050, 1000, 1] * 50, tf.int32)
  for s in range(20):
    ex = objectives.mlm_example(tokens, tf.constant([s, 1], tf.int64),
                                special_mask=vocab.special_mask, regular_ids=vocab.regular_ids,
                                word_start_mask=vocab.word_start_mask, mask_id=3, rate=0.5)
    assert ex['loss_weights'].numpy().sum() == 0
    np.testing.assert_array_equal(ex['inputs'].numpy(), tokens.numpy())


def test_whole_word_masking_selects_whole_words(vocab):
  cfg = data_config(objective='mlm', inputs_length=128, pack=False, mlm_whole_word=True)
  cfg.model.family = 'encoder'
  rows = _rows(cfg)
  x, w = rows['targets'], rows['loss_weights']
  starts = vocab.word_start_mask[x]
  n_words = n_split = 0
  for xi, wi, si, seg in zip(x, w, starts, rows['inputs_segment_ids']):
    word = np.cumsum(si | (np.arange(len(xi)) == 0))
    for k in np.unique(word[(seg > 0) & (xi > 3)]):
      ww = wi[(word == k) & (xi > 3)]
      n_words += 1
      n_split += int(0 < ww.sum() < len(ww))
  assert n_words > 20000 and n_split == 0
  real = (rows['inputs_segment_ids'] > 0) & (x > 3)
  assert 0.10 < w[real].mean() < 0.20


def test_t5_iid_noise_bert_style(vocab):
  cfg = data_config(objective='iid_noise', inputs_length=128, targets_length=128, pack=False)
  rows = _rows(cfg)
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))
  stream = np.concatenate([np.array(t, np.int32) for t in vocab.encode_batch(docs)])
  inp, tgt = rows['inputs'], rows['targets']
  # Targets are the whole original chunk + EOS: together they rebuild the token stream.
  pieces = [t[t != 0] for t in tgt]
  assert all(p[-1] == EOS for p in pieces) and all(len(p) <= 128 for p in pieces)
  np.testing.assert_array_equal(np.concatenate([p[:-1] for p in pieces]), stream)
  # Inputs have the same length; ~15% of tokens are noise, 90% of those <extra_id_0>.
  assert ((inp != 0) == (tgt != 0)).all()
  real = (tgt > 1)
  noise = real & (inp != tgt)
  n = int(real.sum())
  sentinel = noise & (inp == vocab.sentinel(0))
  assert _within(noise.sum() / n, 0.15 * (1 - 0.1 / len(vocab.regular_ids)), n)
  assert _within(sentinel.sum() / noise.sum(), 0.9, int(noise.sum()))
  assert not np.isin(inp[noise & ~sentinel], list(_special_ids(vocab))).any()
  assert (inp[tgt == EOS] == EOS).all()


@pytest.mark.parametrize('objective,selected', [
    ('mlm', lambda r: r['loss_weights'] == 1),
    ('iid_noise', lambda r: r['inputs'] != r['targets']),
])
def test_rows_get_distinct_masks_and_even_per_position_rates(objective, selected):
  """Every example has its own seed: full-length rows never share a selection pattern, and
  the selection rate is the same at every position (no position favoured)."""
  cfg = data_config(objective=objective, inputs_length=128, targets_length=128, pack=False)
  if objective == 'mlm':
    cfg.model.family = 'encoder'
  rows = _rows(cfg)
  # Positions that can be selected (not special): MLM skips EOS / pad, iid noise only pad.
  candidate = rows['targets'] > (3 if objective == 'mlm' else 1)
  picked, candidate = selected(rows)[:, :120], candidate[:, :120]
  long_rows = candidate.sum(axis=1) >= 100
  assert long_rows.sum() > 200
  assert len({p.tobytes() for p in picked[long_rows]}) == long_rows.sum()
  rate = 0.15 * (1 - 0.1 / 996) if objective == 'iid_noise' else 0.15
  # 8 bins of 15 positions: each bin's rate within 5 sigma of the configured rate.
  for b in range(8):
    part = slice(15 * b, 15 * b + 15)
    n = int(candidate[:, part].sum())
    assert _within(picked[:, part][candidate[:, part]].mean(), rate, n), b
