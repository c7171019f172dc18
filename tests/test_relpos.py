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
