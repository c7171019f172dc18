"""Attention implementations agree: `xla` (jax.nn.dot_product_attention), `folded` (einsum
with the mask folded into the bias once per stack) and `rowwise` (cpu_attention.py: a scan
over batch rows with a recomputing custom VJP) vs `einsum` (the explicit logits -> bias ->
mask -> softmax path), on CPU float32.

- forward logits, packed rows (segment masks) and a prefix-LM batch;
- gradients of every parameter, the relative-position table (the bias gradient) included;
- KV-cache decoding with `xla` equals the full `einsum` forward pass;
- the encoder's cross-attention keys/values are projected once and read from the cache;
- the cuDNN-style stack-level bias (mask folded into the bias once per stack) gives the
  same attention as a separate mask, run through XLA on CPU (no GPU here);
- rows padded at the end (encoder and decoder side): forward and gradients equal `einsum`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_models import (LENGTH, forward, incremental_logits, make_examples, one_at_a_time,
                         pack_and_pad, pad, params_for, random_tokens, shift_right,
                         standard_batch, tiny_config)
from t5x_lite import cpu_attention, layers, models

# float32 through different summation orders (which also differ between CPUs: AVX-512 vs
# AVX2 machines round differently): ~1e-5 of a logit's size, and 1e-5 near zero.
ATOL, RTOL = 1e-5, 1e-5


@pytest.fixture(autouse=True, scope='module')
def on_cpu():
  with jax.default_device(jax.devices('cpu')[0]):
    yield


@pytest.fixture(autouse=True)
def rowwise_one_row_per_step(monkeypatch):
  """These batches are tiny, so `rowwise` would take the whole batch in one scan step: one
  row per step here, the path long rows take (the op test below also runs grouped rows)."""
  monkeypatch.setattr(cpu_attention, 'STEP_ELEMENTS', 1)


def trailing_padded_batch(name):
  """Unpacked rows padded at the end to different lengths, targets and inputs alike."""
  rng = np.random.default_rng(6)
  if name == 'bert':
    return {'encoder_input_tokens': np.stack([pad(random_tokens(rng, n), 9) for n in (9, 5)])}
  targets = np.stack([pad(random_tokens(rng, n), LENGTH) for n in (LENGTH, LENGTH - 3)])
  batch = {'decoder_target_tokens': targets,
           'decoder_input_tokens': np.stack([shift_right(t) for t in targets])}
  if name == 't5':
    batch['encoder_input_tokens'] = np.stack([pad(random_tokens(rng, n), 9) for n in (4, 9)])
  return batch


def batch_for(name, kind):
  if kind == 'trailing':
    return trailing_padded_batch(name)
  if kind == 'packed':
    packed, _, _ = pack_and_pad(*make_examples(name, np.random.default_rng(1)))
    return packed
  return standard_batch(name, prefix=kind == 'prefix')


CASES = [('t5', 'packed'), ('t5', 'padded'), ('bert', 'packed'), ('gpt', 'packed'),
         ('t5_decoder', 'prefix'), ('t5_decoder', 'packed'), ('t5', 'trailing'),
         ('bert', 'trailing'), ('gpt', 'trailing'), ('t5_decoder', 'trailing')]


@pytest.mark.parametrize('impl', ['xla', 'folded', 'rowwise'])
@pytest.mark.parametrize('name,kind', CASES)
def test_forward_equals_einsum(name, kind, impl):
  params, batch = params_for(name), batch_for(name, kind)
  expected = forward(name, params, batch, attention_impl='einsum')
  got = forward(name, params, batch, attention_impl=impl)
  side = 'encoder' if name == 'bert' else 'decoder'
  real = batch.get(f'{side}_target_tokens', batch[f'{side}_input_tokens']) > 0
  np.testing.assert_allclose(got[real], expected[real], atol=ATOL, rtol=RTOL)
  assert np.abs(expected).max() > 1.0  # logits are not trivially small


def grads(name, params, batch, impl):
  module = models.build(tiny_config(name, attention_impl=impl))
  # A nonlinear readout so that every logit's gradient differs, over real target positions
  # only, as the training loss weights them (padding queries attend to nothing; what they
  # output is arbitrary and differs between implementations).
  side = 'encoder' if name == 'bert' else 'decoder'
  real = (batch.get(f'{side}_target_tokens', batch[f'{side}_input_tokens']) > 0)[..., None]
  loss = lambda p: jnp.sum(jnp.tanh(module.apply({'params': p}, batch)) * real)
  return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize('impl', ['xla', 'folded', 'rowwise'])
@pytest.mark.parametrize('name,kind', [('t5', 'packed'), ('t5_decoder', 'prefix'),
                                       ('t5', 'trailing'), ('gpt', 'trailing')])
def test_gradients_equal_einsum_including_bias_table(name, kind, impl):
  params, batch = params_for(name), batch_for(name, kind)
  expected, got = grads(name, params, batch, 'einsum'), grads(name, params, batch, impl)
  # float32 rounding grows with a gradient's size (GPT-2's reach ~30): atol scales with it.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-5 + 2e-6 * np.abs(b).max(), rtol=1e-4), got, expected)
  if name != 'gpt':  # GPT-2 has absolute positions, no relative bias
    stack = 'encoder' if name == 't5' else 'decoder'
    table = np.asarray(got[stack]['relpos_bias']['rel_embedding'])
    assert np.abs(table).max() > 1e-3  # the bias gradient is really there


@pytest.mark.parametrize('impl', ['xla', 'folded', 'rowwise'])
@pytest.mark.parametrize('name,prefill', [('t5', 3), ('gpt', 0)])
def test_kv_cache_decoding_equals_einsum_forward(name, prefill, impl):
  full = standard_batch(name)
  params = params_for(name)
  expected = forward(name, params, full, attention_impl='einsum')
  chunks = ([(0, prefill)] if prefill else []) + one_at_a_time(prefill)
  got = incremental_logits(name, params, full, chunks, overrides=(('attention_impl', impl),))
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_prefix_lm_decoding_equals_forward_with_xla():
  full = standard_batch('t5_decoder', prefix=True)
  params = params_for('t5_decoder')
  expected = forward('t5_decoder', params, full, attention_impl='einsum')
  chunks = [(0, 4)] + one_at_a_time(4)
  got = incremental_logits('t5_decoder', params, full, chunks, prefix_chunk=True,
                           overrides=(('attention_impl', 'xla'),))
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('later', ['garbage', 'none'])
def test_cross_attention_keys_values_come_from_the_cache_after_the_first_chunk(later):
  """Later decode calls do not read the encoder output: garbage there changes nothing, and
  None (what decoding.py's loops pass: no projection, no branch) gives the same logits."""
  full = standard_batch('t5')
  params = params_for('t5')
  module = models.build(tiny_config('t5'))
  expected = forward('t5', params, full)
  cache = module.init(jax.random.PRNGKey(0), {k: full[k] for k in (
      'encoder_input_tokens', 'decoder_input_tokens')}, decode=True)['cache']
  step = jax.jit(lambda c, enc, tok: module.apply(
      {'params': params, 'cache': c}, enc,
      {'encoder_input_tokens': full['encoder_input_tokens'], 'decoder_input_tokens': tok},
      decode=True, method=module.decode, mutable=['cache']))
  encoded = module.apply({'params': params}, full, method=module.encode)
  garbage = jnp.full_like(encoded, 7.0) if later == 'garbage' else None
  outputs = []
  for i in range(full['decoder_input_tokens'].shape[1]):
    logits, mutated = step(cache, encoded if i == 0 else garbage,
                           full['decoder_input_tokens'][:, i:i + 1])
    cache = mutated['cache']
    outputs.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=ATOL, rtol=RTOL)


def test_folded_mask_bias_equals_separate_mask_and_bias():
  """What the cudnn path receives (mask folded into the bias once per stack, 16-bit) gives
  the same attention on every query that has a key to attend to."""
  rng = np.random.default_rng(0)
  b, q, k, h, d = 2, 6, 6, 3, 8
  query, key, value = (jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.bfloat16)
                       for n in (q, k, k))
  bias = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)
  valid = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2], bool)
  mask = layers.attention_mask(valid, valid, causal=True)
  folded_bias, folded_mask = layers.stack_attention_inputs(mask, bias, 'cudnn', jnp.bfloat16)
  assert folded_mask is None and folded_bias.dtype == jnp.bfloat16
  folded = layers.dot_product_attention(query, key, value, folded_bias, None, scale=1.0,
                                        impl='xla')
  separate = layers.dot_product_attention(query, key, value, bias.astype(jnp.bfloat16), mask,
                                          scale=1.0, impl='einsum')
  rows = np.asarray(valid)  # padded queries attend to nothing: their output is arbitrary
  np.testing.assert_allclose(np.asarray(folded, np.float32)[rows],
                             np.asarray(separate, np.float32)[rows], atol=2e-2, rtol=0)


@pytest.mark.parametrize('impl,dtype,dropout,decode,backend,expected', [
    ('auto', jnp.float32, False, False, 'cpu', 'rowwise'),
    ('auto', jnp.bfloat16, False, False, 'cpu', 'rowwise'),
    ('auto', jnp.float32, False, True, 'cpu', 'folded'),
    ('rowwise', jnp.float32, True, False, 'cpu', 'einsum'),
    ('auto', jnp.float32, False, False, 'tpu', 'xla'),
    ('auto', jnp.bfloat16, False, False, 'gpu', 'cudnn'),
    ('auto', jnp.float32, False, False, 'gpu', 'xla'),
    ('auto', jnp.bfloat16, False, True, 'gpu', 'xla'),
    ('cudnn', jnp.bfloat16, True, False, 'gpu', 'einsum'),
    ('xla', jnp.float32, False, False, 'cpu', 'xla'),
])
def test_resolve_attention_impl(monkeypatch, impl, dtype, dropout, decode, backend, expected):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert layers.resolve_attention_impl(impl, dtype, dropout, decode) == expected


def test_auto_on_a_cpu_mesh_of_several_devices_is_folded():
  """'rowwise' scans the batch rows: on a mesh that splits the batch, 'auto' avoids it."""
  with jax.set_mesh(jax.make_mesh((2,), ('data',))):
    assert layers.resolve_attention_impl('auto', jnp.float32, False, False) == 'folded'
  with jax.set_mesh(jax.make_mesh((1,), ('data',))):
    assert layers.resolve_attention_impl('auto', jnp.float32, False, False) == 'rowwise'


def test_unknown_attention_impl_is_named():
  with pytest.raises(ValueError, match='config.model.attention_impl'):
    models.build(tiny_config('t5', attention_impl='flash'))


@pytest.mark.parametrize('rows', [1, 2, 4])
@pytest.mark.parametrize('bias_rows,mask_kind,batch', [
    (1, 'keys', 4), (4, 'keys', 4), (1, 'causal', 4), (None, 'per_query', 4), (1, None, 1)])
def test_rowwise_op_equals_einsum_forward_and_gradients(bias_rows, mask_kind, batch, rows,
                                                        monkeypatch):
  """cpu_attention.attention against the einsum path at the op: a bias shared by the batch
  (gradient summed over rows) or one per row, key-padding, causal or per-query masks, one
  row; 1, 2 or 4 rows per scan step; output, dQ, dK, dV and dbias on every query that has a
  key to attend to."""
  rng = np.random.default_rng(3)
  q_len, k_len, h, d = 5, 7, 2, 4
  monkeypatch.setattr(cpu_attention, 'STEP_ELEMENTS', rows * h * q_len * k_len)
  assert cpu_attention.rows_per_step(batch, h * q_len * k_len) == min(rows, batch)
  query = jnp.asarray(rng.normal(size=(batch, q_len, h, d)), jnp.float32)
  key, value = (jnp.asarray(rng.normal(size=(batch, k_len, h, d)), jnp.float32)
                for _ in range(2))
  bias = (None if bias_rows is None else
          jnp.asarray(rng.normal(size=(bias_rows, h, q_len, k_len)), jnp.float32))
  key_valid = jnp.asarray(np.arange(k_len)[None] < np.array([7, 4, 2, 6])[:batch, None])
  mask = {'keys': key_valid[:, None, None, :],
          'causal': (np.arange(q_len)[:, None] + 2 >= np.arange(k_len)[None])[None, None],
          'per_query': jnp.asarray(rng.random((batch, 1, q_len, k_len)) < 0.7),
          None: None}[mask_kind]
  readout = jnp.asarray(rng.normal(size=query.shape), jnp.float32)
  rows = (np.ones((batch, q_len), bool) if mask is None else
          np.asarray(jnp.broadcast_to(mask, (batch, 1, q_len, k_len)).any(-1)[:, 0]))

  def loss(impl, *args):
    out = layers.dot_product_attention(*args, mask, scale=0.5, impl=impl)
    return jnp.sum(jnp.tanh(out) * readout * rows[..., None, None]), out

  argnums = (0, 1, 2) + ((3,) if bias is not None else ())
  (_, expected), grads_expected = jax.value_and_grad(
      lambda *a: loss('einsum', *a), argnums, has_aux=True)(query, key, value, bias)
  (_, got), grads_got = jax.jit(jax.value_and_grad(
      lambda *a: loss('rowwise', *a), argnums, has_aux=True))(query, key, value, bias)
  np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(expected)[rows], atol=ATOL, rtol=RTOL)
  for g, e in zip(grads_got, grads_expected):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, atol=ATOL, rtol=RTOL)
  assert np.abs(np.asarray(grads_expected[-1])).max() > 1e-2  # gradients are not trivially 0
