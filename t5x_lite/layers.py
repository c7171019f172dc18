"""Transformer layers shared by every model family.

Owns: norms (RMSNorm / LayerNorm), embeddings, dense projections, multi-head attention
(self / cross, masks, KV cache), T5 relative position bias, MLPs. Every parameter is
declared with logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `relpos_buckets`);
`partitioning.py` maps them to mesh axes. Activations get logical sharding constraints via
`constrain`, which is a no-op outside a mesh, so the same code runs in CPU unit tests.

Numerics: parameters are float32; activations use `dtype`; norms, attention softmax and
logits are computed in float32.
"""
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import cpu_attention

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# -1e10: large but finite, so fully masked rows (padding) give a uniform softmax, not NaN.
NEG_INF = cpu_attention.NEG_INF


def constrain(x: Array, logical_axes: Sequence[Optional[str]]) -> Array:
  """Sharding constraint by logical axis names; a no-op when no mesh is active."""
  return nn.with_logical_constraint(x, tuple(logical_axes))


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape,
                      jnp.float32)


# ------------------------------------------------------------------------------ norms
class Norm(nn.Module):
  """RMSNorm (T5: x * rsqrt(mean(x^2) + eps) * scale) or LayerNorm (with bias), in float32."""
  kind: str = 'rms'
  eps: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    d = x.shape[-1]
    scale = param_with_axes(self, 'scale', nn.initializers.ones, (d,), ('embed',))
    if self.kind == 'rms':
      y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
      y = y * scale
    else:
      mean = jnp.mean(x, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
      y = (x - mean) * jax.lax.rsqrt(var + self.eps)
      bias = param_with_axes(self, 'bias', nn.initializers.zeros, (d,), ('embed',))
      y = y * scale + bias
    return y.astype(self.dtype)


# ------------------------------------------------------------------------- embeddings
class Embed(nn.Module):
  """Token (or position / token-type) embedding; `attend` gives tied output logits."""
  num_embeddings: int
  features: int
  axes: tuple = ('vocab', 'embed')
  dtype: DType = jnp.float32
  init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = param_with_axes(self, 'embedding', self.init,
                                     (self.num_embeddings, self.features), self.axes)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """x [..., features] -> [..., num_embeddings] logits (float32)."""
    return jnp.einsum('...d,vd->...v', x.astype(jnp.float32), self.embedding)


# ------------------------------------------------------------------------------ dense
class DenseGeneral(nn.Module):
  """y = x . W (+ b), contracting the last `len(in_axes)` dims of x.

  `in_axes` / `out_axes` are the logical names of the kernel's input and output dims, so a
  query projection is DenseGeneral((heads, d_kv), in_axes=('embed',), out_axes=('heads', 'kv')).
  """
  features: Sequence[int]
  in_axes: Sequence[str]
  out_axes: Sequence[str]
  use_bias: bool = False
  dtype: DType = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_axes)
    features = tuple(self.features)
    in_shape = x.shape[-n_in:]
    kernel = param_with_axes(self, 'kernel', self.kernel_init, in_shape + features,
                             tuple(self.in_axes) + tuple(self.out_axes))
    # One 2-D matmul, [..., prod(in)] x [prod(in), prod(out)]: both reshapes are free
    # (row-major contiguous) and the parameter keeps its N-D shape and logical axes. With the
    # 3-D [embed, heads, kv] attention kernels in the dot, XLA relaid out the kernels and
    # their gradients in every layer (README grad-step shapes: 14.97 -> 14.74 GB accessed).
    k_in, k_out = math.prod(in_shape), math.prod(features)
    y = matmul(x.reshape(x.shape[:-n_in] + (k_in,)).astype(self.dtype),
               kernel.reshape(k_in, k_out).astype(self.dtype))
    y = y.reshape(x.shape[:-n_in] + features)
    if self.use_bias:
      bias = param_with_axes(self, 'bias', nn.initializers.zeros, features, self.out_axes)
      y = y + bias.astype(self.dtype)
    return y


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
  """x [..., k] @ w [k, n], with the kernel gradient computed as (g^T x)^T.

  Same values as autodiff's x^T g, but with the output gradient g as the dot's first operand
  XLA's CPU dot takes both operands as they lie; with x first, it transposed g, and XLA fused
  that transpose into whatever produced g (the gated-GELU backward: ~0.3 s per encoder
  layer, column-wise reads of four [tokens, d_ff] arrays), every projection, every layer.
  README grad-step shapes: bytes accessed 14.64 -> 13.27 GB. Remat policies still see
  the dots (`checkpoint_dots` saves them as before). With XLA's own CPU dots (the commands'
  default, `cli.use_xla_cpu_dots`) both forms move the same bytes.
  """
  return jnp.dot(x, w)


def _matmul_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dx = jnp.dot(g, w.T)
  dw = jnp.dot(g2.T, x2).T  # [n, k] -> [k, n]: a kernel-sized transpose, not a token-sized one
  return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def variance_scaling(scale: float, distribution: str = 'normal',
                     fan_in_dims: int = 1) -> Initializer:
  """Kernel init with variance `scale / fan_in`, fan_in = product of the leading input dims."""
  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod(shape[:fan_in_dims]))
    std = math.sqrt(scale / fan_in)
    if distribution == 'truncated_normal':
      # Stddev of a standard normal truncated to [-2, 2] is .87962566103423978.
      return jax.random.truncated_normal(key, -2, 2, shape, dtype) * std / .87962566103423978
    return jax.random.normal(key, shape, dtype) * std
  return init


# ------------------------------------------------------------------ relative position
def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
  """T5 bucketing of rel = key_pos - query_pos (numpy or jax arrays).

  Worked example (encoder, bidirectional, 32 buckets): rel -3 -> 3, rel +3 -> 16 + 3 = 19,
  |rel| 8..11 -> 8, 16 -> 10, 64 -> 14, >= 91 -> 15 (plus 16 when rel > 0).
  Decoder (causal, 32 buckets): n = max(-rel, 0); 0..15 -> n, 16 -> 16, 32 -> 21, >= 113 -> 31.
  """
  xp = jnp if isinstance(relative_position, jax.Array) else np
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret = (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  if xp is np:
    val_if_large = _log_buckets(n, max_exact, num_buckets, max_distance)
  else:  # XLA's float32 log lands an ulp under some whole-number results (64 buckets, max
    # distance 50: n = 40 gave 47 for HF's 48); every n >= max_distance is the last bucket.
    table = _log_buckets(np.arange(max_distance + 1), max_exact, num_buckets, max_distance)
    val_if_large = jnp.asarray(table)[jnp.minimum(n, max_distance)]
  return ret + xp.where(n < max_exact, n, val_if_large)


def _log_buckets(n: np.ndarray, max_exact: int, num_buckets: int, max_distance: int):
  """Buckets of distances n >= max_exact: logarithmic up to max_distance, in float32 as
  Hugging Face's PyTorch T5 and mesh TensorFlow compute them (numpy; n < max_exact too,
  for the caller to discard: log(0) is guarded)."""
  val = max_exact + (np.log(np.maximum(n, 1).astype(np.float32) / max_exact) /
                     math.log(max_distance / max_exact) *
                     (num_buckets - max_exact)).astype(np.int32)
  return np.minimum(val, num_buckets - 1)


class RelativePositionBias(nn.Module):
  """One [heads, buckets] table per stack; returns a [1, heads, q, k] additive bias."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  table_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')  # t5x

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    table = param_with_axes(self, 'rel_embedding', self.table_init,
                            (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'))
    rel = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    # Gather [heads, q, k]; a one-hot matmul would waste FLOPs on CPU/GPU.
    bias = jnp.take(table, buckets, axis=1)
    return bias[None]


# ---------------------------------------------------------------------------- masks
def attention_mask(query_valid: Array, key_valid: Array,
                   query_segment_ids: Optional[Array] = None,
                   key_segment_ids: Optional[Array] = None,
                   causal: bool = False,
                   query_prefix: Optional[Array] = None,
                   key_prefix: Optional[Array] = None,
                   query_positions: Optional[Array] = None,
                   key_positions: Optional[Array] = None) -> Array:
  """Boolean [batch, 1, q, k] mask: both valid, same segment, causal unless both in prefix.

  Prefix LM (decoder-only): allowed(q, k) = (k <= q OR (prefix_q AND prefix_k)) AND ...
  Causality compares `query_positions` / `key_positions` (1-D, default 0..n-1): a cached
  decode step passes its absolute positions and the whole cache's, so training and decoding
  share this one function.
  """
  mask = query_valid[:, :, None] & key_valid[:, None, :]
  if query_segment_ids is not None:
    mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  if causal:
    q_pos = jnp.arange(query_valid.shape[1]) if query_positions is None else query_positions
    k_pos = jnp.arange(key_valid.shape[1]) if key_positions is None else key_positions
    allowed = k_pos[None, None, :] <= q_pos[None, :, None]
    if query_prefix is not None:
      allowed = allowed | (query_prefix[:, :, None] & key_prefix[:, None, :])
    mask &= allowed
  return mask[:, None]


# ------------------------------------------------------------------------- attention
# 'xla' and 'cudnn' go through jax.nn.dot_product_attention; 'einsum' is the explicit
# logits -> bias -> mask -> softmax path, kept as the fallback for attention dropout
# (dot_product_attention has none) and as the reference the equality tests compare against.
# 'folded' is the same einsum path with the mask folded into the bias once per stack (as
# FlaxT5 does) and the softmax normalised after the value matmul: of the whole-batch paths it
# moves the fewest bytes on CPU (XLA cost analysis, T5 v1.1 small grad step: folded < xla
# (whose vmap adds a transpose and a second divide per layer) < einsum (a select per layer,
# forward and backward)). 'rowwise' (cpu_attention.py) walks the batch one row at a time with
# a recomputing backward: on one CPU device 'auto' picks it; on a CPU mesh and for decoding
# (one-token queries), 'folded'.
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum', 'folded', 'rowwise')


def resolve_attention_impl(impl: str, dtype, dropout_active: bool, decode: bool) -> str:
  """The implementation one attention call uses.

  'auto': cuDNN flash attention on a GPU for 16-bit activations outside decoding (cuDNN
  takes neither float32 nor single-token queries well); on CPU 'rowwise' (a scan over the
  batch rows) when the active mesh has at most one device and the call is not decoding,
  else 'folded' (a scan over a batch split across devices would gather it); XLA's fused
  path elsewhere. Any implementation falls back to 'einsum' when attention dropout is active.
  """
  if dropout_active:
    return 'einsum'
  if impl == 'auto':
    backend = jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend == 'cpu':
      one_device = jax.sharding.get_abstract_mesh().size <= 1
      return 'rowwise' if one_device and not decode else 'folded'
    return 'cudnn' if backend == 'gpu' and half and not decode else 'xla'
  return impl


def stack_attention_inputs(mask: Optional[Array], bias: Optional[Array], impl: str,
                           dtype) -> Tuple[Optional[Array], Optional[Array]]:
  """(bias, mask) as the implementation takes them, built once per stack (not per layer).

  xla / cudnn / folded: the boolean mask is folded into one additive bias here, once, instead of a
  [batch, heads, q, k] select in every layer (cuDNN would fold it per call anyway, in the
  activation dtype). Rows with no allowed key (padding queries) then get arbitrary outputs,
  which nothing reads. 'einsum' keeps mask and bias apart: it is the reference; 'rowwise'
  applies them per batch row, where they are cheap, and the bias gradient stays [1, h, q, k].
  """
  if impl in ('einsum', 'rowwise') or mask is None:
    return bias, mask
  bias_dtype = jnp.float32 if impl in ('xla', 'folded') else dtype
  neg = (NEG_INF if impl in ('xla', 'folded') else
         -2 ** 40 if jnp.dtype(dtype) == jnp.bfloat16 else -2 ** 14)
  # Added, not selected (bias + where(mask, 0, neg), as FlaxT5 does): the bias gradient is
  # then the plain sum of the layers' logit gradients (zero where masked, as softmax gives no
  # weight there), which XLA fuses into the batch reduction instead of materialising a
  # masked [batch, heads, q, k] sum first (-0.10 GB at the README grad-step shapes).
  # bias + neg rounds to neg in float32 for |bias| < 512 (ulp of 1e10 is 1024).
  additive = jnp.where(mask, jnp.asarray(0, bias_dtype), jnp.asarray(neg, bias_dtype))
  return additive if bias is None else add_batch_mask(bias.astype(bias_dtype), additive), None


@jax.custom_vjp
def add_batch_mask(bias: Array, additive_mask: Array) -> Array:
  """bias [1, h, q, k] + additive_mask [b, 1, q, k] -> [b, h, q, k]; the mask gets no gradient.

  The bias gradient is the batch sum of the [b, h, q, k] logit gradients. As autodiff's
  reduction over that leading axis, XLA's CPU backend handed it to YNNPACK, which took
  ~100 ms at batch 8, 6 heads, 512 x 512 (2.3% of a T5 v1.1 small 4+4 train step); the
  same sum as a [1, b] x [b, h*q*k] matmul takes ~3 ms.
  """
  return bias + additive_mask


def _add_batch_mask_fwd(bias, additive_mask):
  return bias + additive_mask, bias.shape


def _add_batch_mask_bwd(bias_shape, g):
  rows = g.shape[0]
  if bias_shape[0] != rows:  # bias broadcast over the batch: sum it out as a matmul
    tail, dtype = g.shape[1:], g.dtype
    total = jnp.dot(jnp.ones((1, rows), dtype), g.reshape(rows, -1),
                    preferred_element_type=jnp.float32)
    g = total.astype(dtype).reshape((1,) + tail)
  # Any other dim the bias broadcast over (none for T5's [1, h, q, k]) sums as usual.
  axes = tuple(i for i, (b, n) in enumerate(zip(bias_shape, g.shape)) if b == 1 and n != 1)
  return (jnp.sum(g, axes, keepdims=True) if axes else g), None


add_batch_mask.defvjp(_add_batch_mask_fwd, _add_batch_mask_bwd)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                          mask: Optional[Array], *, scale: float, impl: str,
                          dropout: Optional[Callable[[Array], Array]] = None) -> Array:
  """[b, q, h, d] x [b, k, h, d] -> [b, q, h, d]; softmax in float32 for every impl.

  `bias` broadcasts to [b, h, q, k] (T5's relative position bias, added at scale 1.0);
  `mask` is boolean [b or 1, 1, q, k]. `impl` is a resolved name (not 'auto').
  """
  if impl == 'rowwise':
    return cpu_attention.attention(query, key, value, bias, mask, scale)
  if impl in ('xla', 'cudnn'):
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias if bias is None else bias.astype(
            jnp.float32 if impl == 'xla' else query.dtype),
        mask=mask, scale=scale, implementation=impl)
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if impl == 'folded' and mask is None and dropout is None:
    # Softmax normalised after the value matmul: (exp(l - max) . v) / sum divides a
    # [b, q, h, d] array instead of a [b, h, q, k] one, which XLA's CPU dot fusion also
    # materialised as a broadcast denominator (README grad-step shapes: 13.27 -> 12.91 GB).
    # The value matmul as [b, h, q, k] x [b, h, k, d]: written to [b, q, h, d] directly, XLA's
    # CPU dot computed the transpose, V^T P^T -> [b, h, d, q], at half the rate.
    unnormalized = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    # The value matmul accumulates and returns float32, and the division happens there: in
    # bfloat16 a rounded quotient (and its gradient) put the query and key gradients 2-4x
    # further from float32 than the einsum path's (float32 models: the same program).
    out = jnp.einsum('bhqk,bhkd->bhqd', unnormalized.astype(query.dtype),
                     value.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    total = jnp.sum(unnormalized, axis=-1)[..., None]  # [b, h, q, 1]
    return (out / total).astype(query.dtype).transpose(0, 2, 1, 3)
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def _attend_transposed(query: Array, key_t: Array, value_t: Array, bias: Optional[Array],
                       mask: Optional[Array], scale: float) -> Array:
  """`dot_product_attention` (einsum path, no dropout) with keys and values given as
  [b, h, d, k], the layout of the cross-attention decode cache."""
  logits = jnp.einsum('bqhd,bhdk->bhqk', query, key_t,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  return jnp.einsum('bhqk,bhdk->bqhd', weights, value_t)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an optional KV cache (`decode=True`).

  Self-attention decoding: the cache (collection 'cache') holds keys/values for
  `max_length` positions, created by an `init` call on full-length inputs. Each decode call
  writes its `n` new keys/values at `decode_index` (kept by the owning stack) and attends
  over the whole cache; the caller supplies the mask over cache positions.
  Cross-attention decoding (`cross_cache=True`): the encoder's keys/values are projected
  once, on the first chunk (`decode_index == 0`), and read from the cache afterwards.
  `inputs_kv=None` says so statically (a decode loop after its first step: no projection
  and no `cond` in the loop body, whose branches each copied the cached keys/values).
  Both caches hold keys and values as [batch, heads, d_kv, length], the layout both
  attention dots read (on CPU): stored as [b, k, h, d], XLA transposed every layer's cached
  keys and values at every step, at 512 inputs most of a step's memory traffic. A call
  that reads a cache attends with `_attend_transposed` (the einsum path on that layout).
  """
  num_heads: int
  d_kv: int
  out_features: int
  use_bias: bool = False
  scale_logits: bool = False
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  attention_impl: str = 'auto'
  q_init: Initializer = nn.initializers.lecun_normal()
  kv_init: Initializer = nn.initializers.lecun_normal()
  o_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array],
               bias: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False, decode_index: Optional[Array] = None,
               cross_cache: bool = False) -> Array:
    proj = lambda name, init: DenseGeneral(
        (self.num_heads, self.d_kv), in_axes=('embed',), out_axes=('heads', 'kv'),
        use_bias=self.use_bias, dtype=self.dtype, kernel_init=init, name=name)
    heads = lambda x: constrain(x, ('batch', 'length', 'heads', 'kv'))
    query = heads(proj('query', self.q_init)(inputs_q))
    key_proj, value_proj = proj('key', self.kv_init), proj('value', self.kv_init)
    project_kv = lambda: (heads(key_proj(inputs_kv)), heads(value_proj(inputs_kv)))
    if inputs_kv is None and not (decode and cross_cache):
      raise ValueError('inputs_kv=None reads cached cross-attention keys/values: only when '
                       'decoding with cross_cache=True.')

    scale = 1.0 / math.sqrt(self.d_kv) if self.scale_logits else 1.0
    cached = None  # ([b, h, d, k] keys, values) from the cache
    if decode and cross_cache and inputs_kv is None:  # a later decode step: cache only
      cached = self._cross_cached(project_kv, inputs_kv, decode_index)
    elif decode and cross_cache:
      key, value = self._cross_cached(project_kv, inputs_kv, decode_index)
    else:
      key, value = project_kv()
      if decode:
        cached = self._self_cached(key, value, decode_index)
    if cached is not None:
      out = _attend_transposed(query, *cached, bias, mask, scale)
      return constrain(self._out(out), ('batch', 'length', 'embed'))

    dropout_active = not deterministic and self.dropout_rate > 0
    impl = resolve_attention_impl(self.attention_impl, self.dtype, dropout_active, decode)
    dropout = None
    if dropout_active:
      dropout = lambda w: nn.Dropout(self.dropout_rate)(w, deterministic=False)
    out = dot_product_attention(query, key, value, bias, mask, scale=scale, impl=impl,
                                dropout=dropout)
    return constrain(self._out(out), ('batch', 'length', 'embed'))

  def _out(self, out):
    return DenseGeneral((self.out_features,), in_axes=('heads', 'kv'), out_axes=('embed',),
                        use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.o_init,
                        name='out')(out)

  def _self_cached(self, key, value, decode_index):
    """Writes this chunk's keys/values ([b, n, h, d]) into the cache at `decode_index` and
    returns the whole cache, [b, h, d, max_length] x 2; None on the `init` call that creates
    the cache (sized by its full-length inputs)."""
    initialized = self.has_variable('cache', 'cached_key')
    b, n, h, d = key.shape
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, (b, h, d, n), key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, (b, h, d, n), value.dtype)
    if not initialized:
      return None
    start = (0, 0, 0, decode_index)
    to_cache = lambda x: jnp.transpose(x, (0, 2, 3, 1))
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, to_cache(key), start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, to_cache(value), start)
    return cached_key.value, cached_value.value

  def _cross_cached(self, project_kv, inputs_kv, decode_index):
    """Cross-attention keys/values: ([b, k, h, d] x 2) projected or read from the cache, or
    with `inputs_kv=None` the cached ones as they are stored, [b, h, d, k] x 2."""
    initialized = self.has_variable('cache', 'cached_key')
    if inputs_kv is None:  # the caller knows the cache holds them (a later decode step)
      if not initialized:
        raise ValueError('cross-attention with encoder output None before the cache holds '
                         'its keys/values: pass the encoder output on the first chunk.')
      return self.get_variable('cache', 'cached_key'), self.get_variable('cache', 'cached_value')
    b, k = inputs_kv.shape[:2]
    shape = (b, self.num_heads, self.d_kv, k)
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, self.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, self.dtype)
    if not initialized:
      return project_kv()
    # Projecting only on the first chunk saves 2 x d_model x H x d_kv x L_enc multiply-adds
    # per layer and step; both branches are traced, only one runs.
    from_cache = lambda x: jnp.transpose(x, (0, 3, 1, 2))   # [b, h, d, k] -> [b, k, h, d]
    key, value = nn.cond(decode_index == 0, lambda module: project_kv(),
                         lambda module: (from_cache(cached_key.value),
                                         from_cache(cached_value.value)), self)
    to_cache = lambda x: jnp.transpose(x, (0, 2, 3, 1))     # [b, k, h, d] -> [b, h, d, k]
    cached_key.value, cached_value.value = to_cache(key), to_cache(value)
    return key, value


# ------------------------------------------------------------------------------- MLP
ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=True),   # T5 v1.1 gated-gelu, GPT-2 gelu_new
    'gelu_exact': lambda x: nn.gelu(x, approximate=False),  # BERT
    'silu': nn.silu,
    'linear': lambda x: x,
}


class Mlp(nn.Module):
  """MLP: prod_i act_i(x W_i) -> dropout -> W_o. ('gelu', 'linear') is gated-GELU."""
  d_ff: int
  activations: Sequence[str] = ('gelu', 'linear')
  use_bias: bool = False
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  in_init: Initializer = nn.initializers.lecun_normal()
  out_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    d_model = x.shape[-1]
    hidden = None
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = DenseGeneral((self.d_ff,), in_axes=('embed',), out_axes=('mlp',),
                       use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.in_init,
                       name=name)(x)
      h = ACTIVATIONS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = constrain(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    out = DenseGeneral((d_model,), in_axes=('mlp',), out_axes=('embed',),
                       use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.out_init,
                       name='wo')(hidden)
    return constrain(out, ('batch', 'length', 'embed'))
