"""Autoregressive decoding with the KV cache: greedy, temperature / top-k / top-p sampling,
and beam search with the T5X / GNMT length penalty.

Greedy worked example (encoder-decoder): the encoder runs once; the decoder starts from
token 0 (T5's BOS = pad) and, one position per step, feeds back argmax(logits). After a
row emits EOS (1) every later position is 0. So with max_length 4, a row whose argmaxes
are [7, 9, 1, 5] returns [7, 9, 1, 0].

Decoder-only: the prompt is prefilled in one cached call (with `decoder_causal_attention`
marking it as the bidirectional prefix when the model was trained as a prefix LM), then
tokens are generated one at a time. Prompts of different lengths share a batch left-padded,
their pads masked out and their positions shifted past them (`_prompt`, `_left_aligned`).
Only the generated tokens are returned. Every chosen token but the last is fed back, so a
prompt of P tokens continued by max_length tokens takes P + max_length - 1 positions: a
prefix-LM training row's inputs_length + targets_length when P = BOS + inputs_length, so
what trains with learned absolute positions also decodes.

Scores (beam search, and `decode` for every method): score = log P(y | x) / lp(|y|) with
lp(n) = ((5 + n) / 6) ** alpha (Wu et al. 2016, as in T5X `brevity_penalty`), where
log P sums the model's log-softmax over the generated tokens up to and including the first
EOS and |y| counts them (max_length when no EOS). alpha = 0 gives the plain log-likelihood.

Beam search (`beam_search`): K beams per example, flattened into the batch axis (row
b * K + k). Each step takes the 2K best one-token extensions by log P; those among the
top K that end in EOS become finished hypotheses (the K best by score are kept), the K best
that do not end in EOS stay alive. An example stops, as in T5X's beam search, once all K
finished slots are full and its best alive beam, given the most favourable length penalty
it could still get, cannot beat the worst finished one; at max_length, missing finished
slots are filled with the alive beams. With K = 1 and alpha = 0 this is greedy decoding
(with alpha > 0 the one beam may go on past greedy's EOS to a longer, better-scored
sequence, as in T5X: `decode` does greedy decoding itself). The model's decode cache is an
opaque pytree: beams are expanded and reordered along each leaf's batch axis, found by
comparing the cache shapes at two batch sizes, so new cache entries need no change here.
"""
import functools
import math
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import families

EOS_ID = 1
DEFAULT_ALPHA = 0.6  # T5X's default length-penalty exponent
_NEG = -1.0e7        # log-prob of impossible beams (finite: no inf - inf = nan)
_EMPTY = -1.0e9      # score of an empty finished slot


def brevity_penalty(alpha: float, length):
  """GNMT length penalty ((5 + length) / 6) ** alpha (T5X `brevity_penalty`)."""
  return ((5.0 + length) / 6.0) ** alpha


# ---------------------------------------------------------------------- cache plumbing
def _init_cache_shapes(model, batch):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, decode=True))['cache']


def _empty_cache(model, batch: Dict[str, jax.Array]):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _init_cache_shapes(model, batch))


def _cache_batch_axes(model, batch):
  """Per cache leaf, the axis that grows with the batch (None for e.g. a decode index)."""
  bigger = jax.tree.map(lambda x: jnp.concatenate([x, x[:1]]), batch)
  small, large = _init_cache_shapes(model, batch), _init_cache_shapes(model, bigger)

  def axis(a, b):
    diff = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
    return diff[0] if diff else None
  return jax.tree.map(axis, small, large)


def _map_batch(fn, cache, axes):
  """fn(leaf, batch_axis) on every cache leaf that has a batch axis."""
  return jax.tree.map(lambda x, a: x if a is None else fn(x, a), cache, axes)


def _reordered_axes(axes, beam_size: int):
  """The cache leaves a beam step must reorder: none with one beam (each row's parent is
  itself), else all but the cross-attention keys/values (models.py names them
  'cross_attention'), which are the same for every beam of an example: gathering them
  copied [rows, encoder length, heads, d_kv] twice per layer and step."""
  if beam_size == 1:
    return jax.tree.map(lambda a: None, axes, is_leaf=lambda a: a is None)

  def axis(path, a):
    cross = any(getattr(p, 'key', None) == 'cross_attention' for p in path)
    return None if cross else a
  return jax.tree_util.tree_map_with_path(axis, axes, is_leaf=lambda a: a is None)


def _encoder_decoder_step(model, params, enc, encoded):
  """step(cache, tokens [rows, n]) -> (logits [rows, n, vocab], cache). `encoded` for the
  first step (it fills the cross-attention key/value cache); None for every later one, which
  reads that cache with no projection and no branch in the loop body."""
  def step(cache, token):
    logits, mutated = model.apply(
        {'params': params, 'cache': cache}, encoded,
        {'encoder_input_tokens': enc, 'decoder_input_tokens': token}, decode=True,
        method=model.decode, mutable=['cache'])
    return logits, mutated['cache']
  return step


def _decoder_only_step(model, params):
  def step(cache, tokens, prefix=None, segments=None):
    batch_in = {'decoder_input_tokens': tokens}
    if prefix is not None:
      batch_in['decoder_causal_attention'] = prefix
    if segments is not None:  # the prefill of left-padded prompts: pads are segment 0
      batch_in['decoder_segment_ids'] = segments
    logits, mutated = model.apply({'params': params, 'cache': cache}, batch_in, decode=True,
                                  mutable=['cache'])
    return logits, mutated['cache']
  return step


def _prompt(model, batch: Dict[str, np.ndarray], max_length: int):
  """(tokens, prompt lengths or None): what generation starts from, the encoder inputs or a
  decoder-only model's prompts, once `check_positions_fit` passes for the longest prompt.

  Decoder-only prompts of different lengths go in one batch as `decoder_input_tokens`
  [rows, L], each row's prompt first (what follows it is ignored), with
  `decoder_prompt_lengths` [rows] (1..L); without it every row's prompt is all L tokens."""
  lengths = batch.get('decoder_prompt_lengths')
  if how_it_generates(model) == 'encoder_decoder':
    if lengths is not None:  # the encoder's padding is its zeros: nothing would read these
      raise ValueError('decoder_prompt_lengths is for decoder-only prompts; an encoder-decoder '
                       "model reads encoder_input_tokens' padding (zeros).")
    tokens = batch['encoder_input_tokens']
    check_positions_fit(model.cfg, tokens.shape[1], max_length, encoder_decoder=True)
    return tokens, None
  tokens = batch['decoder_input_tokens']
  longest = tokens.shape[1]
  if lengths is not None:
    given = np.asarray(lengths)
    lengths = given.astype(np.int32)
    if (not np.issubdtype(given.dtype, np.integer) or lengths.shape != tokens.shape[:1]
        or not ((lengths >= 1) & (lengths <= longest)).all()):
      raise ValueError(f'decoder_prompt_lengths must give each of the {tokens.shape[0]} rows '
                       f'an integer length in 1..{longest}; got {given.tolist()}.')
    longest = int(lengths.max())
  check_positions_fit(model.cfg, longest, max_length)
  return tokens, lengths


def _left_aligned(tokens, lengths):
  """Right-padded prompts -> (left-padded prompts, segment ids: 0 on the pads, 1 on the prompt).

  >>> t, s = _left_aligned(jnp.array([[5, 6, 7], [8, 0, 0]]), jnp.array([3, 1]))
  >>> t.tolist(), s.tolist()
  ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
  """
  length = tokens.shape[1]
  shift = (length - lengths)[:, None]
  column = jnp.arange(length)[None, :]
  real = column >= shift
  moved = jnp.take_along_axis(tokens, jnp.clip(column - shift, 0, length - 1), axis=1)
  return jnp.where(real, moved, 0), real.astype(jnp.int32)


def _start(model, params, tokens, max_length: int, prefix_lm: bool,
           beams: Optional[int] = None, lengths=None):
  """(step, cache, cache batch axes, next-token logits) once the model has read `tokens`
  (`_prompt`). Sampling (`beams` None): one row per example, no axes. Beam search: each
  example repeated `beams` times, and each cache leaf's batch axis (to reorder beams).

  Encoder-decoder: the encoder runs once per example, the decoder starts from token 0.
  Decoder-only: the prompt is prefilled in one call (bidirectionally for a prefix LM), once
  per example, then repeated. The cache holds exactly the positions fed (`_feed`). With
  `lengths` (`_prompt`), shorter prompts are moved to the end of the row and their pads
  masked out of every attention (the model's `key_valid` cache), so each row
  decodes as it would alone.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  rows, length = tokens.shape
  if how_it_generates(model) == 'encoder_decoder':
    encoded = model.apply({'params': params}, {'encoder_input_tokens': tokens},
                          method=model.encode)
    if beams:
      tokens, encoded = jnp.repeat(tokens, beams, axis=0), jnp.repeat(encoded, beams, axis=0)
    full = {'encoder_input_tokens': tokens,
            'decoder_input_tokens': jnp.zeros((tokens.shape[0], max_length), jnp.int32)}
    first = _encoder_decoder_step(model, params, tokens, encoded)
    logits, cache = first(_empty_cache(model, full), jnp.zeros((tokens.shape[0], 1), jnp.int32))
    axes = _cache_batch_axes(model, full) if beams else None
    step = _encoder_decoder_step(model, params, tokens, None)  # later steps: cached keys/values
    return step, cache, axes, logits[:, -1]
  full = {'decoder_input_tokens': jnp.zeros((rows, length + max_length - 1), jnp.int32)}
  step = _decoder_only_step(model, params)
  prefix = jnp.ones((rows, length), jnp.int32) if prefix_lm else None
  segments = None
  if lengths is not None:
    tokens, segments = _left_aligned(tokens, lengths)
  logits, cache = step(_empty_cache(model, full), tokens, prefix, segments)
  if not beams:
    return step, cache, None, logits[:, -1]
  axes = _cache_batch_axes(model, full)
  cache = _map_batch(lambda x, a: jnp.repeat(x, beams, axis=a), cache, axes)
  return step, cache, axes, jnp.repeat(logits[:, -1], beams, axis=0)


def check_positions_fit(cfg, prompt_length: int, max_length: int,
                        encoder_decoder: bool = False, length_name: str = 'max_length') -> None:
  """A model with learned absolute positions decodes only as far as its position table
  reaches (a position past it reads NaN). Decoder-only: the prompt and every new token but
  the last (never fed back, `_feed`) must fit. Encoder-decoder: the encoder's inputs, and
  the decoder's BOS plus every new token but the last (max_length positions). The error
  names the new-token count as `length_name` (the flag that set it, e.g. bench's
  '--decode_length')."""
  if cfg.position_embedding != 'absolute':
    return
  limit = cfg.max_position_embeddings
  if encoder_decoder:
    for what, needed in ((f'encoder inputs of {prompt_length} tokens', prompt_length),
                         (f'decoding {length_name}={max_length}', max_length)):
      if needed > limit:
        raise ValueError(f'{what} need {needed} positions; the model has '
                         f'model.max_position_embeddings={limit}.')
  elif prompt_length + max_length - 1 > limit:
    raise ValueError(f'a prompt of {prompt_length} tokens continued by {length_name}='
                     f'{max_length} needs {prompt_length + max_length - 1} positions; the model '
                     f'has model.max_position_embeddings={limit}.')


def check_options(vocab_size: int, beam_size: int = 1, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0) -> None:
  """One-line errors, naming the flags, for decoding options `decode` cannot honour (infer
  calls it before loading the model)."""
  check_beam_size(beam_size, vocab_size)
  if not 0 <= temperature < math.inf or top_k < 0 or not 0 < top_p <= 1:  # (nan fails too)
    raise ValueError(f'--temperature={temperature} / --top_k={top_k} / --top_p={top_p}: need '
                     'finite temperature >= 0, top_k >= 0 and 0 < top_p <= 1.')
  if temperature == 0 and (top_k or top_p < 1):
    raise ValueError(f'--top_k={top_k} / --top_p={top_p} with --temperature=0: sampling needs '
                     '--temperature > 0 (at 0 decoding is greedy or beam search).')
  if top_k > vocab_size:
    raise ValueError(f'--top_k={top_k} is larger than the vocabulary size ({vocab_size}).')
  if beam_size > 1 and temperature > 0:
    raise ValueError(f'--beam_size={beam_size} with --temperature={temperature}: sampling '
                     'draws one sequence per input; use --beam_size=1 to sample.')


# ------------------------------------------------------------------ greedy / sampling
def _without_unused_ids(logits, num_ids: Optional[int]):
  """`logits` [..., vocab] with ids >= num_ids (the rows a model's vocab_size pads the
  vocabulary's ids to, e.g. 32128 for T5's 32100; no text has them) at -inf."""
  if num_ids is None or num_ids >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < num_ids, logits, -jnp.inf)


def _choose(logits, rng, temperature: float, top_k: int, top_p: float):
  """Next token from [batch, vocab] float32 logits."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  # Shifted by the row's max first: a tiny temperature then gives -inf, never an overflow to
  # +inf, so it tends to greedy, as it should; the max stays 0 also where a subnormal
  # temperature is flushed to zero (0 / 0 would be NaN).
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  logits = jnp.where(shifted == 0, 0.0, shifted / temperature)
  if top_k or top_p < 1.0:
    # Sampled among candidates ranked by lax.top_k (ties to the lower id, as argmax):
    # exactly the k likeliest, then the smallest prefix whose mass reaches top_p, however
    # many logits tie at a boundary (comparing with the boundary's logit kept every tied
    # token: top_k=1 over two equal maxima sampled both). top_k alone needs no full sort:
    # 1.7 ms vs 176 ms per step for 32 rows of 32,128 logits on a 2-core CPU.
    logits, ids = jax.lax.top_k(logits, top_k or logits.shape[-1])
    if top_p < 1.0:
      cum = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
      keep = jnp.sum(cum < top_p, axis=-1, keepdims=True) + 1  # always the top token
      logits = jnp.where(jnp.arange(logits.shape[-1]) < keep, logits, -jnp.inf)
    choice = jax.random.categorical(rng, logits)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def _feed(step_fn, cache, tokens, logits, i, max_length: int):
  """(next-token logits, cache) after feeding the tokens [rows] chosen at step i, except at
  the last step: those logits would go unused, and the position would lie one past what
  training rows use (`check_positions_fit`)."""
  def feed():
    new_logits, new_cache = step_fn(cache, tokens[:, None])
    return new_logits[:, -1], new_cache
  return jax.lax.cond(i + 1 < max_length, feed, lambda: (logits, cache))


def _token_log_prob(logits, token):
  return jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]


def _generate(step_fn, cache, first_logits, max_length, rng, temperature, top_k, top_p,
              num_ids=None):
  """Tokens [batch, max_length] and their summed model log-prob (through the first EOS).
  Stops once every row has ended (later tokens stay 0). Ids >= num_ids are never chosen."""

  def body(state):
    i, cache, logits, done, log_prob, tokens = state
    token = _choose(_without_unused_ids(logits, num_ids), jax.random.fold_in(rng, i),
                    temperature, top_k, top_p)
    token = jnp.where(done, 0, token)
    log_prob = log_prob + jnp.where(done, 0.0, _token_log_prob(logits, token))
    done = done | (token == EOS_ID)
    logits, cache = _feed(step_fn, cache, token, logits, i, max_length)
    return i + 1, cache, logits, done, log_prob, tokens.at[:, i].set(token)

  rows = first_logits.shape[0]
  state = (jnp.int32(0), cache, first_logits, jnp.zeros((rows,), bool),
           jnp.zeros((rows,), jnp.float32), jnp.zeros((rows, max_length), jnp.int32))
  *_, log_prob, tokens = jax.lax.while_loop(lambda s: (s[0] < max_length) & ~s[3].all(), body,
                                            state)
  return tokens, log_prob


def _lengths(tokens):
  """Generated length through the first EOS (max_length when there is none)."""
  is_eos = tokens == EOS_ID
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1) + 1, tokens.shape[-1])


@functools.partial(jax.jit, static_argnames=('model', 'max_length', 'temperature', 'top_k',
                                             'top_p', 'prefix_lm', 'num_ids'))
def _sample(model, params, tokens, max_length, rng, temperature, top_k, top_p, prefix_lm,
            num_ids=None, lengths=None):
  """(tokens [rows, max_length], their summed log-prob); `tokens` as `_start` reads them."""
  step, cache, _, logits = _start(model, params, tokens, max_length, prefix_lm,
                                  lengths=lengths)
  return _generate(step, cache, logits, max_length, rng, temperature, top_k, top_p, num_ids)


def encoder_decoder_generate(model, params, encoder_input_tokens, max_length: int,
                             rng=None, temperature: float = 0.0, top_k: int = 0,
                             top_p: float = 1.0):
  """[batch, inputs_length] -> [batch, max_length] generated target tokens."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  tokens, _ = _prompt(model, {'encoder_input_tokens': encoder_input_tokens}, max_length)
  return _sample(model, params, tokens, max_length, rng, temperature, top_k, top_p, False)[0]


def decoder_only_generate(model, params, prompt_tokens, max_length: int, rng=None,
                          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                          prefix_lm: bool = False):
  """Continue equal-length prompts [batch, prompt_len] by `max_length` tokens (`decode`
  takes prompts of different lengths, `_prompt`)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  tokens, _ = _prompt(model, {'decoder_input_tokens': prompt_tokens}, max_length)
  return _sample(model, params, tokens, max_length, rng, temperature, top_k, top_p,
                 prefix_lm)[0]


def how_it_generates(model) -> str:
  """'encoder_decoder' or 'decoder_only', from the family table (families.py); a family
  that does not generate (encoder-only) is a ValueError."""
  generates = families.get(model.cfg.family).generates
  if generates is None:
    raise ValueError(f'model.family={model.cfg.family!r} does not generate text; decoding '
                     'needs encoder_decoder or decoder.')
  return generates


# ------------------------------------------------------------------------ beam search


def _beam_loop(step_fn, cache, axes, logits, batch: int, beam_size: int, max_length: int,
               alpha: float, num_ids: Optional[int] = None):
  """Beam search from `logits` [batch * K, vocab] (next-token logits of each beam, all
  beams of an example identical) and the matching cache. Returns tokens
  [batch, K, max_length] and scores [batch, K], best first. Ids >= num_ids are never
  chosen (scores stay the model's log-probs)."""
  k = beam_size
  vocab = logits.shape[-1]
  positions = jnp.arange(max_length)
  axes = _reordered_axes(axes, k)
  # Only beam 0 is live at the start, so the K copies do not fill the beam with duplicates.
  alive_lp = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, _NEG)[None], (batch, 1))
  zeros = jnp.zeros((batch, k, max_length), jnp.int32)
  state = (jnp.int32(0), cache, logits, zeros, alive_lp, zeros,
           jnp.full((batch, k), _EMPTY), jnp.zeros((batch, k), bool))

  def done(i, alive_lp, fin_scores, finished):
    """[batch]: T5X's early-stopping test (`beam_search_loop_cond_fn` in t5x/decoding.py):
    all K finished slots are full and the best alive beam, divided by the largest length
    penalty it could still get (at max_length for alpha >= 0, T5X's
    `min_brevity_penalty`), scores below the worst finished one, so no alive beam can
    still enter the finished set. (Stopping at K finished hypotheses, like Hugging Face's
    early_stopping=True, returned answers worse than greedy's.)"""
    penalty = jnp.maximum(brevity_penalty(alpha, i + 1), brevity_penalty(alpha, max_length))
    best_alive = alive_lp.max(-1) / penalty
    return finished.all(-1) & (fin_scores.min(-1) > best_alive)

  def not_done(state):
    i, _, _, _, alive_lp, _, fin_scores, finished = state
    return (i < max_length) & ~jnp.all(done(i, alive_lp, fin_scores, finished))

  def body(state):
    i, cache, logits, alive, alive_lp, fin, fin_scores, finished = state
    # A done example's finished set is frozen, so its result is the same in any batch.
    stopped = done(i, alive_lp, fin_scores, finished)[:, None]
    lp = _without_unused_ids(jax.nn.log_softmax(logits), num_ids)
    lp = lp.reshape(batch, k, vocab) + alive_lp[:, :, None]
    cand_lp, flat_index = jax.lax.top_k(lp.reshape(batch, k * vocab), 2 * k)
    parent, token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)
    cand = jnp.take_along_axis(alive, parent[:, :, None], axis=1)
    cand = jnp.where(positions == i, token[:, :, None], cand)
    is_eos = token == EOS_ID
    # Finished: EOS extensions ranked in the top K, unless the example is already done.
    finishing = is_eos & (jnp.arange(2 * k) < k) & ~stopped
    new_scores = jnp.where(finishing, cand_lp / brevity_penalty(alpha, i + 1), _EMPTY)
    pool_scores = jnp.concatenate([fin_scores, new_scores], 1)
    fin_scores, keep = jax.lax.top_k(pool_scores, k)
    fin = jnp.take_along_axis(jnp.concatenate([fin, cand], 1), keep[:, :, None], axis=1)
    finished = jnp.take_along_axis(jnp.concatenate([finished, finishing], 1), keep, axis=1)
    # Alive: the K best extensions that do not end in EOS.
    alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, _NEG, cand_lp), k)
    alive = jnp.take_along_axis(cand, keep[:, :, None], axis=1)
    rows = (jnp.arange(batch)[:, None] * k + jnp.take_along_axis(parent, keep, 1)).reshape(-1)
    cache = _map_batch(lambda x, a: jnp.take(x, rows, axis=a), cache, axes)
    logits, cache = _feed(step_fn, cache, jnp.take_along_axis(token, keep, 1).reshape(-1),
                          logits, i, max_length)
    return (i + 1, cache, logits, alive, alive_lp, fin, fin_scores, finished)

  _, _, _, alive, alive_lp, fin, fin_scores, finished = jax.lax.while_loop(
      not_done, body, state)
  # Fill missing finished slots with the alive beams (scored at max_length), ranked after
  # every finished hypothesis.
  alive_scores = alive_lp / brevity_penalty(alpha, max_length)
  flags = jnp.concatenate([finished, jnp.zeros_like(finished)], 1)
  scores = jnp.concatenate([fin_scores, alive_scores], 1)
  _, order = jax.lax.top_k(jnp.where(flags, scores, scores + _EMPTY), k)
  tokens = jnp.take_along_axis(jnp.concatenate([fin, alive], 1), order[:, :, None], axis=1)
  return tokens, jnp.take_along_axis(scores, order, axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'max_length', 'beam_size', 'alpha',
                                             'prefix_lm', 'num_ids'))
def _beam_search(model, params, tokens, max_length, beam_size, alpha, prefix_lm, num_ids=None,
                 lengths=None):
  step, cache, axes, logits = _start(model, params, tokens, max_length, prefix_lm, beam_size,
                                     lengths)
  return _beam_loop(step, cache, axes, logits, tokens.shape[0], beam_size, max_length, alpha,
                    num_ids)


def check_beam_size(beam_size: int, vocab_size: int) -> None:
  if not 1 <= beam_size <= vocab_size:
    raise ValueError(f'--beam_size={beam_size} must be between 1 and the vocabulary size '
                     f'({vocab_size}).')


def beam_search(model, params, batch: Dict[str, np.ndarray], max_length: int, beam_size: int,
                alpha: float = DEFAULT_ALPHA, prefix_lm: bool = False,
                num_ids: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
  """(tokens [batch, K, max_length], scores [batch, K]), best beam first.

  Encoder-decoder reads `encoder_input_tokens`; decoder-only continues the prompts in
  `decoder_input_tokens` (with `decoder_prompt_lengths` where they differ, `_prompt`;
  bidirectional prefix when `prefix_lm`) and returns only the generated tokens. Scores as
  in the module docstring.
  """
  check_beam_size(beam_size, model.cfg.vocab_size)
  tokens, lengths = _prompt(model, batch, max_length)
  return _beam_search(model, params, tokens, max_length, beam_size, float(alpha),
                      bool(prefix_lm), num_ids, lengths)


def decode(model, params, batch: Dict[str, np.ndarray], max_length: int, *,
           beam_size: int = 1, alpha: float = DEFAULT_ALPHA, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, rng=None, prefix_lm: bool = False,
           num_ids: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """What eval and infer call: (tokens [batch, max_length], scores [batch]).

  temperature > 0 samples (one sequence per row; beam_size must be 1), with top_k / top_p
  if given; beam_size=1 is greedy; otherwise beam search with `beam_size` beams, keeping the
  best. Options that contradict each other are errors (`check_options`). `num_ids`: the
  vocabulary's size (`Vocabulary.vocab_size`); the ids the model's vocab_size adds beyond it
  are never chosen (a sample could otherwise pick one: text without meaning).
  """
  check_options(model.cfg.vocab_size, beam_size, temperature, top_k, top_p)
  if temperature > 0 or beam_size == 1:  # greedy here: one beam may go on past EOS
    rng = jax.random.PRNGKey(0) if rng is None else rng
    tokens, lengths = _prompt(model, batch, max_length)
    tokens, log_prob = _sample(model, params, tokens, max_length, rng, temperature, top_k,
                               top_p, bool(prefix_lm), num_ids, lengths)
    scores = log_prob / brevity_penalty(alpha, _lengths(tokens))
    return np.asarray(tokens), np.asarray(scores)
  tokens, scores = beam_search(model, params, batch, max_length, beam_size, alpha, prefix_lm,
                               num_ids)
  return np.asarray(tokens[:, 0]), np.asarray(scores[:, 0])
