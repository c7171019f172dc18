"""Autoregressive decoding with the KV cache: greedy and temperature / top-k / top-p sampling.

Worked example (encoder-decoder, greedy): the encoder runs once; the decoder starts from
token 0 (T5's BOS = pad) and, one position per step, feeds back argmax(logits). After a
row emits EOS (1) every later position is 0. So with max_length 4, a row whose argmaxes
are [7, 9, 1, 5] returns [7, 9, 1, 0].

Decoder-only: the prompt is prefilled in one cached call (with `decoder_causal_attention`
marking it as the bidirectional prefix when the model was trained as a prefix LM), then
tokens are generated one at a time.
"""
import functools
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import models

EOS_ID = 1


def _empty_cache(model, batch: Dict[str, jax.Array]):
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, decode=True))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def _choose(logits, rng, temperature: float, top_k: int, top_p: float):
  """Next token from [batch, vocab] float32 logits."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest set whose mass reaches top_p (always at least the top token).
    cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def _generate(step_fn, cache, first_token, max_length, rng, temperature, top_k, top_p):

  def body(carry, i):
    cache, token, done = carry
    logits, cache = step_fn(cache, token[:, None])
    next_token = _choose(logits[:, -1], jax.random.fold_in(rng, i), temperature, top_k, top_p)
    next_token = jnp.where(done, 0, next_token)
    done = done | (next_token == EOS_ID)
    return (cache, next_token, done), next_token

  init = (cache, first_token, first_token == EOS_ID)
  _, tokens = jax.lax.scan(body, init, jnp.arange(max_length))
  return tokens.T


_STATIC = ('model', 'max_length', 'temperature', 'top_k', 'top_p', 'prefix_lm')


def encoder_decoder_generate(model, params, encoder_input_tokens, max_length: int,
                             rng=None, temperature: float = 0.0, top_k: int = 0,
                             top_p: float = 1.0):
  """[batch, inputs_length] -> [batch, max_length] generated target tokens."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _encoder_decoder_generate(model, params, encoder_input_tokens, max_length, rng,
                                   temperature, top_k, top_p)


@functools.partial(jax.jit, static_argnames=_STATIC[:5])
def _encoder_decoder_generate(model, params, encoder_input_tokens, max_length, rng,
                              temperature, top_k, top_p):
  enc = jnp.asarray(encoder_input_tokens, jnp.int32)
  batch = enc.shape[0]
  full = {'encoder_input_tokens': enc,
          'decoder_input_tokens': jnp.zeros((batch, max_length), jnp.int32)}
  cache = _empty_cache(model, full)
  encoded = model.apply({'params': params}, {'encoder_input_tokens': enc},
                        method=model.encode)

  def step_fn(cache, token):
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, encoded,
        {'encoder_input_tokens': enc, 'decoder_input_tokens': token}, decode=True,
        method=model.decode, mutable=['cache'])
    return logits, mutated['cache']

  return _generate(step_fn, cache, jnp.zeros((batch,), jnp.int32), max_length, rng,
                   temperature, top_k, top_p)


def decoder_only_generate(model, params, prompt_tokens, max_length: int, rng=None,
                          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                          prefix_lm: bool = False):
  """Continue equal-length prompts [batch, prompt_len] by `max_length` tokens."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _decoder_only_generate(model, params, prompt_tokens, max_length, rng, temperature,
                                top_k, top_p, prefix_lm)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _decoder_only_generate(model, params, prompt_tokens, max_length, rng, temperature,
                           top_k, top_p, prefix_lm):
  prompt = jnp.asarray(prompt_tokens, jnp.int32)
  batch, prompt_len = prompt.shape
  total = prompt_len + max_length
  cache = _empty_cache(model, {'decoder_input_tokens': jnp.zeros((batch, total), jnp.int32)})

  def call(cache, tokens, prefix=None):
    batch_in = {'decoder_input_tokens': tokens}
    if prefix is not None:
      batch_in['decoder_causal_attention'] = prefix
    logits, mutated = model.apply({'params': params, 'cache': cache}, batch_in, decode=True,
                                  mutable=['cache'])
    return logits, mutated['cache']

  # Prefill the whole prompt (bidirectionally for a prefix LM), then one token at a time.
  prefix = jnp.ones((batch, prompt_len), jnp.int32) if prefix_lm else None
  logits, cache = call(cache, prompt, prefix)
  first = _choose(logits[:, -1], jax.random.fold_in(rng, max_length), temperature, top_k,
                  top_p)
  rest = _generate(call, cache, first, max_length - 1, rng, temperature, top_k, top_p)
  rest = jnp.where((first == EOS_ID)[:, None], 0, rest)
  return jnp.concatenate([first[:, None], rest], axis=1)


def generate(model, params, batch: Dict[str, np.ndarray], max_length: int, **kwargs):
  """Family dispatch: encoder-decoder reads `encoder_input_tokens`, decoder-only a prompt."""
  if isinstance(model, models.EncoderDecoder):
    return encoder_decoder_generate(model, params, batch['encoder_input_tokens'], max_length,
                                    **kwargs)
  if isinstance(model, models.DecoderOnly):
    return decoder_only_generate(model, params, batch['decoder_input_tokens'], max_length,
                                 **kwargs)
  raise ValueError('decoding needs an encoder_decoder or decoder model family.')
