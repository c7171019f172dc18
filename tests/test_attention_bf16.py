"""bfloat16 attention against the float32 reference: `xla`, `folded` and `rowwise`
everywhere, and cuDNN flash attention (`attention_impl='cudnn'`, what 'auto' picks for
bfloat16 on a GPU) where a GPU is present, each in bfloat16, against the einsum path in
float32 at full matmul precision.

- The attention op alone (`layers.dot_product_attention` with the stack's folded mask and
  bias, as the models call it): bfloat16 inputs, so the float32 reference sees exactly the
  same values and only the implementation's own rounding shows; outputs and the gradients of
  query, key, value and the relative-position bias, under padding, packed-segment, causal and
  prefix-LM masks.
- Whole models: forward logits and the gradient of every parameter, the relative-position
  table (the bias gradient) included, on padded, packed and prefix-LM batches.

Tolerance: no bfloat16 implementation matches float32 closely, so each must be as close to the
reference as the einsum path in bfloat16 is (the implementation the float32 equality tests
compare against): within 2x plus 1e-3 of relative error norm (||got - ref|| / ||ref||) for
the op; for whole models, whose every projection and norm rounds to bfloat16 too, 3x plus
5e-3. A wrong mask, a lost bias or a wrong bias gradient is off by 0.1 or more; so was
`folded` once, by 2-4x on the query and key gradients, while it divided in bfloat16.

The cuDNN cases are skipped without a GPU (`pytest -ra` lists them); `launch/gpu_bench.sh`
runs this file after its timings, and every case passed on an H200 (jax 0.11.2).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_models import (decoder_batch, make_examples, pack_and_pad, random_params,
                         tiny_config)
from t5x_lite import families, layers, models

needs_gpu = pytest.mark.skipif(jax.default_backend() != 'gpu',
                               reason='needs a GPU (cuDNN flash attention)')

# cuDNN takes head dims that are multiples of 8 up to 256, and (with a bias, in training) even
# sequence lengths: every batch below has even lengths.
MODEL = dict(d_kv=64, num_heads=4)


def batch_for(name, kind):
  if kind == 'padded':  # rows of 24, 17, 9 and 24 encoder tokens, 16, 16, 11, 5 targets
    batch = decoder_batch(np.random.default_rng(3), 4, 16, encoder_lengths=(24, 17, 9, 24))
    for row, n in ((2, 11), (3, 5)):  # trailing padding on the decoder side too
      batch['decoder_target_tokens'][row, n:] = 0
      batch['decoder_input_tokens'][row, n + 1:] = 0
    return batch
  packed, _, _ = pack_and_pad(*make_examples(name, np.random.default_rng(1)))
  return packed


@functools.lru_cache(maxsize=None)
def params_for(name):
  module = models.build(tiny_config(name, **MODEL))
  return random_params(module, families.dummy_batch(module.cfg.family), seed=7)


@functools.lru_cache(maxsize=None)  # the references are shared by the implementations
def logits_and_grads(name, kind, impl, dtype):
  batch = batch_for(name, kind)
  module = models.build(tiny_config(name, **MODEL, attention_impl=impl, dtype=dtype))
  real = (batch['decoder_target_tokens'] > 0)[..., None]
  apply = lambda p: module.apply({'params': p}, batch).astype(jnp.float32)
  # A nonlinear readout, so that every logit's gradient differs; padding queries excluded
  # (they attend to nothing, and what they output differs between implementations).
  loss = lambda p: jnp.sum(jnp.tanh(apply(p)) * real)
  with jax.default_matmul_precision('float32'):  # no TF32 in the float32 reference
    logits, grads = jax.jit(lambda p: (apply(p), jax.grad(loss)(p)))(params_for(name))
  return np.asarray(logits)[np.broadcast_to(real, logits.shape)], jax.tree.map(np.asarray, grads)


def relative_error(got, ref, scale=None):
  return float(np.linalg.norm(got - ref) / (np.linalg.norm(ref) if scale is None else scale))


IMPLS = ['xla', 'folded', 'rowwise', pytest.param('cudnn', marks=needs_gpu)]


# ------------------------------------------------------------------------ the op alone
def op_inputs(kind, b=4, q=128, k=128, h=4, d=64):
  """bfloat16-exact q, k, v [b, n, h, d], a [1, h, q, k] bias and a boolean mask."""
  rng = np.random.default_rng(11)
  bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  valid = np.arange(k)[None] < np.array([k, k - 37, k - 90, k])[:b, None]
  if kind == 'packed':  # three segments per row, causal within each
    segments = np.minimum(np.arange(k) // 50 + 1, 3)[None].repeat(b, 0) * valid
    mask = layers.attention_mask(valid, valid, segments, segments, causal=True)
  elif kind == 'prefix':  # the first 40 positions see each other, the rest are causal
    prefix = np.broadcast_to(np.arange(k) < 40, (b, k))
    mask = layers.attention_mask(valid, valid, causal=True, query_prefix=prefix,
                                 key_prefix=prefix)
  else:  # 'padded': bidirectional over the valid keys
    mask = layers.attention_mask(np.ones((b, q), bool), valid)
  return bf16(b, q, h, d), bf16(b, k, h, d), bf16(b, k, h, d), bf16(1, h, q, k), mask


@functools.lru_cache(maxsize=None)
def op_outputs(kind, impl, dtype):
  """Output and d(query, key, value, bias) of sum(tanh(out) * w), as the stacks call the op."""
  query, key, value, bias, mask = op_inputs(kind)
  cast = lambda x: x.astype(dtype)
  # Padding queries attend to nothing: what they output differs between implementations, so
  # they are left out of the readout and of the comparison.
  rows = np.asarray(mask).any(-1)[:, 0]  # [b, q]
  readout = np.random.default_rng(5).normal(size=query.shape) * rows[..., None, None]
  readout = jnp.asarray(readout, jnp.float32)

  def out(q, k, v, b):
    stack_bias, stack_mask = layers.stack_attention_inputs(mask, b, impl, dtype)
    return layers.dot_product_attention(q, k, v, stack_bias, stack_mask, scale=1.0,
                                        impl=impl).astype(jnp.float32)

  loss = lambda *args: jnp.sum(jnp.tanh(out(*args)) * readout)
  args = (cast(query), cast(key), cast(value), bias.astype(jnp.float32))
  with jax.default_matmul_precision('float32'):
    o, g = jax.jit(lambda *a: (out(*a), jax.grad(loss, argnums=(0, 1, 2, 3))(*a)))(*args)
  return np.asarray(o)[rows], [np.asarray(x, np.float32) for x in g]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('kind', ['padded', 'packed', 'prefix'])
def test_attention_op_in_bfloat16_is_as_close_to_float32_as_einsum(kind, impl):
  ref_out, ref_grads = op_outputs(kind, 'einsum', jnp.float32)
  base_out, base_grads = op_outputs(kind, 'einsum', jnp.bfloat16)
  got_out, got_grads = op_outputs(kind, impl, jnp.bfloat16)
  names = ('query', 'key', 'value', 'bias')
  got = [relative_error(got_out, ref_out)] + [
      relative_error(a, r) for a, r in zip(got_grads, ref_grads)]
  base = [relative_error(base_out, ref_out)] + [
      relative_error(a, r) for a, r in zip(base_grads, ref_grads)]
  print(f'{kind} {impl}: output, d' + ', d'.join(names) + ' errors ' +
        ' '.join(f'{g:.1e}' for g in got) + ' (einsum bf16: ' +
        ' '.join(f'{b:.1e}' for b in base) + ')')
  for what, g, b in zip(('output',) + names, got, base):
    assert g <= 2 * b + 1e-3, (what, g, b)
  assert np.linalg.norm(ref_grads[3]) > 0  # the bias gradient is really there


# --------------------------------------------------------------------- whole models
def errors(name, kind, impl):
  """(logits error, {parameter path: gradient error}) of `impl` in bfloat16 vs the reference.
  Gradients that are zero in exact arithmetic (e.g. a key bias: softmax ignores a shift
  shared by a query's logits) are measured against a thousandth of the largest one."""
  ref_logits, ref_grads = logits_and_grads(name, kind, 'einsum', 'float32')
  logits, grads = logits_and_grads(name, kind, impl, 'bfloat16')
  paths = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
  floor = 1e-3 * max(np.linalg.norm(ref) for _, ref in paths)
  grad_errors = {
      jax.tree_util.keystr(path): relative_error(got, ref, max(np.linalg.norm(ref), floor))
      for (path, ref), got in zip(paths, jax.tree.leaves(grads))}
  return relative_error(logits, ref_logits), grad_errors


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('name,kind', [('t5', 'padded'), ('t5', 'packed'), ('gpt', 'packed'),
                                       ('t5_decoder', 'prefix')])
def test_bfloat16_model_is_as_close_to_float32_as_einsum(name, kind, impl):
  base_logits, base_grads = errors(name, kind, 'einsum')
  got_logits, got_grads = errors(name, kind, impl)
  print(f'{name} {kind} {impl}: logits {got_logits:.2e} (einsum bf16 {base_logits:.2e}); '
        f'worst gradient {max(got_grads.values()):.2e} '
        f'(einsum bf16 {max(base_grads.values()):.2e})')
  assert got_logits <= 3 * base_logits + 5e-3
  assert base_grads.keys() == got_grads.keys()
  for path, err in got_grads.items():
    assert err <= 3 * base_grads[path] + 5e-3, (path, err, base_grads[path])
  if name != 'gpt':  # the relative-position table's gradient is there and was compared
    assert any('relpos_bias' in path for path in got_grads), sorted(got_grads)


@needs_gpu
def test_auto_picks_cudnn_for_bfloat16_training_on_a_gpu():
  assert layers.resolve_attention_impl('auto', jnp.bfloat16, False, False) == 'cudnn'
  assert layers.resolve_attention_impl('auto', jnp.float32, False, False) == 'xla'
  assert layers.resolve_attention_impl('auto', jnp.bfloat16, False, True) == 'xla'
