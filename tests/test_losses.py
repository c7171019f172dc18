"""Losses against hand-computed values (the worked example of losses.py's docstring)."""
import math

import jax
import numpy as np
import pytest

from t5x_lite import losses


def test_worked_example_cross_entropy_plus_z_loss():
  logits = np.zeros((1, 1, 2), np.float32)
  loss, z = losses.cross_entropy_with_z_loss(logits, np.array([[1]]), z_loss=1e-4)
  log_z = math.log(2.0)
  np.testing.assert_allclose(float(loss[0, 0]), log_z + 1e-4 * log_z ** 2, rtol=1e-6)
  np.testing.assert_allclose(float(z[0, 0]), 1e-4 * log_z ** 2, rtol=1e-6)


def test_cross_entropy_matches_log_softmax_definition():
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  targets = rng.randint(0, 7, (2, 3))
  loss, _ = losses.cross_entropy_with_z_loss(logits, targets)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  want = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-5)


def test_label_smoothing_is_cross_entropy_with_soft_targets_minus_its_entropy():
  logits = np.array([[[2.0, 0.5, -1.0, 0.0]]], np.float32)
  eps, vocab = 0.1, 4
  soft = np.full(vocab, eps / (vocab - 1))
  soft[0] = 1 - eps
  logp = logits[0, 0] - np.log(np.exp(logits[0, 0].astype(np.float64)).sum())
  want = -(soft * logp).sum() + (soft * np.log(soft)).sum()
  loss, _ = losses.cross_entropy_with_z_loss(logits, np.array([[0]]), label_smoothing=eps)
  np.testing.assert_allclose(float(loss[0, 0]), want, rtol=1e-5)


@pytest.mark.parametrize('normalization,denominator', [
    ('sum', 1.0), ('num_real_target_tokens', 3.0), ('constant', 8.0)])
def test_normalizations_and_padding_weights(normalization, denominator):
  logits = np.zeros((1, 4, 2), np.float32)  # every token costs log 2
  targets = np.array([[1, 1, 1, 0]])
  weights = np.array([[1, 1, 1, 0]], np.float32)  # padding carries no loss
  loss, stats = losses.weighted_loss(logits, targets, weights, normalization=normalization,
                                     normalization_constant=8.0)
  np.testing.assert_allclose(float(loss), 3 * math.log(2) / denominator, rtol=1e-6)
  assert float(stats['weight_sum']) == 3.0


def test_unknown_normalization_names_the_field():
  with pytest.raises(ValueError, match='config.train.loss_normalization'):
    losses.weighted_loss(np.zeros((1, 1, 2)), np.zeros((1, 1), int), np.ones((1, 1)),
                         normalization='mean')


@pytest.mark.parametrize('vocab', [5, 128, 129, 300, 32128])
def test_first_argmax_is_numpys_argmax_ties_and_infinities_included(vocab):
  # Accuracy counts a token as correct when the first index of the row maximum is its
  # target; first_argmax computes that in chunks. numpy is the reference.
  rng = np.random.RandomState(vocab)
  x = rng.normal(size=(4, 6, vocab)).astype(np.float32)
  x[0] = np.round(x[0])                     # many ties at the maximum
  x[1, :, :] = x[1, :, :1]                  # every entry tied
  x[2, 0] = -np.inf                         # a row of -inf
  x[2, 1, -1] = np.inf                      # the maximum in the last index (the tail)
  x[2, 2, [0, vocab - 1]] = 50.0            # a tie between the first and the last index
  x[3, 0, vocab // 2:] = 9.0                # a tie starting mid-vocabulary
  got = np.asarray(jax.jit(losses.first_argmax)(x))
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def test_accuracy_counts_first_maximum_only():
  logits = np.zeros((1, 4, 300), np.float32)
  logits[0, :3, 4] = logits[0, :3, 290] = 1.0   # ties: index 4 comes first, 290 is in the tail
  logits[0, 3, 299] = 2.0                        # the maximum in the tail past the last chunk
  targets = np.array([[4, 4, 290, 299]])
  _, stats = losses.weighted_loss(logits, targets, np.ones((1, 4), np.float32))
  assert float(stats['correct_sum']) == 3.0      # 1 + 1 + 0 (a tie lost) + 1
