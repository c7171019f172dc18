"""Attention for XLA's CPU backend: a batch row (or a few short ones) at a time, softmax
statistics saved instead of the weights (`attention_impl='rowwise'`, what 'auto' picks on a
single CPU device).

Why. XLA's CPU backend runs every op over the whole batch, so at T5's 512-token inputs each
[batch, heads, q, k] array (logits, weights, their gradients: 50 MB at batch 8, 6 heads) goes
to and from memory once per op, and autodiff writes two of the backward's dots (P^T dO and
dS^T Q) with a transposed operand, which XLA's CPU dot ran ~2.4x slower. Here a `lax.scan`
walks the batch rows: a row's [heads, q, k] arrays (6 MB at those shapes) stay in cache
between ops (short rows are grouped, `rows_per_step`). The backward (a custom VJP)
recomputes the row's logits from q and k, as flash attention does, so the forward keeps only
the output and each query's max and softmax denominator, never the weights; it forms
D = rowsum(dO * O) over the head dim once for the whole batch; and it computes
dV^T = dO^T P and dK^T = Q^T dS, whose operands XLA then reads as they lie (optimization
barriers keep its transpose folding from undoing that).
One encoder layer's attention forward + backward at batch 8, 6 heads, 512 x 512, two threads:
~100 ms vs ~134 ms for 'folded' (README figures table for whole train steps).

Worked example (one row, one head, no bias): logits s = q k^T, m = max_k s, p = exp(s - m),
l = sum_k p, out = (p v) / l. Backward with D = sum_d(dout * out): P = p / l,
dP = dout v^T, dS = P * (dP - D), dq = dS k, dk = dS^T q, dv = P^T dout, dbias = dS.

Scope. The scan runs over the batch dimension, so the batch must not be split across
devices (GSPMD would gather it): 'auto' picks this only when the active mesh has one device.
Fully masked query rows (padding) output a uniform average of the values, as the other
implementations do; nothing reads them.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e10  # finite "minus infinity"; layers.NEG_INF is this one

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
  rows = rows_per_step(b, heads * q_len * k_len)
  out = _rows(f32(query) * scale, f32(key), f32(value), bias, mask, rows)
  return out.astype(query.dtype)


# A scan step's [rows, heads, q, k] arrays stay under 8 MB of float32: one row at T5's
# 512 x 512 with 6 heads (6 MB); short rows are grouped, since every scan step costs a
# fixed ~10 ops (the README's 32-row x 40-token demo: 37 ms per step one row at a time,
# 31 ms grouped, as whole-batch `folded`).
STEP_ELEMENTS = 2 ** 21


def rows_per_step(batch: int, row_elements: int) -> int:
  """The most rows, dividing `batch`, whose logits fit STEP_ELEMENTS (at least one).

  >>> rows_per_step(8, 6 * 512 * 512), rows_per_step(32, 6 * 40 * 40), rows_per_step(6, 2 ** 19)
  (1, 32, 3)
  """
  fits = [n for n in range(1, batch + 1) if batch % n == 0 and n * row_elements <= STEP_ELEMENTS]
  return max(fits, default=1)


def _heads_first(x: Array) -> Array:  # [b, L, h, d] -> [b, h, L, d]
  return x.transpose(0, 2, 1, 3)


def _group(x: Array, rows: int) -> Array:  # [b, ...] -> [b / rows, rows, ...]
  return x.reshape((x.shape[0] // rows, rows) + x.shape[1:])


def _ungroup(x: Array) -> Array:  # [b / rows, rows, ...] -> [b, ...]
  return x.reshape((-1,) + x.shape[2:])


def _split(arr: Optional[Array], batch: int, rows: int):
  """(scanned, shared): an array with a leading dim of `batch` (> 1) is scanned `rows` at a
  time; one with a leading 1 is the same for every step."""
  if arr is None:
    return None, None
  return (_group(arr, rows), None) if arr.shape[0] == batch and batch != 1 else (None, arr)


def _logits(q, k, step_bias, step_mask, bias_all, mask_all):
  """[..., h, q, d] x [..., h, k, d] -> [..., h, q, k], with this step's (scanned) bias and
  mask where the batch has them per row, else the shared ones."""
  bias = bias_all if step_bias is None else step_bias
  mask = mask_all if step_mask is None else step_mask
  s = jnp.einsum('...qd,...kd->...qk', q, k)
  if bias is not None:
    s = s + bias
  if mask is not None:
    s = jnp.where(mask, s, NEG_INF)
  return s


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _rows(query, key, value, bias, mask, rows):
  return _rows_fwd(query, key, value, bias, mask, rows)[0]


def _rows_fwd(query, key, value, bias, mask, rows):
  b = query.shape[0]
  qh, kh, vh = _heads_first(query), _heads_first(key), _heads_first(value)
  bias_steps, bias_all = _split(bias, b, rows)
  mask_steps, mask_all = _split(mask, b, rows)

  def step(_, xs):
    q, k, v, step_bias, step_mask = xs
    s = _logits(q, k, step_bias, step_mask, bias_all, mask_all)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    return None, (jnp.einsum('...qk,...kd->...qd', p, v) / l, m[..., 0], l[..., 0])

  group = lambda x: _group(x, rows)
  _, (out, m, l) = jax.lax.scan(step, None, (group(qh), group(kh), group(vh), bias_steps,
                                             mask_steps))
  out = _ungroup(out)
  return _heads_first(out), (qh, kh, vh, bias, mask, out, m, l)


def _rows_bwd(rows, res, g):
  qh, kh, vh, bias, mask, out, m, l = res
  b = qh.shape[0]
  gh = _heads_first(g.astype(jnp.float32))
  d_rowsum = jnp.sum(gh * out, axis=-1)  # D = rowsum(dO * O) = rowsum(dP * P), over d
  bias_steps, bias_all = _split(bias, b, rows)
  mask_steps, mask_all = _split(mask, b, rows)
  shared_bias = bias is not None and bias_steps is None
  swap = lambda x: x.swapaxes(-1, -2)

  def step(dbias_sum, xs):
    q, k, v, step_bias, step_mask, step_m, step_l, step_d, do = xs
    s = _logits(q, k, step_bias, step_mask, bias_all, mask_all)
    p = jnp.exp(s - step_m[..., None]) / step_l[..., None]
    dv = _barrier(jnp.einsum('...dq,...qk->...dk', _barrier(swap(do)), p))
    dp = jnp.einsum('...qd,...kd->...qk', do, v)
    ds = p * (dp - step_d[..., None])
    dq = jnp.einsum('...qk,...kd->...qd', ds, k)
    dk = _barrier(jnp.einsum('...dq,...qk->...dk', _barrier(swap(q)), ds))
    grads = (dq, swap(dk), swap(dv))
    if shared_bias:
      return dbias_sum + jnp.sum(ds, axis=0, keepdims=True), grads + (None,)
    return dbias_sum, grads + (ds if bias is not None else None,)

  group = lambda x: _group(x, rows)
  init = jnp.zeros(bias.shape, jnp.float32) if shared_bias else None
  dbias_sum, (dq, dk, dv, dbias_steps) = jax.lax.scan(
      step, init, (group(qh), group(kh), group(vh), bias_steps, mask_steps, m, l,
                   group(d_rowsum), group(gh)))
  dbias = dbias_sum if shared_bias else (None if bias is None else _ungroup(dbias_steps))
  return (_heads_first(_ungroup(dq)), _heads_first(_ungroup(dk)),
          _heads_first(_ungroup(dv)), dbias, None)


_rows.defvjp(_rows_fwd, _rows_bwd)
