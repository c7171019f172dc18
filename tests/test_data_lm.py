"""Causal and prefix LM (docs/t5.md §3), and long-document chunking (§1 step 2)."""
import collections
import os

import numpy as np

from data_helpers import EOS, ROOT, blank_line_documents, data_config, segments

import tensorflow as tf  # noqa: E402

from t5x_lite.data import objectives, pipeline, vocab as vocab_lib  # noqa: E402


def test_prefix_lm_split_point_is_uniform_in_1_to_L_minus_1():
  x = tf.range(10, 20, dtype=tf.int32)                 # L = 10
  ks = collections.Counter()
  for s in range(900):
    ex = objectives.prefix_lm_example(x, tf.constant([s, 5], tf.int64))
    i, t = ex['inputs'].numpy(), ex['targets'].numpy()
    assert i[-1] == EOS and t[-1] == EOS
    np.testing.assert_array_equal(np.concatenate([i[:-1], t[:-1]]), x.numpy())
    ks[len(i) - 1] += 1
  assert sorted(ks) == list(range(1, 10))
  assert all(abs(c - 100) < 45 for c in ks.values()), ks
  ex = objectives.prefix_lm_example(tf.constant([42], tf.int32), tf.constant([0, 0], tf.int64))
  assert ex['inputs'].numpy().tolist() == [42, EOS] and ex['targets'].numpy().tolist() == [EOS]


def test_causal_lm_is_documents_with_eos_concatenated_and_split():
  vocab = vocab_lib.Vocabulary(os.path.join(ROOT, 'data/vocab/shakespeare_1k.model'))
  cfg = data_config(objective='causal_lm', targets_length=64, pack=True, num_virtual_shards=1)
  cfg.model.family = 'decoder'
  got = []
  for b in pipeline.get_dataset(cfg, 'validation', batch_size=64):
    got.extend(x for r, s in zip(b['decoder_target_tokens'], b['decoder_segment_ids']) for x in segments(r, s))
  assert all(len(g) <= 64 for g in got) and sum(len(g) == 64 for g in got) > 0.9 * len(got)
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))
  expected = np.concatenate([np.array(t + [EOS], np.int32) for t in vocab.encode_batch(docs)])
  np.testing.assert_array_equal(np.concatenate(got), expected)


def test_documents_longer_than_65536_tokens_keep_one_aligned_chunk():
  long_doc = tf.range(1, 150001, dtype=tf.int32)
  short_doc = tf.range(1, 1001, dtype=tf.int32)
  ds = tf.data.Dataset.from_tensors(long_doc).repeat(40).concatenate(tf.data.Dataset.from_tensors(short_doc))
  out = list(objectives.select_random_chunk(ds, (0, 0)).as_numpy_iterator())
  starts = collections.Counter()
  for c in out[:-1]:
    assert c[0] - 1 in (0, 65536, 131072)
    assert len(c) == (18928 if c[0] == 131073 else 65536)
    np.testing.assert_array_equal(c, np.arange(c[0], c[0] + len(c)))
    starts[int(c[0]) - 1] += 1
  assert len(starts) == 3                               # every aligned chunk can be chosen
  np.testing.assert_array_equal(out[-1], short_doc.numpy())


def test_prefix_lm_examples_each_come_from_one_document():
  """T5's prefix_lm splits each document on its own (no reduce_concat_tokens): an example's
  inputs + targets are exactly one document's next chunk of min(inputs_length,
  targets_length) tokens, its last chunk shorter. (Pieces were cut from 128 documents
  concatenated without a separator, so an example's targets ran on into another document.)"""
  vocab = vocab_lib.Vocabulary(os.path.join(ROOT, 'data/vocab/shakespeare_1k.model'))
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))
  for family, il, tl in (('encoder_decoder', 16, 12), ('decoder', 10, 10)):
    cfg = data_config(objective='prefix_lm', inputs_length=il, targets_length=tl, pack=True,
                      num_virtual_shards=1)
    cfg.model.family = family
    length = min(il, tl)
    want = [t[j:j + length] for t in vocab.encode_batch(docs) for j in range(0, len(t), length)]
    got = []
    for b in pipeline.get_dataset(cfg, 'validation', batch_size=64):
      if family == 'decoder':
        rows = zip(b['decoder_target_tokens'], b['decoder_segment_ids'],
                   b['decoder_loss_weights'])
        for r, s, w in rows:
          for k in range(1, int(s.max()) + 1):
            t, n_in = r[s == k], int(np.argmax(w[s == k] > 0))
            got.append(t[:n_in - 1].tolist() + t[n_in:-1].tolist())
      else:
        for ri, rt, si, st in zip(b['encoder_input_tokens'], b['decoder_target_tokens'],
                                  b['encoder_segment_ids'], b['decoder_segment_ids']):
          got.extend(i[:-1].tolist() + t[:-1].tolist()
                     for i, t in zip(segments(ri, si), segments(rt, st)))
    assert got == want, (family, next((g, w) for g, w in zip(got, want) if g != w))
