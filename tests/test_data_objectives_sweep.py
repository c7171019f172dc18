"""Sweeps of the data objectives and packing against docs/t5.md §1-4 and the public
references (t5.data.preprocessors, seqio feature converters), beyond the per-objective tests:
edge-case noise settings, every family x objective through the real pipeline on short
documents (the token stream is rebuilt exactly, packed or not), and pipeline-packed rows
through a real tiny model (each example's loss equals its loss alone)."""
import os

import numpy as np
import pytest

from data_helpers import EOS, data_config

import tensorflow as tf  # noqa: E402

from t5x_lite.data import objectives, pipeline  # noqa: E402

V = 1100  # shipped vocabulary: 1000 pieces + 100 sentinels


def _rebuild(inputs, targets, vocab_size=V, first_sentinel=1000):
  """The raw chunk from span-corrupted inputs and targets (both ending in EOS)."""
  spans, cur = {}, None
  for v in targets[:-1]:
    if v >= first_sentinel:
      cur = v
      spans[cur] = []
    else:
      spans[cur].append(v)
  out = []
  for v in inputs[:-1]:
    out.extend(spans[v] if v >= first_sentinel else [v])
  return out


@pytest.mark.parametrize('density,mean', [(0.5, 1.0), (0.9, 3.0), (0.15, 0.5), (0.6, 1.2)])
def test_dense_noise_or_short_spans_corrupt_every_chunk_length(density, mean):
  """A noise density / mean span the config accepts must corrupt every chunk length the
  helper can produce. T5's formula S = round(N / m) can ask for more spans than there are
  noise tokens (m < 1) or non-noise tokens (d >= 0.5): each span needs at least one of
  each, so the span count is capped at min(N, L - N) (it never binds at 0.15 / 3)."""
  raw, _ = objectives.span_corruption_lengths(48, density, mean)
  for length in range(1, raw + 1):
    x = np.arange(10, 10 + length, dtype=np.int32)
    ex = objectives.span_corrupt_example(x, V, density, mean, tf.constant([length, 3], tf.int64))
    i, t = ex['inputs'].numpy().tolist(), ex['targets'].numpy().tolist()
    n, s = (int(v) for v in objectives.noise_counts(length, density, mean))
    if length == 1:
      n = s = 0
    assert len(i) == length - n + s + 1 and len(t) == (n + s + 1 if n else 1), (length, n, s)
    assert [V - 1 - v for v in i if v >= 1000] == list(range(s))
    assert _rebuild(i, t) == x.tolist()
    assert len(i) <= 48


def test_dense_noise_config_that_validates_yields_batches():
  cfg = data_config(objective='span_corruption', inputs_length=32, targets_length=40,
                    noise_density=0.5, mean_noise_span_length=1.0, num_virtual_shards=1)
  b = next(pipeline.get_dataset(cfg, 'validation', batch_size=4))
  assert b['encoder_input_tokens'].shape == (4, 32) and (b['decoder_loss_weights'] > 0).any()


# ------------------------------------------------------------ every family x objective
def _short_docs(path, count=80, seed=0):
  """Documents of 1 to ~60 words (many of one or two) cut from the shipped corpus."""
  rng = np.random.default_rng(seed)
  words = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'data/corpus/validation.txt'), encoding='utf-8').read().split()
  docs = []
  for _ in range(count):
    n = int(rng.choice([1, 1, 2, 3, 5, 8, 20, 60]))
    s = int(rng.integers(0, len(words) - n))
    docs.append(' '.join(words[s:s + n]))
  path.write_text('\n\n'.join(docs) + '\n', encoding='utf-8')
  return docs


def _examples(b, family, objective):
  """Split converted rows back into (inputs, targets, extra) per example by segment id."""
  out = []
  if family == 'encoder':
    for r, s in enumerate(b['encoder_segment_ids']):
      for k in range(1, s.max() + 1):
        m = s == k
        out.append((b['encoder_input_tokens'][r][m], b['encoder_target_tokens'][r][m],
                    b['encoder_loss_weights'][r][m]))
  elif family == 'decoder':
    for r, s in enumerate(b['decoder_segment_ids']):
      for k in range(1, s.max() + 1):
        m = s == k
        t = b['decoder_target_tokens'][r][m]
        if objective == 'causal_lm':
          out.append((None, t, None))
          continue
        w, c = b['decoder_loss_weights'][r][m], b['decoder_causal_attention'][r][m]
        n_in = int(np.argmax(w > 0))                 # loss only on the targets part
        assert t[n_in - 1] == EOS and (w[n_in:] == 1).all()
        assert c.tolist() == [1] * (n_in + 1) + [0] * (len(t) - n_in - 1)
        out.append((t[:n_in], t[n_in:], None))
  else:
    for r, (se, sd) in enumerate(zip(b['encoder_segment_ids'], b['decoder_segment_ids'])):
      assert se.max() == sd.max()
      for k in range(1, sd.max() + 1):
        out.append((b['encoder_input_tokens'][r][se == k], b['decoder_target_tokens'][r][sd == k],
                    None))
  return out


CASES = [('encoder_decoder', 'span_corruption', 16, 8), ('encoder_decoder', 'prefix_lm', 16, 8),
         ('encoder_decoder', 'iid_noise', 16, 12), ('decoder', 'causal_lm', 16, 16),
         ('decoder', 'prefix_lm', 8, 8), ('decoder', 'span_corruption', 16, 8),
         ('decoder', 'iid_noise', 8, 8), ('encoder', 'mlm', 16, 16)]


UNPACKED = {('encoder_decoder', 'span_corruption'), ('decoder', 'prefix_lm'), ('encoder', 'mlm')}


@pytest.mark.parametrize('pack', [True, False])
def test_every_family_and_objective_rebuilds_the_stream_of_short_documents(tmp_path, pack):
  """Documents of one token up: every objective's examples, split out of the packed (or
  padded) rows by segment id, give back the tokenized corpus exactly (EOS between documents
  for causal LM and MLM); nothing is dropped, cut or duplicated."""
  from t5x_lite.data import vocab as vocab_lib
  docs = _short_docs(tmp_path / 'docs.txt')
  vocab = vocab_lib.Vocabulary('data/vocab/shakespeare_1k.model')
  ids = [t for t in vocab.encode_batch(docs) if t]
  flat = np.concatenate([np.array(t, np.int32) for t in ids])
  flat_eos = np.concatenate([np.array(t + [EOS], np.int32) for t in ids])
  for family, objective, il, tl in CASES:
    if not pack and (family, objective) not in UNPACKED:
      continue
    cfg = data_config(objective=objective, inputs_length=il, targets_length=tl, pack=pack,
                      num_virtual_shards=1, validation_source=f'text:{tmp_path}/docs.txt')
    cfg.model.family = family
    exs = [e for b in pipeline.get_dataset(cfg, 'validation', batch_size=16)
           for e in _examples(b, family, objective)]
    what = (family, objective, pack)
    if objective in ('causal_lm', 'mlm'):
      got, want = np.concatenate([t for _, t, _ in exs]), flat_eos
      if objective == 'mlm':
        changed = np.concatenate([i != t for i, t, _ in exs])
        weights = np.concatenate([w for _, _, w in exs])
        assert (weights[changed] == 1).all() and (weights[got == EOS] == 0).all(), what
    elif objective == 'iid_noise':
      assert all(len(i) == len(t) and i[-1] == t[-1] == EOS for i, t, _ in exs), what
      got, want = np.concatenate([t[:-1] for _, t, _ in exs]), flat
    elif objective == 'prefix_lm':
      assert all(i[-1] == t[-1] == EOS and len(i) >= 2 for i, t, _ in exs), what
      got, want = np.concatenate([np.concatenate([i[:-1], t[:-1]]) for i, t, _ in exs]), flat
    else:
      assert all(i[-1] == t[-1] == EOS for i, t, _ in exs), what
      got = np.array([v for i, t, _ in exs for v in _rebuild(list(i), list(t), vocab.vocab_size,
                                                             vocab.piece_size)])
      want = flat
    assert len(got) == len(want), (what, len(got), len(want))
    np.testing.assert_array_equal(got, want, err_msg=str(what))


# ------------------------------------------------------------ packed rows through a model
def test_pipeline_packed_prefix_lm_rows_give_each_example_its_loss_alone():
  """docs/t5.md §4's test that matters, on the data side's own rows: prefix-LM examples
  (inputs + EOS + targets + EOS, bidirectional prefix) packed by `trim_and_pack` and
  converted by `decoder_features`, run through a tiny T5 decoder-only model, give every
  example the summed loss and weight it gets padded alone (`pad_unpacked`)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import random_params
  from tiny_run import tiny_config
  from t5x_lite import models
  from t5x_lite.data import packing

  rng = np.random.default_rng(0)
  examples = [dict(inputs=rng.integers(3, 1000, a).tolist() + [EOS],
                   targets=rng.integers(3, 1000, b).tolist() + [EOS])
              for a, b in rng.integers(1, 10, (10, 2))]
  lengths = {'targets': 40, 'causal_attention': 40, 'loss_weights': 40}
  module = models.build(tiny_config('t5_decoder').model)
  per_example = {}
  for pack in (True, False):
    ds = tf.data.Dataset.from_generator(
        lambda: ({k: np.array(v, np.int32) for k, v in e.items()} for e in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ('inputs', 'targets')})
    ds = ds.map(packing.concat_for_decoder)
    ds = packing.trim_and_pack(ds, lengths) if pack else packing.pad_unpacked(ds, lengths)
    b = next(ds.batch(100).map(packing.decoder_features).as_numpy_iterator())
    batch = {k: jnp.asarray(v) for k, v in b.items()}
    with jax.default_device(jax.devices('cpu')[0]):
      if pack:
        abstract = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), batch))['params']
        params = jax.tree.map(jnp.asarray, random_params.random_params(abstract, 0))
      logp = np.asarray(jax.nn.log_softmax(module.apply({'params': params}, batch)))
    tgt, w, seg = b['decoder_target_tokens'], b['decoder_loss_weights'], b['decoder_segment_ids']
    nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0] * w
    assert (seg.max(1) >= 2).any() if pack else (seg.max(1) == 1).all()
    per_example[pack] = np.array([(nll[r][seg[r] == k].sum(), w[r][seg[r] == k].sum())
                                  for r in range(len(tgt)) for k in range(1, seg[r].max() + 1)])
  assert len(per_example[True]) == len(examples) and seg.shape[0] == len(examples)
  assert (per_example[True][:, 1] == [len(e['targets']) for e in examples]).all()
  np.testing.assert_allclose(per_example[True], per_example[False], rtol=1e-5, atol=1e-4)
