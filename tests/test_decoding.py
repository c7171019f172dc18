"""Decoding with the KV cache against full forward passes (independent of the cache)."""
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import decoding, models
from tiny_run import tiny_config


def _tiny(name):
  return tiny_config(name, vocab_size=64).model


def _greedy_by_full_forward(step_logits, start, n):
  """Reference greedy decode: re-run the full model on the growing prefix each step."""
  tokens = start
  out = []
  for _ in range(n):
    nxt = np.argmax(step_logits(tokens)[:, -1], axis=-1)
    out.append(nxt)
    tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
  out = np.stack(out, axis=1)
  # After EOS everything is 0 (decoding's contract).
  done = np.cumsum(out == decoding.EOS_ID, axis=1) - (out == decoding.EOS_ID) > 0
  return np.where(done, 0, out)


def test_encoder_decoder_greedy_equals_full_forward_argmax():
  cfg = _tiny('t5')
  model = models.build(cfg)
  enc = np.random.RandomState(0).randint(2, 64, (3, 10)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), {
      'encoder_input_tokens': enc, 'decoder_input_tokens': enc[:, :6]})['params']
  apply = jax.jit(model.apply)
  got = np.asarray(decoding.encoder_decoder_generate(model, params, enc, 6))
  full = lambda dec: np.asarray(apply({'params': params}, {
      'encoder_input_tokens': enc, 'decoder_input_tokens': dec}))
  want = _greedy_by_full_forward(full, np.zeros((3, 1), np.int32), 6)
  np.testing.assert_array_equal(got, want)


def test_decoder_only_prefix_lm_greedy_equals_full_forward_argmax():
  cfg = _tiny('t5_decoder')
  model = models.build(cfg)
  prompt = np.random.RandomState(1).randint(2, 64, (2, 5)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), {'decoder_input_tokens': prompt})['params']
  apply = jax.jit(model.apply)
  got = np.asarray(decoding.decoder_only_generate(model, params, prompt, 4, prefix_lm=True))

  def full(tokens):
    prefix = np.zeros_like(tokens)
    prefix[:, :prompt.shape[1]] = 1
    return np.asarray(apply({'params': params}, {
        'decoder_input_tokens': tokens, 'decoder_causal_attention': prefix}))
  want = _greedy_by_full_forward(full, prompt, 4)
  np.testing.assert_array_equal(got, want)


def test_sampling_respects_top_k():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = {int(decoding._choose(logits, jax.random.PRNGKey(i), 1.0, 2, 1.0)[0])
           for i in range(200)}
  assert draws == {0, 1}
  draws = {int(decoding._choose(logits, jax.random.PRNGKey(i), 1.0, 0, 0.7)[0])
           for i in range(200)}
  assert draws == {0, 1}  # 0.5 < 0.7 <= 0.8: the two most likely tokens
