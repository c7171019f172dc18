"""The three model families as configurations of one set of layers.

Owns: `ModelConfig` (validated, hashable view of `config.model`), the transformer `Block`
and `Stack`, and the families `EncoderDecoder` (T5 v1.1 / v1.0), `EncoderOnly` (BERT with
its MLM head) and `DecoderOnly` (GPT-2, or T5-style with prefix LM), built by `build`.

Call contract (docs/design.md): `model.apply({'params': p}, batch, deterministic=True)` with a
dict of seqio feature names returns float32 logits [batch, length, vocab] for the target
side (decoder, or encoder for MLM). Packed batches pass `*_segment_ids` / `*_positions`.

Decoding: `init` with `decode=True` on full-length inputs creates the KV cache; then
`apply(..., decode=True, mutable=['cache'])` on chunks (a prompt, then one token at a
time) gives the same logits as a full forward pass. Encoder-decoder: the first chunk
projects the encoder output to cross-attention keys/values and caches them; later chunks
read the cache (`method=model.decode` with `encoded=None` says so statically: what the
decode loops in decoding.py do).
"""
import dataclasses
import functools
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite import families
from t5x_lite import layers

FAMILIES = tuple(families.FAMILIES)
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`, frozen and validated. These defaults ARE the config defaults
  (configs/base.py builds its model section from them)."""
  family: str = 'encoder_decoder'   # encoder_decoder | encoder | decoder (families.py)
  vocab_size: int = 32128
  d_model: int = 512
  d_ff: int = 1024
  num_heads: int = 6
  d_kv: int = 64
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  # gated-GELU (T5 v1.1); ('relu',) v1.0; ('gelu_exact',) BERT
  mlp_activations: Tuple[str, ...] = ('gelu', 'linear')
  norm: str = 'rms'                 # rms | layer
  norm_eps: float = 1e-6
  post_norm: bool = False           # True: BERT-style x = Norm(x + Sublayer(x))
  use_bias: bool = False            # biases in dense and attention projections (BERT, GPT-2)
  position_embedding: str = 'relative'  # relative (T5 bias) | absolute (learned, BERT/GPT-2)
  max_position_embeddings: int = 512    # absolute positions only
  type_vocab_size: int = 0          # BERT token-type embeddings (0 = none)
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # True: q.k / sqrt(d_kv) (BERT, GPT-2); T5 folds it into the query init
  scale_attention_logits: bool = False
  tie_embeddings: bool = False      # logits from the input embedding (T5 v1.0, BERT, GPT-2)
  rescale_tied_logits: bool = False # T5 v1.0: tied logits divided by sqrt(d_model)
  # t5 (t5x's variance scaling, docs/t5.md §5) | normal_0.02 (BERT) | gpt2 (normal_0.02, the
  # residual output projections' std divided by sqrt(2 x layers), as transformers' GPT-2)
  init_scheme: str = 't5'
  dropout_rate: float = 0.0
  # Where dropout_rate applies. t5 (t5x): embeddings, attention probabilities, each sublayer's
  # output, the MLP hidden activations and the stack's output; bert_gpt2 (transformers'
  # BERT / GPT-2): the same without the MLP hidden activations and the stack's output.
  dropout_sites: str = 't5'
  dtype: str = 'float32'            # activation dtype; params, norms and logits stay float32
  scan_layers: bool = False
  remat: str = 'none'               # none | full | dots | dots_no_batch (jax.checkpoint policies)
  # auto (cuDNN on a GPU in 16-bit; on CPU rowwise on one device, folded on a mesh or when
  # decoding; else xla) | xla | cudnn | folded | rowwise | einsum
  attention_impl: str = 'auto'

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelConfig':
    if isinstance(model_cfg, ModelConfig):
      return model_cfg
    try:  # items() resolves derived fields: configs/bert.py's d_kv = d_model // num_heads
      items = dict(model_cfg.items()) if hasattr(model_cfg, 'items') else dict(model_cfg)
    except ZeroDivisionError:
      raise ValueError('config.model: a field derived from others divides by zero (d_kv = '
                       f'd_model // num_heads with num_heads={model_cfg.get("num_heads")!r}?); '
                       'each size must be a positive integer.') from None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
      raise ValueError(f'config.model.{unknown[0]} is not a model option; known options: '
                       f'{", ".join(sorted(names))}.')
    if 'mlp_activations' in items:
      items['mlp_activations'] = tuple(items['mlp_activations'])
    cfg = cls(**items)
    cfg.validate()
    return cfg

  def validate(self):
    """Raise ValueError naming the first inconsistent field, before anything compiles."""
    def fail(field, constraint):
      raise ValueError(f'config.model.{field}={getattr(self, field)!r} is invalid: {constraint}.')
    if self.family not in FAMILIES:
      fail('family', f'must be one of {", ".join(FAMILIES)}')
    positive = ['vocab_size', 'd_model', 'd_ff', 'num_heads', 'd_kv']
    if families.FAMILIES[self.family].has_encoder:
      positive.append('num_encoder_layers')
    if families.FAMILIES[self.family].has_decoder:
      positive.append('num_decoder_layers')
    if self.position_embedding == 'absolute':
      positive.append('max_position_embeddings')
    else:
      positive += ['relative_attention_num_buckets', 'relative_attention_max_distance']
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        fail(name, 'must be a positive integer')
    if not self.mlp_activations or any(a not in layers.ACTIVATIONS
                                       for a in self.mlp_activations):
      fail('mlp_activations', f'each entry must be one of {", ".join(layers.ACTIVATIONS)}')
    choices = {'norm': ('rms', 'layer'), 'position_embedding': ('relative', 'absolute'),
               'dtype': tuple(DTYPES), 'remat': tuple(REMAT_POLICIES),
               'init_scheme': ('t5', 'normal_0.02', 'gpt2'),
               'dropout_sites': ('t5', 'bert_gpt2'),
               'attention_impl': layers.ATTENTION_IMPLS}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        fail(name, f'must be one of {", ".join(allowed)}')
    if self.attention_impl == 'cudnn' and self.dtype != 'bfloat16':
      fail('attention_impl', "'cudnn' needs dtype='bfloat16' (cuDNN's fused attention takes "
           "16-bit inputs); 'auto' picks cuDNN where it applies")
    if not 0.0 <= self.dropout_rate < 1.0:
      fail('dropout_rate', 'must be in [0, 1)')
    if self.rescale_tied_logits and not self.tie_embeddings:
      fail('rescale_tied_logits', 'needs tie_embeddings=True')
    if self.type_vocab_size < 0:
      fail('type_vocab_size', 'must be >= 0')
    if self.type_vocab_size and families.FAMILIES[self.family].has_decoder:
      fail('type_vocab_size', f'must be 0 for family {self.family!r}: only the encoder-only '
           'family (BERT) has token types')
    if self.position_embedding == 'relative':
      self._check_relative_buckets(fail)
    if not 0 < self.norm_eps < float('inf'):  # <= 0 divides by zero on a zero row: NaN
      fail('norm_eps', 'must be > 0 and finite')
    if (self.position_embedding == 'absolute' and self.d_model % self.num_heads
        and self.d_kv == self.d_model // self.num_heads):  # configs/bert.py and gpt.py derive it
      fail('num_heads', f'must divide d_model={self.d_model} (BERT and GPT-2 split d_model '
           f'across the heads; d_kv = d_model // num_heads = {self.d_kv} leaves '
           f'{self.d_model - self.num_heads * self.d_kv} of it out)')

  def _check_relative_buckets(self, fail):
    """T5's bucketing (layers.relative_position_bucket) splits a stack's buckets into exact
    distances and logarithmic ones up to max_distance: a bidirectional stack (encoder) first
    halves them by direction. Each stack needs an exact bucket and max_distance past them."""
    spec = families.FAMILIES[self.family]
    exact = ([('bidirectional', self.relative_attention_num_buckets // 4)]
             if spec.has_encoder else []) + (
        [('causal', self.relative_attention_num_buckets // 2)] if spec.has_decoder else [])
    if min(n for _, n in exact) < 1:
      fail('relative_attention_num_buckets', 'must be >= 4 with a bidirectional stack, >= 2 '
           'with causal ones (each stack needs an exact bucket; T5 uses 32)')
    kind, most = max(exact, key=lambda e: e[1])
    if self.relative_attention_max_distance <= most:
      fail('relative_attention_max_distance', f'must be > {most}, the distances the {kind} '
           f'stack\'s {self.relative_attention_num_buckets} buckets hold exactly (T5: 128 with '
           '32 buckets)')

  @property
  def activation_dtype(self):
    return DTYPES[self.dtype]


# ------------------------------------------------------------------------ initializers
def _inits(cfg: ModelConfig) -> dict:
  """Initializers: t5x's variance-scaling scheme, or N(0, 0.02) (BERT; GPT-2 with its
  residual output projections, attention `o` and MLP `wo`, at 0.02 / sqrt(2 x layers))."""
  if cfg.init_scheme != 't5':
    normal = nn.initializers.normal(0.02)
    layers_deep = sum(families.layer_counts(cfg).values())  # one stack: GPT-2's n_layer
    residual = (nn.initializers.normal(0.02 / (2 * layers_deep) ** 0.5)
                if cfg.init_scheme == 'gpt2' else normal)
    return dict(embed=normal, q=normal, kv=normal, o=residual, mlp_in=normal,
                mlp_out=residual, dense=normal, relpos=normal)
  vs = layers.variance_scaling
  return dict(
      embed=nn.initializers.normal(1.0),
      q=vs(1.0 / cfg.d_kv),               # var 1/(d_model*d_kv): the 1/sqrt(d_kv) folded in
      kv=vs(1.0), o=vs(1.0, fan_in_dims=2), mlp_in=vs(1.0, 'truncated_normal'),
      mlp_out=vs(1.0, 'truncated_normal'), dense=vs(1.0, 'truncated_normal'),
      relpos=nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'))


# ------------------------------------------------------------------------------- block
class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, MLP.

  Pre-norm (T5, GPT-2): x = x + Dropout(Sublayer(Norm(x))).
  Post-norm (BERT):     x = Norm(x + Dropout(Sublayer(x))).
  Returns (x, None) so that the same module can be scanned over layers.
  """
  cfg: ModelConfig
  cross_attention: bool = False
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, self_mask, self_bias, encoded, cross_mask, cross_bias, decode_index):
    cfg, inits = self.cfg, _inits(self.cfg)
    dtype = cfg.activation_dtype
    dropout = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    attention = functools.partial(
        layers.MultiHeadAttention, num_heads=cfg.num_heads, d_kv=cfg.d_kv,
        out_features=cfg.d_model, use_bias=cfg.use_bias,
        scale_logits=cfg.scale_attention_logits, dropout_rate=cfg.dropout_rate,
        dtype=dtype, attention_impl=cfg.attention_impl, q_init=inits['q'],
        kv_init=inits['kv'], o_init=inits['o'])
    norm = lambda name: layers.Norm(cfg.norm, cfg.norm_eps, dtype, name=name)

    def residual(x, sublayer, norm_name):
      if cfg.post_norm:
        return norm(norm_name)(x + dropout(sublayer(x)))
      return x + dropout(sublayer(norm(norm_name)(x)))

    x = residual(x, lambda h: attention(name='self_attention')(
        h, h, self_mask, self_bias, self.deterministic, self.decode, decode_index),
        'self_attention_norm')
    if self.cross_attention:
      x = residual(x, lambda h: attention(name='cross_attention')(
          h, encoded, cross_mask, cross_bias, self.deterministic, self.decode, decode_index,
          cross_cache=True), 'cross_attention_norm')
    mlp = layers.Mlp(cfg.d_ff, cfg.mlp_activations, cfg.use_bias,
                     cfg.dropout_rate if cfg.dropout_sites == 't5' else 0.0, dtype,
                     inits['mlp_in'], inits['mlp_out'], name='mlp')
    x = residual(x, lambda h: mlp(h, self.deterministic), 'mlp_norm')
    return layers.constrain(x, ('batch', 'length', 'embed')), None


# ------------------------------------------------------------------------------- stack
class Stack(nn.Module):
  """Embeddings -> blocks -> final norm, for an encoder or a decoder.

  The token embedding is passed in so that encoder and decoder share it (T5). Absolute
  position / token-type embeddings and the relative-position table belong to the stack.
  """
  cfg: ModelConfig
  embedder: layers.Embed
  num_layers: int
  causal: bool
  cross_attention: bool = False

  @nn.compact
  def __call__(self, tokens, *, valid, segment_ids=None, positions=None, prefix=None,
               token_types=None, encoded=None, encoder_valid=None,
               encoder_segment_ids=None, deterministic=True, decode=False):
    cfg, inits = self.cfg, _inits(self.cfg)
    dtype = cfg.activation_dtype
    batch, length = tokens.shape
    step_positions = jnp.arange(length)
    decode_index = None
    use_cache = decode and self.has_variable('cache', 'index')
    if decode:
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      key_prefix = self.variable('cache', 'key_prefix', jnp.zeros, (batch, length), bool)
      # Left-padded prompts of different lengths (decoding.py): which written cache positions
      # hold a real token (unwritten ones: causality excludes them).
      key_valid = self.variable('cache', 'key_valid', jnp.zeros, (batch, length), bool)
    if use_cache:
      decode_index = index.value
      step_positions = decode_index + jnp.arange(length)
      # A cached call marks its pads with segment id 0 (a prompt's left padding), and each
      # real token's position is its cache position less the pads before it (so a learned
      # position table reads what it would for the prompt alone). Relative positions need
      # no shift: pads precede every real token, so query-key distances are unchanged.
      query_valid = (segment_ids > 0 if segment_ids is not None
                     else jnp.ones((batch, length), bool))
      written = jnp.arange(key_valid.value.shape[1]) < decode_index
      pads_cached = jnp.sum(~key_valid.value & written, axis=1, keepdims=True)
      pads_before = pads_cached + jnp.cumsum(~query_valid, axis=1)
      positions = jnp.maximum(step_positions[None, :] - pads_before, 0)
      key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, query_valid,
                                                     (0, decode_index))
      index.value = decode_index + length

    x = self.embedder(tokens)
    if cfg.position_embedding == 'absolute':
      if positions is None:
        positions = jnp.broadcast_to(step_positions, (batch, length))
      x = x + layers.Embed(cfg.max_position_embeddings, cfg.d_model, (None, 'embed'), dtype,
                           inits['embed'], name='position_embedder')(positions)
    if cfg.type_vocab_size:
      if token_types is None:
        token_types = jnp.zeros_like(tokens)
      x = x + layers.Embed(cfg.type_vocab_size, cfg.d_model, (None, 'embed'), dtype,
                           inits['embed'], name='token_type_embedder')(token_types)
    if cfg.post_norm:  # BERT normalises the summed embeddings
      x = layers.Norm(cfg.norm, cfg.norm_eps, dtype, name='embedding_norm')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x.astype(dtype), ('batch', 'length', 'embed'))

    # Masks and the relative position bias: built once per stack, shared by every layer.
    if use_cache:
      # Keys are the whole cache; positions not yet written are excluded by causality, pads
      # by key_valid.
      cache_len = key_prefix.value.shape[1]
      key_positions = jnp.arange(cache_len)
      q_prefix = prefix if prefix is not None else jnp.zeros((batch, length), bool)
      key_prefix.value = jax.lax.dynamic_update_slice(key_prefix.value, q_prefix,
                                                      (0, decode_index))
      self_mask = layers.attention_mask(
          jnp.ones((batch, length), bool), key_valid.value, causal=True,
          query_prefix=q_prefix, key_prefix=key_prefix.value,
          query_positions=step_positions, key_positions=key_positions)
    else:
      key_positions = step_positions
      self_mask = layers.attention_mask(valid, valid, segment_ids, segment_ids, self.causal,
                                        prefix, prefix)
    self_bias = None
    if cfg.position_embedding == 'relative':
      self_bias = layers.RelativePositionBias(
          cfg.num_heads, cfg.relative_attention_num_buckets,
          cfg.relative_attention_max_distance, bidirectional=not self.causal,
          table_init=inits['relpos'], name='relpos_bias')(step_positions, key_positions)
    dropout_active = not deterministic and cfg.dropout_rate > 0
    impl = layers.resolve_attention_impl(cfg.attention_impl, dtype, dropout_active, decode)
    self_bias, self_mask = layers.stack_attention_inputs(self_mask, self_bias, impl, dtype)
    cross_mask = cross_bias = None
    if self.cross_attention:
      query_valid = valid if not use_cache else jnp.ones((batch, length), bool)
      query_segments = segment_ids if not use_cache else None
      cross_mask = layers.attention_mask(query_valid, encoder_valid, query_segments,
                                         encoder_segment_ids if query_segments is not None
                                         else None)
      cross_bias, cross_mask = layers.stack_attention_inputs(cross_mask, None, impl, dtype)

    block = Block
    policy = REMAT_POLICIES[cfg.remat]
    if cfg.remat != 'none':
      block = nn.remat(block, policy=policy, prevent_cse=not cfg.scan_layers)
    args = (self_mask, self_bias, encoded, cross_mask, cross_bias, decode_index)
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={'params': 0, 'cache': 0},
                        split_rngs={'params': True, 'dropout': True},
                        in_axes=(nn.broadcast,) * len(args), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(cfg, self.cross_attention, deterministic, decode, name='layers')(x, *args)
    else:
      for i in range(self.num_layers):
        x, _ = block(cfg, self.cross_attention, deterministic, decode, name=f'layers_{i}')(
            x, *args)

    if not cfg.post_norm:
      x = layers.Norm(cfg.norm, cfg.norm_eps, dtype, name='final_norm')(x)
    if cfg.dropout_sites == 't5':
      x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return x


class LogitsHead(nn.Module):
  """Tied (optionally rescaled by 1/sqrt(d_model), T5 v1.0) or untied float32 logits."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, embedder: layers.Embed):
    cfg = self.cfg
    if cfg.tie_embeddings:
      if cfg.rescale_tied_logits:
        x = x * (cfg.d_model ** -0.5)
      logits = embedder.attend(x)
    else:
      logits = layers.DenseGeneral((cfg.vocab_size,), ('embed',), ('vocab',), False,
                                   jnp.float32, _inits(cfg)['dense'],
                                   name='dense')(x.astype(jnp.float32))
    return layers.constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


def _token_embedder(cfg: ModelConfig) -> layers.Embed:
  return layers.Embed(cfg.vocab_size, cfg.d_model, ('vocab', 'embed'),
                      cfg.activation_dtype, _inits(cfg)['embed'], name='token_embedder')


# ---------------------------------------------------------------------------- families
class EncoderDecoder(nn.Module):
  """T5: shared embedding, bidirectional encoder, causal decoder with cross-attention."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token_embedder = _token_embedder(cfg)
    self.encoder = Stack(cfg, self.token_embedder, cfg.num_encoder_layers, causal=False)
    self.decoder = Stack(cfg, self.token_embedder, cfg.num_decoder_layers, causal=True,
                         cross_attention=True)
    self.logits_head = LogitsHead(cfg)

  def encode(self, batch, deterministic=True):
    tokens = batch['encoder_input_tokens']
    return self.encoder(tokens, valid=tokens > 0,
                        segment_ids=batch.get('encoder_segment_ids'),
                        positions=batch.get('encoder_positions'),
                        deterministic=deterministic)

  def decode(self, encoded, batch, deterministic=True, decode=False):
    enc_tokens = batch['encoder_input_tokens']
    dec_inputs = batch['decoder_input_tokens']
    # The reference mask uses target tokens (decoder inputs start with 0 = BOS = pad).
    targets = batch.get('decoder_target_tokens')
    valid = targets > 0 if targets is not None else jnp.ones(dec_inputs.shape, bool)
    x = self.decoder(dec_inputs, valid=valid, segment_ids=batch.get('decoder_segment_ids'),
                     positions=batch.get('decoder_positions'), encoded=encoded,
                     encoder_valid=enc_tokens > 0,
                     encoder_segment_ids=batch.get('encoder_segment_ids'),
                     deterministic=deterministic, decode=decode)
    return self.logits_head(x, self.token_embedder)

  def __call__(self, batch, deterministic=True, decode=False):
    encoded = self.encode(batch, deterministic)
    return self.decode(encoded, batch, deterministic, decode)


class DecoderOnly(nn.Module):
  """GPT-2 (absolute positions, LayerNorm, biases, tied) or T5-style (prefix LM capable)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, batch, deterministic=True, decode=False):
    cfg = self.cfg
    embedder = _token_embedder(cfg)
    inputs = batch['decoder_input_tokens']
    targets = batch.get('decoder_target_tokens')
    valid = targets > 0 if targets is not None else jnp.ones(inputs.shape, bool)
    prefix = batch.get('decoder_causal_attention')
    if prefix is not None:
      prefix = prefix > 0
    x = Stack(cfg, embedder, cfg.num_decoder_layers, causal=True, name='decoder')(
        inputs, valid=valid, segment_ids=batch.get('decoder_segment_ids'),
        positions=batch.get('decoder_positions'), prefix=prefix,
        deterministic=deterministic, decode=decode)
    return LogitsHead(cfg, name='logits_head')(x, embedder)


class EncoderOnly(nn.Module):
  """BERT: post-norm encoder, MLM head (dense -> act -> norm -> tied decoder + bias)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, batch, deterministic=True, decode=False):
    del decode
    cfg, inits = self.cfg, _inits(self.cfg)
    embedder = _token_embedder(cfg)
    tokens = batch['encoder_input_tokens']
    x = Stack(cfg, embedder, cfg.num_encoder_layers, causal=False, name='encoder')(
        tokens, valid=tokens > 0, segment_ids=batch.get('encoder_segment_ids'),
        positions=batch.get('encoder_positions'),
        token_types=batch.get('encoder_token_types'), deterministic=deterministic)
    x = layers.DenseGeneral((cfg.d_model,), ('embed',), ('mlp',), True, cfg.activation_dtype,
                            inits['dense'], name='mlm_transform')(x)
    x = layers.ACTIVATIONS[cfg.mlp_activations[0]](x)
    x = layers.Norm(cfg.norm, cfg.norm_eps, jnp.float32, name='mlm_norm')(x)
    logits = LogitsHead(cfg, name='logits_head')(x, embedder)
    bias = layers.param_with_axes(self, 'mlm_bias', nn.initializers.zeros, (cfg.vocab_size,),
                                  ('vocab',))
    return logits + bias


def build(model_cfg) -> nn.Module:
  """Validated `config.model` -> Flax module of the configured family."""
  cfg = ModelConfig.from_config(model_cfg)
  return {'encoder_decoder': EncoderDecoder, 'encoder': EncoderOnly,
          'decoder': DecoderOnly}[cfg.family](cfg)


def abstract_params(model_cfg):
  """Boxed abstract params (ShapeDtypeStruct leaves in `nn.LogicallyPartitioned` boxes) of
  `config.model`: what the trainer shards, plan counts and checkpoints restore into.

  Traced with `jax.eval_shape`: nothing is compiled or allocated. Cached per model config;
  treat the result as read-only.
  """
  return _abstract_params(ModelConfig.from_config(model_cfg))


@functools.lru_cache(maxsize=16)
def _abstract_params(cfg: ModelConfig):
  batch = families.dummy_batch(cfg.family)
  # Any attention implementation has the same params; einsum's traces on any machine (cuDNN's
  # would need a GPU: plan describes a GPU run from a laptop).
  shapes_only = dataclasses.replace(cfg, attention_impl='einsum')
  return jax.eval_shape(lambda: build(shapes_only).init(jax.random.PRNGKey(0), batch))['params']


# ------------------------------------------------------------- scanned <-> unscanned
def stack_layers(params, num_layers: int):
  """Unscanned params (`layers_0`..`layers_{n-1}`) -> scanned (`layers`, leading axis)."""
  if not isinstance(params, dict):
    return params
  out = {}
  for k, v in params.items():
    if k == 'layers_0':
      out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                   *[params[f'layers_{i}'] for i in range(num_layers)])
    elif k.startswith('layers_'):
      continue
    else:
      out[k] = stack_layers(v, num_layers)
  return out


def unstack_layers(params):
  """Scanned params (`layers` with a leading layer axis) -> `layers_0`..`layers_{n-1}`."""
  if not isinstance(params, dict):
    return params
  out = {}
  for k, v in params.items():
    if k == 'layers':
      n = jax.tree.leaves(v)[0].shape[0]
      for i in range(n):
        out[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], v)
    else:
      out[k] = unstack_layers(v)
  return out
