"""Model-level equivalences for the three families (tiny configs, CPU).

- packing: logits of each segment of a hand-packed row equal the logits of that example alone;
- KV cache: prefill + one-token-at-a-time decoding equals the full forward pass;
- scan_layers / remat: the same parameters (stacked / unstacked) give the same logits;
- bfloat16 activations stay close to float32, and logits stay float32;
- a bad `config.model` fails in `models.build` with a ValueError naming the field.

Parameters are random (numpy) rather than the models' own init, so that biases, norm scales
and every table are non-trivial and the comparisons are not blunted by tiny logits.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import random_params as random_params_lib
import tiny_run
from t5x_lite import families, models

FOUR_HEADS = dict(vocab_size=128, num_heads=4, d_kv=8)
ATOL, RTOL = 1e-5, 0


@pytest.fixture(autouse=True, scope='module')
def on_cpu():
  """Exact-equivalence tolerances assume CPU float32 (no TF32 matmuls on a GPU host)."""
  with jax.default_device(jax.devices('cpu')[0]):
    yield


def tiny_config(name, **overrides):
  return tiny_run.tiny_config(name, **{**FOUR_HEADS, **overrides}).model


def random_params(module, batch, seed=0):
  """Random float32 params with the structure of `module.init` (nothing is compiled)."""
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), batch))['params']
  return jax.tree.map(jnp.asarray, random_params_lib.random_params(abstract, seed))


@functools.lru_cache(maxsize=None)
def _forward(name, overrides=()):
  module = models.build(tiny_config(name, **dict(overrides)))
  return module, jax.jit(lambda p, b: module.apply({'params': p}, b, deterministic=True))


def forward(name, params, batch, **overrides):
  _, fn = _forward(name, tuple(sorted(overrides.items())))
  return np.asarray(fn(params, batch))


@functools.lru_cache(maxsize=None)
def params_for(name):
  module = models.build(tiny_config(name))
  return random_params(module, families.dummy_batch(module.cfg.family),
                       seed=sorted(tiny_run.CONFIGS).index(name))


def random_tokens(rng, n):
  return rng.integers(2, 128, size=n).astype(np.int32)


# --------------------------------------------------------------------------- packing
def shift_right(targets):
  return np.concatenate([[0], targets[:-1]]).astype(np.int32)


def pad(x, length):
  return np.pad(np.asarray(x, np.int32), (0, length - len(x)))


def pack_and_pad(examples, lengths):
  """Reference section 4 by hand.

  `examples`: list of dicts feature -> 1-D array (decoder_input_tokens already shifted right
  within the example). `lengths`: {'encoder': n, 'decoder': n} row lengths per side.
  Returns (packed batch of one row with *_segment_ids / *_positions, unpacked batch with one
  zero-padded example per row and no segment ids / positions, {side: [(start, len), ...]}).
  """
  packed, alone, spans = {}, {}, {}
  features = examples[0].keys()
  for feature in features:
    side = feature.split('_')[0]
    length = lengths[side]
    packed[feature] = pad(np.concatenate([ex[feature] for ex in examples]), length)[None]
    alone[feature] = np.stack([pad(ex[feature], length) for ex in examples])
    if side not in spans:
      sizes = [len(ex[feature]) for ex in examples]
      starts = np.cumsum([0] + sizes[:-1])
      spans[side] = list(zip(starts, sizes))
      packed[f'{side}_segment_ids'] = pad(
          np.concatenate([[i + 1] * n for i, n in enumerate(sizes)]), length)[None]
      packed[f'{side}_positions'] = pad(
          np.concatenate([np.arange(n) for n in sizes]), length)[None]
  return packed, alone, spans


def test_pack_helper_matches_reference_example():
  # Reference page section 4: targets [3 8 1 9 1 5 4 1 0 0], ids [1 1 1 2 2 3 3 3 0 0]
  # -> decoder inputs [0 3 8 0 9 0 5 4 0 0].
  examples = [dict(decoder_target_tokens=np.array(t), decoder_input_tokens=shift_right(t))
              for t in ([3, 8, 1], [9, 1], [5, 4, 1])]
  packed, _, _ = pack_and_pad(examples, {'decoder': 10})
  np.testing.assert_array_equal(packed['decoder_target_tokens'][0], [3, 8, 1, 9, 1, 5, 4, 1, 0, 0])
  np.testing.assert_array_equal(packed['decoder_input_tokens'][0], [0, 3, 8, 0, 9, 0, 5, 4, 0, 0])
  np.testing.assert_array_equal(packed['decoder_segment_ids'][0], [1, 1, 1, 2, 2, 3, 3, 3, 0, 0])
  np.testing.assert_array_equal(packed['decoder_positions'][0], [0, 1, 2, 0, 1, 0, 1, 2, 0, 0])


def make_examples(name, rng):
  """2-3 examples of different lengths, and the row lengths (with room for padding)."""
  if name == 't5':
    lengths = {'encoder': 16, 'decoder': 12}
    examples = []
    for n_in, n_tgt in [(5, 4), (3, 2), (6, 3)]:
      t = random_tokens(rng, n_tgt)
      examples.append(dict(encoder_input_tokens=random_tokens(rng, n_in),
                           decoder_target_tokens=t, decoder_input_tokens=shift_right(t)))
  elif name == 'bert':
    lengths = {'encoder': 16}
    examples = [dict(encoder_input_tokens=random_tokens(rng, n)) for n in (5, 3, 6)]
  elif name == 'gpt':
    lengths = {'decoder': 14}
    examples = []
    for n in (5, 3, 4):
      t = random_tokens(rng, n)
      examples.append(dict(decoder_target_tokens=t, decoder_input_tokens=shift_right(t)))
  else:  # t5_decoder, prefix LM: the first `p` positions attend bidirectionally
    lengths = {'decoder': 16}
    examples = []
    for n, p in [(6, 3), (3, 0), (5, 2)]:
      t = random_tokens(rng, n)
      examples.append(dict(decoder_target_tokens=t, decoder_input_tokens=shift_right(t),
                           decoder_causal_attention=np.array([1] * p + [0] * (n - p))))
  return examples, lengths


@pytest.mark.parametrize('name', ['t5', 'bert', 'gpt', 't5_decoder'])
def test_packed_equals_unpacked(name):
  rng = np.random.default_rng(1)
  examples, lengths = make_examples(name, rng)
  packed, alone, spans = pack_and_pad(examples, lengths)
  params = params_for(name)
  packed_logits = forward(name, params, packed)
  alone_logits = forward(name, params, alone)
  assert packed_logits.dtype == np.float32
  assert np.isfinite(packed_logits).all() and np.isfinite(alone_logits).all()
  side = 'encoder' if name == 'bert' else 'decoder'
  assert len(spans[side]) == len(examples) >= 2
  for i, (start, n) in enumerate(spans[side]):
    np.testing.assert_allclose(packed_logits[0, start:start + n], alone_logits[i, :n],
                               atol=ATOL, rtol=RTOL, err_msg=f'{name} segment {i + 1}')
  # Not vacuous: the first two examples' logits differ from each other.
  m = min(spans[side][0][1], spans[side][1][1])
  assert np.abs(alone_logits[0, :m] - alone_logits[1, :m]).max() > 1e-2


# -------------------------------------------------------------------------- KV cache
LENGTH, PREFIX = 8, 3  # decoder length of the shared test batch; prefix-LM prompt length


def decoder_batch(rng, batch_size, length, prefix_len=None, encoder_lengths=None):
  targets = np.stack([random_tokens(rng, length) for _ in range(batch_size)])
  batch = {'decoder_target_tokens': targets,
           'decoder_input_tokens': np.stack([shift_right(t) for t in targets])}
  if prefix_len is not None:
    batch['decoder_causal_attention'] = np.broadcast_to(
        (np.arange(length) < prefix_len).astype(np.int32), (batch_size, length)).copy()
  if encoder_lengths is not None:  # rows padded to different lengths
    n = max(encoder_lengths)
    batch['encoder_input_tokens'] = np.stack(
        [pad(random_tokens(rng, k), n) for k in encoder_lengths])
  return batch


@functools.lru_cache(maxsize=None)
def _standard_batch(name, prefix):
  rng = np.random.default_rng(4)
  if name == 'bert':
    return {'encoder_input_tokens': np.stack([pad(random_tokens(rng, 7), 9),
                                              random_tokens(rng, 9)])}
  return decoder_batch(rng, 2, LENGTH, prefix_len=PREFIX if prefix else None,
                       encoder_lengths=(9, 6) if name == 't5' else None)


def standard_batch(name, prefix=False):
  """The batch shared by the decoding, scan and bfloat16 tests (one compile per model)."""
  return dict(_standard_batch(name, prefix))


@functools.lru_cache(maxsize=None)
def _decoder_fns(name, overrides=()):
  module = models.build(tiny_config(name, **dict(overrides)))
  init_cache = jax.jit(lambda b: module.init(jax.random.PRNGKey(0), b, decode=True)['cache'])
  step = jax.jit(lambda p, c, b: module.apply({'params': p, 'cache': c}, b, decode=True,
                                              mutable=['cache']))
  return init_cache, step


def incremental_logits(name, params, full, chunks, prefix_chunk=False, overrides=()):
  """Decode `full` chunk by chunk through the KV cache; `chunks` are (start, end) pairs.

  Encoder-decoder calls pass the full encoder input each time. When `prefix_chunk`, the first
  chunk carries decoder_causal_attention (the prompt); later calls do not.
  """
  init_cache, step = _decoder_fns(name, overrides)
  init_batch = {k: v for k, v in full.items()
                if k in ('encoder_input_tokens', 'decoder_input_tokens')}
  cache = init_cache(init_batch)
  outputs = []
  for i, (start, end) in enumerate(chunks):
    batch = {'decoder_input_tokens': full['decoder_input_tokens'][:, start:end]}
    if 'encoder_input_tokens' in full:
      batch['encoder_input_tokens'] = full['encoder_input_tokens']
    if prefix_chunk and i == 0:
      batch['decoder_causal_attention'] = full['decoder_causal_attention'][:, start:end]
    logits, mutated = step(params, cache, batch)
    cache = mutated['cache']
    assert logits.dtype == jnp.float32 and logits.shape[1] == end - start
    outputs.append(np.asarray(logits))
  return np.concatenate(outputs, axis=1)


def one_at_a_time(start, length=LENGTH):
  return [(i, i + 1) for i in range(start, length)]


@pytest.mark.parametrize('name,prefill', [('gpt', 3), ('t5_decoder', 0), ('t5', 0), ('t5', 3)])
def test_kv_cache_decoding_matches_full_forward(name, prefill):
  full = standard_batch(name)  # t5: encoder rows padded differently (9 and 6 real tokens)
  params = params_for(name)
  expected = forward(name, params, full)
  chunks = ([(0, prefill)] if prefill else []) + one_at_a_time(prefill)
  got = incremental_logits(name, params, full, chunks)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('scan', [False, True])
def test_kv_cache_prefix_lm_decoding_matches_full_forward(scan):
  """T5-style decoder-only prefix LM: the prompt chunk carries decoder_causal_attention.

  The chunk is one longer than the prefix, so it mixes bidirectional and causal positions.
  """
  full = standard_batch('t5_decoder', prefix=True)
  params = params_for('t5_decoder')
  expected = forward('t5_decoder', params, full)
  # Not vacuous: the bidirectional prefix changes the prompt logits.
  causal_only = forward('t5_decoder', params, standard_batch('t5_decoder'))
  assert np.abs(causal_only[:, :PREFIX - 1] - expected[:, :PREFIX - 1]).max() > 1e-2
  overrides = ()
  if scan:
    params, overrides = models.stack_layers(params, 2), (('scan_layers', True),)
  chunks = [(0, PREFIX + 1)] + one_at_a_time(PREFIX + 1)
  got = incremental_logits('t5_decoder', params, full, chunks, prefix_chunk=True,
                           overrides=overrides)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------- scan and remat
def shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), x.dtype), tree)


@pytest.mark.parametrize('name', ['t5', 'bert', 'gpt'])
def test_stack_layers_matches_scanned_init_and_round_trips(name):
  params = params_for(name)
  stacked = models.stack_layers(params, 2)
  scanned_module = models.build(tiny_config(name, scan_layers=True))
  abstract = nn.unbox(jax.eval_shape(scanned_module.init, jax.random.PRNGKey(0),
                                     standard_batch(name)))
  assert shapes(stacked) == shapes(abstract['params'])
  restored = models.unstack_layers(stacked)
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


@pytest.mark.parametrize('name,overrides', [
    ('t5', dict(scan_layers=True)),
    ('bert', dict(scan_layers=True)),
    ('gpt', dict(scan_layers=True)),
    ('t5', dict(scan_layers=True, remat='full')),
    ('gpt', dict(remat='full')),
], ids=['t5-scan', 'bert-scan', 'gpt-scan', 't5-scan-remat', 'gpt-remat'])
def test_scan_layers_and_remat_give_same_logits(name, overrides):
  params = params_for(name)
  batch = standard_batch(name)
  expected = forward(name, params, batch)
  if overrides.get('scan_layers'):
    params = models.stack_layers(params, 2)
  got = forward(name, params, batch, **overrides)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_remat_gives_same_gradients():
  name = 't5_decoder'
  params = params_for(name)
  batch = standard_batch(name, prefix=True)

  def grads(**overrides):
    module = models.build(tiny_config(name, **overrides))
    loss = lambda p: jnp.sum(jnp.tanh(module.apply({'params': p}, batch)))
    return jax.jit(jax.grad(loss))(params)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               grads(remat='full'), grads())


@pytest.mark.parametrize('in_axes,in_shape,out_features', [
    (('embed',), (6,), (3, 5)),        # a query / key / value projection
    (('heads', 'kv'), (3, 4), (6,)),   # the attention output projection
])
def test_dense_general_gradients_equal_plain_autodiff(in_axes, in_shape, out_features):
  """DenseGeneral's 2-D matmul with its own VJP (kernel gradient as (g^T x)^T) gives the
  gradients autodiff gives for the plain N-D dot_general."""
  from t5x_lite import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7) + in_shape), jnp.float32)
  dense = layers.DenseGeneral(out_features, in_axes=in_axes, out_axes=('o',) * len(
      out_features))
  params = nn.unbox(dense.init(jax.random.PRNGKey(0), x))['params']
  n_in = len(in_axes)
  readout = jnp.asarray(rng.normal(size=x.shape[:-n_in] + tuple(out_features)), jnp.float32)

  def plain(p, x):
    contract = tuple(range(x.ndim - n_in, x.ndim))
    return jax.lax.dot_general(x, p['kernel'], ((contract, tuple(range(n_in))), ((), ())))

  loss = lambda f: (lambda p, x: jnp.sum(jnp.tanh(f(p, x)) * readout))
  ours = jax.grad(loss(lambda p, x: dense.apply({'params': p}, x)), argnums=(0, 1))(params, x)
  expected = jax.grad(loss(plain), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               ours, expected)
  assert ours[0]['kernel'].shape == params['kernel'].shape


# --------------------------------------------------------------------------- bfloat16
# Stated tolerance: with bfloat16 activations (8-bit mantissa, ~4e-3 relative rounding per
# op) through 2 layers, max |logits_bf16 - logits_f32| <= 5e-2 * max |logits_f32|.
BF16_REL_TOL = 5e-2


@pytest.mark.parametrize('name', ['t5', 'bert', 'gpt'])
def test_bfloat16_activations_close_to_float32(name):
  params = params_for(name)
  batch = standard_batch(name)
  f32 = forward(name, params, batch)
  _, fn = _forward(name, (('dtype', 'bfloat16'),))
  bf16 = fn(params, batch)
  assert bf16.dtype == jnp.float32
  bf16 = np.asarray(bf16)
  rel = np.abs(bf16 - f32).max() / np.abs(f32).max()
  assert rel < BF16_REL_TOL, rel
  assert rel > 0  # bfloat16 really was used


# ----------------------------------------------------------------------- bad configs
@pytest.mark.parametrize('field,value', [
    ('family', 'transformer'),
    ('mlp_activations', ('gelu', 'swishy')),
    ('d_model', 0),
    ('num_heads', -2),
    ('vocab_size', 0),
    ('num_decoder_layers', 0),
])
def test_bad_model_config_raises_value_error_naming_field(field, value):
  cfg = tiny_config('t5')
  cfg[field] = value
  with pytest.raises(ValueError) as info:
    models.build(cfg)
  assert f'config.model.{field}' in str(info.value)


def test_unknown_model_option_is_named():
  cfg = tiny_config('gpt').to_dict()
  cfg['d_modle'] = 32
  with pytest.raises(ValueError, match='d_modle'):
    models.build(cfg)
