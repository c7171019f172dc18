"""Decoding against references that do not use the KV cache: full forward passes on the
growing prefix (greedy), teacher-forced log-likelihoods (beam scores), exact sampling
distributions (chi-square). Random non-trivial params (tests/random_params.py), so outputs
vary by row and position; a forced EOS makes rows finish at different steps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import gpt, t5_decoder_only, t5_v1_1
from random_params import random_params
from t5x_lite import decoding, models

VOCAB, MAX_LEN, BATCH = 32, 8, 8
EOS = decoding.EOS_ID


def _tiny(cfg, **overrides):
  cfg.model.update(dict(vocab_size=VOCAB, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        **overrides))
  return models.build(cfg.model)


def _params(model, batch, seed=0):
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))['params']
  return random_params(abstract, seed)


def _force_eos(params, token):
  """EOS gets a copy of `token`'s output column, 1.1 times larger: wherever `token` would be
  the argmax with a positive logit, EOS is (so rows finish at different steps)."""
  kernel = np.array(params['logits_head']['dense']['kernel'])
  kernel[:, EOS] = 1.1 * kernel[:, token]
  out = jax.tree.map(lambda x: x, params)
  out['logits_head']['dense']['kernel'] = kernel
  return out


def _after_eos_is_zero(tokens):
  tokens = np.asarray(tokens)
  done = np.cumsum(tokens == EOS, axis=-1) - (tokens == EOS) > 0
  return np.where(done, 0, tokens)


def _lengths(tokens):
  is_eos = np.asarray(tokens) == EOS
  return np.where(is_eos.any(-1), is_eos.argmax(-1) + 1, is_eos.shape[-1])


@pytest.fixture(scope='module')
def encdec():
  model = _tiny(t5_v1_1.get_config('tiny'))
  enc = np.random.RandomState(0).randint(2, VOCAB, (BATCH, 7)).astype(np.int32)
  enc[:, 5:] = 0  # padding
  enc[3, 3:] = 0
  params = _params(model, {'encoder_input_tokens': enc, 'decoder_input_tokens': enc})
  # EOS takes the place of the token most often second in the unforced greedy output.
  plain = np.asarray(decoding.encoder_decoder_generate(model, params, enc, MAX_LEN))
  params = _force_eos(params, np.bincount(plain[:, 1], minlength=VOCAB)[2:].argmax() + 2)
  apply = jax.jit(model.apply)

  def full(dec, rows=slice(None)):
    """Full forward (no cache) of decoder inputs `dec` for encoder rows `rows`."""
    return np.asarray(apply({'params': params}, {
        'encoder_input_tokens': enc[rows], 'decoder_input_tokens': dec}))
  return model, params, enc, full


def _greedy_by_full_forward(step_logits, start, n):
  """Reference greedy decode: re-run the full model on the growing prefix each step (right-
  padded to one fixed length, one compilation: causal attention ignores the padding)."""
  p = start.shape[1]
  tokens = np.concatenate([start, np.zeros((start.shape[0], n), start.dtype)], axis=1)
  for t in range(n):
    tokens[:, p + t] = np.argmax(step_logits(tokens)[:, p + t - 1], axis=-1)
  return _after_eos_is_zero(tokens[:, p:])


def _encdec_log_likelihood(full, tokens, rows=slice(None)):
  """Teacher-forced sum of log P(y_t | y_<t, x) through the first EOS; [rows]."""
  dec_in = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(full(dec_in, rows))
  picked = np.take_along_axis(np.asarray(logp), tokens[:, :, None], axis=-1)[:, :, 0]
  within = np.arange(tokens.shape[1]) < _lengths(tokens)[:, None]
  return np.where(within, picked, 0.0).sum(-1)


def _penalty(alpha, n):
  return ((5.0 + n) / 6.0) ** alpha  # GNMT / T5X, independent of decoding.brevity_penalty


def test_encoder_decoder_greedy_equals_full_forward_argmax_with_forced_eos(encdec):
  model, params, enc, full = encdec
  got = np.asarray(decoding.encoder_decoder_generate(model, params, enc, MAX_LEN))
  want = _greedy_by_full_forward(full, np.zeros((BATCH, 1), np.int32), MAX_LEN)
  np.testing.assert_array_equal(got, want)
  # The case is non-trivial: some rows stop early, some run on, outputs differ by row.
  lengths = _lengths(got)
  assert lengths.min() < MAX_LEN // 2 and len(set(lengths.tolist())) >= 3, lengths
  assert len({tuple(r) for r in got}) > BATCH // 2


def test_greedy_decode_and_beam_1_scores_are_penalised_log_likelihoods(encdec):
  """decode(beam_size=1) is greedy for any alpha; one beam is greedy at alpha 0, and with
  alpha > 0 (it may go on past greedy's EOS) scores at least as well."""
  model, params, enc, full = encdec
  greedy = np.asarray(decoding.encoder_decoder_generate(model, params, enc, MAX_LEN))
  for alpha in (0.0, 0.6):
    tokens, scores = decoding.decode(model, params, {'encoder_input_tokens': enc}, MAX_LEN,
                                     beam_size=1, alpha=alpha)
    np.testing.assert_array_equal(tokens, greedy)
    want = _encdec_log_likelihood(full, greedy) / _penalty(alpha, _lengths(greedy))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    tokens, scores = decoding.beam_search(model, params, {'encoder_input_tokens': enc}, MAX_LEN,
                                          beam_size=1, alpha=alpha)
    tokens, scores = np.asarray(tokens)[:, 0], np.asarray(scores)[:, 0]
    np.testing.assert_allclose(
        scores, _encdec_log_likelihood(full, tokens) / _penalty(alpha, _lengths(tokens)),
        rtol=1e-5, atol=1e-5)
    if alpha == 0:
      np.testing.assert_array_equal(tokens, greedy)
    assert np.all(scores >= want - 1e-5)


def test_ids_beyond_the_vocabulary_are_never_chosen_and_scores_stay_the_models(encdec):
  """num_ids (the vocabulary's size, below the model's padded vocab_size): greedy is the
  full forward's argmax over the ids below it, beam search and sampling never pick the
  others, and scores are still the model's own penalised log-likelihoods."""
  model, params, enc, full = encdec
  num_ids, batch = VOCAB - 8, {'encoder_input_tokens': enc}
  plain, _ = decoding.decode(model, params, batch, MAX_LEN)
  assert (plain >= num_ids).any()  # without num_ids, greedy picks some of them here

  def masked(dec):
    return np.where(np.arange(VOCAB) < num_ids, full(dec), -np.inf)
  greedy, scores = decoding.decode(model, params, batch, MAX_LEN, num_ids=num_ids)
  np.testing.assert_array_equal(
      greedy, _greedy_by_full_forward(masked, np.zeros((BATCH, 1), np.int32), MAX_LEN))
  np.testing.assert_allclose(
      scores, _encdec_log_likelihood(full, greedy) / _penalty(0.6, _lengths(greedy)),
      rtol=1e-5, atol=1e-5)
  beams, beam_scores = decoding.decode(model, params, batch, MAX_LEN, beam_size=3,
                                       num_ids=num_ids)
  np.testing.assert_allclose(
      beam_scores, _encdec_log_likelihood(full, beams) / _penalty(0.6, _lengths(beams)),
      rtol=1e-5, atol=1e-5)
  sampled = [decoding.decode(model, params, batch, MAX_LEN, temperature=3.0, num_ids=num_ids,
                             rng=jax.random.PRNGKey(seed))[0] for seed in range(4)]
  for tokens in [beams] + sampled:
    assert (tokens < num_ids).all()


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_beam_scores_equal_teacher_forced_scores_and_beat_greedy(encdec, alpha):
  model, params, enc, full = encdec
  k = 4
  tokens, scores = decoding.beam_search(model, params, {'encoder_input_tokens': enc}, MAX_LEN,
                                        beam_size=k, alpha=alpha)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (BATCH, k, MAX_LEN) and scores.shape == (BATCH, k)
  flat = tokens.reshape(-1, MAX_LEN)
  np.testing.assert_array_equal(flat, _after_eos_is_zero(flat))  # zeros after EOS
  rows = np.repeat(np.arange(BATCH), k)
  ll = _encdec_log_likelihood(full, flat, rows)
  want = (ll / _penalty(alpha, _lengths(flat))).reshape(BATCH, k)
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
  for row in range(BATCH):  # K distinct hypotheses per example
    assert len({tuple(t) for t in tokens[row]}) == k
  # Beam search finds sequences at least as likely as greedy's, strictly so somewhere.
  greedy = np.asarray(decoding.encoder_decoder_generate(model, params, enc, MAX_LEN))
  greedy_score = _encdec_log_likelihood(full, greedy) / _penalty(alpha, _lengths(greedy))
  assert np.all(scores[:, 0] >= greedy_score - 1e-5)
  assert np.any(scores[:, 0] > greedy_score + 1e-3)


class _Hesitant:
  """`model` with its logits times `scale` (confident) and EOS never far behind: its logit is
  at least the best other token's minus `gap`, as in a trained model that always weighs
  stopping. Beam search then finishes K short, unlikely hypotheses within a few steps while
  the likely continuations end later: the case where stopping at K finished hypotheses
  (Hugging Face's early_stopping=True) loses. Plain random models almost never weigh EOS
  so (both stopping rules gave equal results on them)."""

  def __init__(self, model, scale, gap):
    self.model, self.cfg, self.scale, self.gap = model, model.cfg, scale, gap
    self.init, self.encode, self.decode = model.init, model.encode, model.decode

  def _logits(self, logits):
    logits = logits * self.scale
    runner_up = jnp.max(logits.at[..., EOS].set(-jnp.inf), axis=-1) - self.gap
    return logits.at[..., EOS].max(runner_up)

  def apply(self, *args, method=None, **kwargs):
    out = self.model.apply(*args, method=method, **kwargs)
    if isinstance(out, tuple):  # cached decoder step: (logits, mutated cache)
      return self._logits(out[0]), out[1]
    return out if method == self.model.encode else self._logits(out)


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_beam_search_keeps_going_while_a_live_beam_can_still_win(alpha):
  """T5X's stopping rule: over 128 inputs, beam search (K = 4) scores at least as well as
  greedy, both scored by teacher forcing, wherever greedy ends with EOS. (Where greedy runs
  out of length without EOS, K finished hypotheses outrank it, as in T5X.) Stopping at K
  finished hypotheses (the old rule) scored below greedy on 9+ of these inputs."""
  n, length, k = 128, 10, 4
  base = _tiny(t5_v1_1.get_config('tiny'))
  enc = np.random.RandomState(2).randint(2, VOCAB, (n, 7)).astype(np.int32)
  params = _params(base, {'encoder_input_tokens': enc, 'decoder_input_tokens': enc})
  # EOS takes the place of the token whose first greedy occurrence most often lies at steps
  # 3..length-1, so greedy outputs end at varied, not too early, steps.
  plain = np.asarray(decoding.encoder_decoder_generate(base, params, enc, length))
  def ends_between_3_and_length(t):
    first = np.where((plain == t).any(1), (plain == t).argmax(1) + 1, 0)
    return ((first >= 3) & (first < length)).sum()
  params = _force_eos(params, max(range(2, VOCAB), key=ends_between_3_and_length))
  model = _Hesitant(base, scale=8.0, gap=2.0)
  apply = jax.jit(model.apply)

  def full(dec, rows=slice(None)):
    return np.asarray(apply({'params': params}, {
        'encoder_input_tokens': enc[rows], 'decoder_input_tokens': dec}))

  def score(tokens):
    return _encdec_log_likelihood(full, tokens) / _penalty(alpha, _lengths(tokens))
  greedy = np.asarray(decoding.encoder_decoder_generate(model, params, enc, length))
  tokens, scores = decoding.beam_search(model, params, {'encoder_input_tokens': enc}, length,
                                        beam_size=k, alpha=alpha)
  best = np.asarray(tokens)[:, 0]
  np.testing.assert_allclose(np.asarray(scores)[:, 0], score(best), rtol=1e-4, atol=1e-4)
  ended = _lengths(greedy) < length
  assert ended.sum() >= 40 and len(set(_lengths(greedy)[ended].tolist())) >= 5
  worse = ended & (score(best) < score(greedy) - 1e-4)
  assert not worse.any(), (np.nonzero(worse)[0], score(best)[worse], score(greedy)[worse])


def test_beam_search_with_scanned_layers_equals_unscanned(encdec):
  """The cache is reordered along each leaf's own batch axis (axis 1 when layers are
  scanned), so both layouts give the same beams."""
  model, params, enc, _ = encdec
  scanned = _tiny(t5_v1_1.get_config('tiny'), scan_layers=True)
  stacked = {**params, 'encoder': models.stack_layers(params['encoder'], 2),
             'decoder': models.stack_layers(params['decoder'], 2)}
  want = decoding.beam_search(model, params, {'encoder_input_tokens': enc}, MAX_LEN, 3)
  got = decoding.beam_search(scanned, stacked, {'encoder_input_tokens': enc}, MAX_LEN, 3)
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5, atol=1e-5)


def test_encoder_decoder_learned_positions_decode_to_the_table_edge_and_no_further():
  """With learned absolute positions the decoder feeds BOS and max_length - 1 new tokens:
  max_length = max_position_embeddings decodes (greedy equals the full forward pass);
  one more, or encoder inputs longer than the table, is refused (past it jnp.take reads
  NaN, so decoding would silently emit garbage)."""
  model = _tiny(t5_v1_1.get_config('tiny'), position_embedding='absolute',
                max_position_embeddings=MAX_LEN)
  enc = np.random.RandomState(1).randint(2, VOCAB, (BATCH, MAX_LEN)).astype(np.int32)
  params = _params(model, {'encoder_input_tokens': enc, 'decoder_input_tokens': enc})
  got = np.asarray(decoding.encoder_decoder_generate(model, params, enc, MAX_LEN))
  apply = jax.jit(model.apply)
  want = _greedy_by_full_forward(
      lambda dec: np.asarray(apply({'params': params}, {'encoder_input_tokens': enc,
                                                        'decoder_input_tokens': dec[:, :-1]})),
      np.zeros((BATCH, 1), np.int32), MAX_LEN)
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match=f'decoding max_length={MAX_LEN + 1} need {MAX_LEN + 1} '
                                       f'positions; .*max_position_embeddings={MAX_LEN}'):
    decoding.decode(model, params, {'encoder_input_tokens': enc}, MAX_LEN + 1, beam_size=2)
  wide = np.concatenate([enc, enc[:, :1]], 1)
  with pytest.raises(ValueError, match=f'encoder inputs of {MAX_LEN + 1} tokens need'):
    decoding.encoder_decoder_generate(model, params, wide, 2)


@pytest.fixture(scope='module')
def prefix_lm():
  model = _tiny(t5_decoder_only.get_config('tiny'))
  prompt = np.random.RandomState(1).randint(2, VOCAB, (4, 5)).astype(np.int32)
  params = _params(model, {'decoder_input_tokens': prompt}, seed=1)
  apply = jax.jit(model.apply)

  def full(tokens):
    prefix = np.zeros_like(tokens)
    prefix[:, :prompt.shape[1]] = 1
    return np.asarray(apply({'params': params}, {
        'decoder_input_tokens': tokens, 'decoder_causal_attention': prefix}))
  return model, params, prompt, full


def test_decoder_only_prefix_lm_greedy_equals_full_forward_argmax(prefix_lm):
  model, params, prompt, full = prefix_lm
  got = np.asarray(decoding.decoder_only_generate(model, params, prompt, 6, prefix_lm=True))
  np.testing.assert_array_equal(got, _greedy_by_full_forward(full, prompt, 6))


def test_decoder_only_beam_search_continues_the_prompt(prefix_lm):
  model, params, prompt, full = prefix_lm
  k, n, alpha = 3, 6, 0.6
  tokens, scores = decoding.beam_search(model, params, {'decoder_input_tokens': prompt}, n,
                                        beam_size=k, alpha=alpha, prefix_lm=True)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  # Reference: prompt + beam through the full model (bidirectional prompt), teacher-forced.
  p = prompt.shape[1]
  for beam in range(k):
    seq = np.concatenate([prompt, tokens[:, beam]], axis=1)
    logp = np.asarray(jax.nn.log_softmax(full(seq)))[:, p - 1:-1]
    picked = np.take_along_axis(logp, tokens[:, beam, :, None], axis=-1)[:, :, 0]
    lengths = _lengths(tokens[:, beam])
    ll = np.where(np.arange(n) < lengths[:, None], picked, 0).sum(-1)
    np.testing.assert_allclose(scores[:, beam], ll / _penalty(alpha, lengths), rtol=1e-5,
                               atol=1e-5)
  greedy = np.asarray(decoding.decoder_only_generate(model, params, prompt, n, prefix_lm=True))
  one = decoding.beam_search(model, params, {'decoder_input_tokens': prompt}, n, beam_size=1,
                             alpha=0.0, prefix_lm=True)[0]
  np.testing.assert_array_equal(np.asarray(one)[:, 0], greedy)


_RAGGED_LENGTHS = np.array([5, 2, 7, 1, 4, 7])


@pytest.mark.parametrize('kind', ['prefix_lm', 'causal_relative', 'causal_learned_positions'])
@pytest.mark.parametrize('beam_size', [1, 3])
def test_decoder_only_prompts_of_different_lengths_decode_as_each_alone(kind, beam_size):
  """One batch of prompts of lengths 1..7 (`decoder_prompt_lengths`, each row's prompt first,
  random ids after it) gives every row the tokens and score that row gets decoded alone:
  pads are masked out of attention and, with a learned position table, every real token
  keeps its position (a table of 12 fits the longest prompt's 7 + 6 - 1, not the batch's
  width of 9 + 5)."""
  if kind == 'causal_learned_positions':
    model = _tiny(gpt.get_config('small'), num_decoder_layers=2, max_position_embeddings=12)
  else:
    model = _tiny(t5_decoder_only.get_config('tiny'))
  prefix_lm = kind == 'prefix_lm'
  rng = np.random.RandomState(3)
  tokens = rng.randint(2, VOCAB, (len(_RAGGED_LENGTHS), 9)).astype(np.int32)
  tokens[:, 0] = 0  # BOS
  params = _params(model, {'decoder_input_tokens': tokens}, seed=2)
  got, scores = decoding.decode(
      model, params,
      {'decoder_input_tokens': tokens, 'decoder_prompt_lengths': _RAGGED_LENGTHS}, 6,
      beam_size=beam_size, prefix_lm=prefix_lm)
  for row, n in enumerate(_RAGGED_LENGTHS):
    alone, score = decoding.decode(model, params,
                                   {'decoder_input_tokens': tokens[row:row + 1, :n]}, 6,
                                   beam_size=beam_size, prefix_lm=prefix_lm)
    np.testing.assert_array_equal(got[row], alone[0])
    np.testing.assert_allclose(scores[row], score[0], rtol=1e-5, atol=1e-5)
  assert len({tuple(r) for r in got}) > 3  # rows differ: the comparison can tell them apart


def test_bad_prompt_lengths_are_one_line_errors(prefix_lm):
  model, params, prompt, _ = prefix_lm
  for lengths in ([0, 5, 5, 5], [6, 5, 5, 5], [5, 5], [4.5, 5, 5, 5]):
    with pytest.raises(ValueError, match=r'decoder_prompt_lengths must give each of the 4 rows '
                                         r'an integer length in 1\.\.5; got'):
      decoding.decode(model, params, {'decoder_input_tokens': prompt,
                                      'decoder_prompt_lengths': np.array(lengths)}, 3)


def test_prompt_lengths_for_an_encoder_decoder_are_an_error(encdec):
  model, params, enc, _ = encdec
  with pytest.raises(ValueError, match='decoder_prompt_lengths is for decoder-only prompts'):
    decoding.decode(model, params, {'encoder_input_tokens': enc,
                                    'decoder_prompt_lengths': np.full(len(enc), 3)}, 3)


def test_bad_beam_sizes_sampling_options_and_encoder_only_are_one_line_errors(encdec):
  model, params, enc, _ = encdec
  for k in (0, VOCAB + 1):
    with pytest.raises(ValueError, match=rf'--beam_size={k} must be between 1 and the '
                                         rf'vocabulary size \({VOCAB}\)'):
      decoding.beam_search(model, params, {'encoder_input_tokens': enc}, MAX_LEN, k)
  bert = models.build({'family': 'encoder', 'vocab_size': VOCAB, 'd_model': 32, 'd_ff': 64,
                       'num_heads': 2, 'd_kv': 16, 'num_encoder_layers': 1})
  with pytest.raises(ValueError, match="model.family='encoder' does not generate text"):
    decoding.beam_search(bert, {}, {'encoder_input_tokens': enc}, MAX_LEN, 2)
  with pytest.raises(ValueError, match='sampling draws one sequence'):
    decoding.decode(model, params, {'encoder_input_tokens': enc}, MAX_LEN, beam_size=2,
                    temperature=1.0)
  with pytest.raises(ValueError, match=r'--top_k=5 / --top_p=1.0 with --temperature=0: '
                                       r'sampling needs --temperature > 0'):
    decoding.decode(model, params, {'encoder_input_tokens': enc}, MAX_LEN, top_k=5)
  with pytest.raises(ValueError, match=rf'--top_k={VOCAB + 1} is larger than the vocabulary '
                                       rf'size \({VOCAB}\)'):
    decoding.decode(model, params, {'encoder_input_tokens': enc}, MAX_LEN, temperature=1.0,
                    top_k=VOCAB + 1)


# ----------------------------------------------------------------- sampling frequencies
_P = np.array([0.5, 0.3, 0.15, 0.05])
_DRAWS = 20000


def _frequencies(temperature, top_k, top_p, probs=_P):
  logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32))[None], (_DRAWS, 1))
  draws = np.asarray(jax.jit(decoding._choose, static_argnums=(2, 3, 4))(
      logits, jax.random.PRNGKey(0), temperature, top_k, top_p))
  return np.bincount(draws, minlength=len(_P))


@pytest.mark.parametrize('temperature,top_k,top_p,expected,probs', [
    (1.0, 0, 1.0, _P, _P),
    (1.0, 2, 1.0, [0.625, 0.375, 0, 0], _P),   # top-2 renormalised: 0.5/0.8, 0.3/0.8
    (1.0, 0, 0.7, [0.625, 0.375, 0, 0], _P),   # 0.5 < 0.7 <= 0.8: the two most likely
    (1.0, 0, 0.9, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], _P),
    (2.0, 0, 1.0, np.sqrt(_P) / np.sqrt(_P).sum(), _P),   # p ** (1/T), renormalised
    (0.5, 3, 1.0, _P[:3] ** 2 / (_P[:3] ** 2).sum(), _P),
    # Ties at the boundary: exactly k tokens / the smallest set reaching top_p, the lower
    # id first (every tied token was kept: top_k=1 sampled both maxima half the time)
    (1.0, 1, 1.0, [1, 0, 0, 0], [0.3, 0.3, 0.2, 0.2]),
    (1.0, 0, 1e-6, [1, 0, 0, 0], [0.3, 0.3, 0.2, 0.2]),
    (1.0, 2, 1.0, [2 / 3, 1 / 3, 0, 0], [0.4, 0.2, 0.2, 0.2]),
    (1.0, 0, 0.6, [2 / 3, 1 / 3, 0, 0], [0.4, 0.2, 0.2, 0.2]),
    (1.0, 0, 0.75, [0.875, 0.125, 0, 0], [0.7, 0.1, 0.1, 0.1]),
])
def test_sampling_frequencies_chi_square(temperature, top_k, top_p, expected, probs):
  expected = np.concatenate([np.asarray(expected, float), np.zeros(4)])[:4]
  counts = _frequencies(temperature, top_k, top_p, probs)
  support = expected > 0
  assert counts[~support].sum() == 0, counts
  if support.sum() > 1:  # (one token: the line above is the whole check)
    p_value = stats.chisquare(counts[support], _DRAWS * expected[support]).pvalue
    assert p_value > 1e-3, (counts, _DRAWS * expected)
