"""T5 relative-position buckets against the check values of docs/t5.md §5.

rel = key_pos - query_pos. Encoder (bidirectional, 32 buckets): n = |rel|, +16 when rel > 0.
Decoder (causal, 32 buckets): n = max(-rel, 0). max_distance 128. The expected values are the
docs/t5.md's, written out literally.
"""
import jax.numpy as jnp
import numpy as np

from t5x_lite.layers import relative_position_bucket

# n -> bucket, encoder (16 buckets per direction).
ENCODER = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7,
    8: 8, 9: 8, 10: 8, 11: 8,
    12: 9, 13: 9, 14: 9, 15: 9,
    16: 10, 32: 12, 64: 14,
    91: 15, 92: 15, 100: 15, 127: 15, 128: 15, 200: 15, 1000: 15,
}
# n -> bucket, decoder (32 buckets, one direction).
DECODER = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10, 11: 11, 12: 12,
    13: 13, 14: 14, 15: 15,
    16: 16, 32: 21, 64: 26, 112: 30,
    113: 31, 114: 31, 128: 31, 500: 31,
}


def _bucket(rel, bidirectional, xp):
  out = relative_position_bucket(xp.asarray(rel, dtype=xp.int32), bidirectional=bidirectional,
                                 num_buckets=32, max_distance=128)
  return [int(b) for b in np.asarray(out)]


def test_encoder_buckets_numpy_and_jax():
  ns = sorted(ENCODER)
  for xp in (np, jnp):
    # rel < 0 (key before query): n = -rel, no offset.
    assert _bucket([-n for n in ns], True, xp) == [ENCODER[n] for n in ns]
    # rel > 0 (key after query): same bucket + 16; rel = 0 -> 0.
    assert _bucket(ns, True, xp) == [ENCODER[n] + (16 if n > 0 else 0) for n in ns]


def test_encoder_boundaries():
  # Last n of each bucket run (one below the next bucket's first n).
  assert _bucket([-7, -8, -11, -12, -90, -91], True, np) == [7, 8, 8, 9, 14, 15]
  assert _bucket([7, 8, 11, 12, 90, 91], True, np) == [23, 24, 24, 25, 30, 31]


def test_decoder_buckets_numpy_and_jax():
  ns = sorted(DECODER)
  for xp in (np, jnp):
    assert _bucket([-n for n in ns], False, xp) == [DECODER[n] for n in ns]
    # Future keys (rel > 0) all map to bucket 0 (they are masked anyway).
    assert _bucket([1, 5, 200], False, xp) == [0, 0, 0]


def test_decoder_boundaries():
  assert _bucket([-15, -16, -112, -113], False, np) == [15, 16, 30, 31]


# (buckets, max_distance) where XLA's float32 log once put a bucket one under HF's (64, 50:
# causal n = 40, log(1.25) / log(1.5625) * 32 = 16 exactly), and the defaults.
GRIDS = [(32, 128), (64, 50), (20, 1000), (128, 100), (4, 200), (6, 100), (8, 200), (9, 200)]


def test_buckets_equal_hugging_face_pytorch_under_jit_and_in_numpy():
  import jax
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-3000, 3001, dtype=np.int32)
  for num_buckets, max_distance in GRIDS:
    for bidirectional in (True, False):
      want = T5Attention._relative_position_bucket(
          torch.from_numpy(rel).long(), bidirectional=bidirectional, num_buckets=num_buckets,
          max_distance=max_distance).numpy()
      kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets,
                    max_distance=max_distance)
      jitted = jax.jit(lambda r, kw=kwargs: relative_position_bucket(r, **kw))
      for got in (relative_position_bucket(rel, **kwargs), jitted(jnp.asarray(rel))):
        np.testing.assert_array_equal(np.asarray(got), want,
                                      err_msg=f'{num_buckets} buckets, {max_distance}, '
                                              f'bidirectional={bidirectional}')
