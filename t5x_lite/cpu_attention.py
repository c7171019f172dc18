"""Attention for XLA's CPU backend: one batch row at a time, softmax statistics saved instead
of the weights (`attention_impl='rowwise'`, what 'auto' picks on a single CPU device).

Why. XLA's CPU backend runs every op over the whole batch, so at T5's 512-token inputs each
[batch, heads, q, k] array (logits, weights, their gradients: 50 MB at batch 8, 6 heads) goes
to and from memory once per op, and autodiff writes two of the backward's dots (P^T dO and
dS^T Q) with a transposed operand, which XLA's CPU dot runs at about half the rate.
Here a `lax.scan` walks the batch rows: a row's [heads, q, k] arrays (6 MB at those shapes)
stay in cache between ops. The backward (a custom VJP) recomputes the row's logits from q and
k, as flash attention does, so the forward keeps only the output and each query's max and
softmax denominator, never the weights; it forms D = rowsum(dO * O) over the head dim once
for the whole batch; and it computes dV^T = dO^T P and dK^T = Q^T dS, whose operands XLA then
reads as they lie (optimization barriers keep its transpose folding from undoing that).

Worked example (one row, one head, no bias): logits s = q k^T, m = max_k s, p = exp(s - m),
l = sum_k p, out = (p v) / l. Backward with D = sum_d(dout * out): P = p / l,
dP = dout v^T, dS = P * (dP - D), dq = dS k, dk = dS^T q, dv = P^T dout, dbias = dS.

Scope. The scan runs over the batch dimension, so the batch must not be split across
devices (GSPMD would gather it): 'auto' picks this only when the active mesh has one device.
Fully masked query rows (padding) output a uniform average of the values, as the other
implementations do; nothing reads them.
"""
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e10  # the same finite "minus infinity" as layers.NEG_INF

_barrier = jax.lax.optimization_barrier


def attention(query: Array, key: Array, value: Array, bias: Optional[Array],
              mask: Optional[Array], scale: float) -> Array:
  """[b, q, h, d] x [b, k, h, d] -> [b, q, h, d] in query's dtype, computed in float32.

  `bias`: float, broadcastable to [b or 1, h, q, k] (its gradient is returned in its shape);
  `mask`: boolean [b or 1, 1, q or 1, k], True where a query may attend to a key.
  """
  b, q_len, heads, _ = query.shape
  k_len = key.shape[1]
  if bias is not None:
    bias = jnp.broadcast_to(bias.astype(jnp.float32),
                            (bias.shape[0] if bias.ndim == 4 else 1, heads, q_len, k_len))
  f32 = lambda x: x.astype(jnp.float32)
  out = _rows(f32(query) * scale, f32(key), f32(value), bias, mask)
  return out.astype(query.dtype)


def _heads_first(x: Array) -> Array:  # [b, L, h, d] -> [b, h, L, d]
  return x.transpose(0, 2, 1, 3)


def _row_xs(arr: Optional[Array], batch: int):
  """(scanned part, broadcast part): an array with a leading batch dim of `batch` is
  scanned row by row; one with a leading 1 is the same for every row."""
  if arr is None:
    return None, None
  return (arr, None) if arr.shape[0] == batch and batch != 1 else (None, arr[0])


def _logits(q, k, bias, mask):
  s = jnp.einsum('hqd,hkd->hqk', q, k)
  if bias is not None:
    s = s + bias
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  return s


@jax.custom_vjp
def _rows(query, key, value, bias, mask):
  return _rows_fwd(query, key, value, bias, mask)[0]


def _rows_fwd(query, key, value, bias, mask):
  b = query.shape[0]
  qh, kh, vh = _heads_first(query), _heads_first(key), _heads_first(value)
  bias_rows, bias_all = _row_xs(bias, b)
  mask_rows, mask_all = _row_xs(mask, b)

  def row(_, xs):
    q, k, v, row_bias, row_mask = xs
    s = _logits(q, k, bias_all if row_bias is None else row_bias,
                mask_all if row_mask is None else row_mask)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    return None, (jnp.einsum('hqk,hkd->hqd', p, v) / l, m[..., 0], l[..., 0])

  _, (out, m, l) = jax.lax.scan(row, None, (qh, kh, vh, bias_rows, mask_rows))
  return _heads_first(out), (qh, kh, vh, bias, mask, out, m, l)


def _rows_bwd(res, g):
  qh, kh, vh, bias, mask, out, m, l = res
  b = qh.shape[0]
  gh = _heads_first(g.astype(jnp.float32))
  d_rowsum = jnp.sum(gh * out, axis=-1)  # D = rowsum(dO * O) = rowsum(dP * P), over d
  bias_rows, bias_all = _row_xs(bias, b)
  mask_rows, mask_all = _row_xs(mask, b)
  shared_bias = bias is not None and bias_rows is None

  def row(dbias_sum, xs):
    q, k, v, row_bias, row_mask, row_m, row_l, row_d, do = xs
    s = _logits(q, k, bias_all if row_bias is None else row_bias,
                mask_all if row_mask is None else row_mask)
    p = jnp.exp(s - row_m[..., None]) / row_l[..., None]
    dv = _barrier(jnp.einsum('hdq,hqk->hdk', _barrier(do.transpose(0, 2, 1)), p))
    dp = jnp.einsum('hqd,hkd->hqk', do, v)
    ds = p * (dp - row_d[..., None])
    dq = jnp.einsum('hqk,hkd->hqd', ds, k)
    dk = _barrier(jnp.einsum('hdq,hqk->hdk', _barrier(q.transpose(0, 2, 1)), ds))
    grads = (dq, dk.transpose(0, 2, 1), dv.transpose(0, 2, 1))
    if shared_bias:
      return dbias_sum + ds, grads + (None,)
    return dbias_sum, grads + (ds if bias is not None else None,)

  init = jnp.zeros(bias.shape[1:], jnp.float32) if shared_bias else None
  dbias_sum, (dq, dk, dv, dbias_rows) = jax.lax.scan(
      row, init, (qh, kh, vh, bias_rows, mask_rows, m, l, d_rowsum, gh))
  dbias = dbias_sum[None] if shared_bias else dbias_rows
  return _heads_first(dq), _heads_first(dk), _heads_first(dv), dbias, None


_rows.defvjp(_rows_fwd, _rows_bwd)
