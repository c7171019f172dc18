"""t5x_lite.metrics against values computed by hand (each derivation in a comment)."""
import doctest
import math

import pytest

from t5x_lite import metrics

REF = 'the cat sat on the mat'


def test_docstring_examples():
  failures, tried = doctest.testmod(metrics)
  assert tried >= 7 and failures == 0


def test_sequence_accuracy_is_exact_string_equality():
  # 'Lafeu' == 'Lafeu'; 'helena' != 'Helena'; ' Lafeu' != 'Lafeu' -> 1 / 3
  assert metrics.sequence_accuracy(['Lafeu', 'Helena', 'Lafeu'],
                                   ['Lafeu', 'helena', ' Lafeu']) == pytest.approx(100 / 3)
  # Any of several references.
  assert metrics.sequence_accuracy([['Lafeu', 'Helena']], ['Helena']) == 100.0
  assert metrics.sequence_accuracy([], []) == 0.0


def test_exact_match_normalises_case_punctuation_articles_whitespace():
  assert metrics.normalize_answer('  The Duke,  of an York! ') == 'duke of york'
  assert metrics.normalize_answer('theatre') == 'theatre'  # articles only as whole words
  # 'A  duke.' -> 'duke' == 'duke'; 'Helena' vs 'Lafeu' no -> 1 / 2
  assert metrics.exact_match(['the Duke', 'Lafeu'], ['A  duke.', 'Helena']) == 50.0


def test_f1_multiset_overlap():
  # ref 'x y y z' -> [x, y, y, z]; pred 'Y y. y' -> [y, y, y]. Overlap min(2, 3) = 2 'y'.
  # P = 2/3, R = 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
  assert metrics.f1(['x y y z'], ['Y y. y']) == pytest.approx(400 / 7)
  # No overlap -> 0; both empty after normalisation ('The' -> '') -> 1; one empty -> 0.
  assert metrics.f1(['x'], ['y']) == 0.0
  assert metrics.f1(['The'], ['']) == 100.0
  assert metrics.f1(['x'], ['the']) == 0.0
  # Mean over examples, best of several references: (1 + 4/7) / 2.
  assert metrics.f1([['q', 'x y y z'], 'x'], ['Y y. y', 'x']) == pytest.approx(50 * (1 + 4 / 7))


def test_bleu_known_pair():
  # Candidate 'the cat sat on a mat' vs REF (6 tokens each: c = r, BP = 1).
  # p1 = 5/6 (the cat sat on mat), p2 = 3/5 (the cat, cat sat, sat on),
  # p3 = 2/4 (the cat sat, cat sat on), p4 = 1/3 (the cat sat on).
  # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.5372849659...
  assert metrics.bleu([REF], ['the cat sat on a mat']) == pytest.approx(53.72849659, abs=1e-6)
  assert metrics.bleu([REF], [REF]) == pytest.approx(100.0)


def test_bleu_brevity_penalty():
  # Candidate 'the cat sat on': every n-gram matches (p_n = 1), c = 4 < r = 6:
  # BP = exp(1 - 6/4) = exp(-0.5) = 0.6065306597...
  assert metrics.bleu([REF], ['the cat sat on']) == pytest.approx(60.65306597, abs=1e-6)
  # A longer candidate has no penalty: c = 7 > r = 6, but p1 = 6/7, p2 = 5/6, p3 = 4/5,
  # p4 = 3/4 -> (6*5*4*3 / (7*6*5*4)) ** 0.25 = (3/7) ** 0.25 = 0.8091067116...
  assert metrics.bleu([REF], [REF + ' now']) == pytest.approx(80.91067116, abs=1e-6)


def test_bleu_clips_counts_papineni_example():
  # Papineni et al.'s example: 7 x 'the'; 'the' occurs at most twice in one reference,
  # so the modified unigram precision is 2/7. Closest reference length to c = 7 is 7.
  stats = metrics.bleu_stats([['the cat is on the mat', 'there is a cat on the mat']],
                             ['the the the the the the the'])
  assert stats['matches'][0] == 2 and stats['totals'][0] == 7
  assert stats['candidate_length'] == 7 and stats['reference_length'] == 7
  assert stats['matches'][1] == 0  # 'the the' is in neither reference -> BLEU 0
  assert metrics.bleu([['the cat is on the mat', 'there is a cat on the mat']],
                      ['the the the the the the the']) == 0.0


def test_bleu_is_corpus_level_not_a_mean_of_sentences():
  # Pair 1: 'a b c d' == 'a b c d' (1-4-grams: 4/4, 3/3, 2/2, 1/1).
  # Pair 2: ref 'w x y z', cand 'w x q z' (1-grams 3/4, 2-grams 'w x' 1/3, 3-grams 0/2,
  # 4-grams 0/1): alone its BLEU is 0, so a sentence mean would be 50.
  # Corpus: p1 = 7/8, p2 = 4/6, p3 = 2/4, p4 = 1/2, c = r = 8:
  # BLEU = (7/8 * 2/3 * 1/2 * 1/2) ** 0.25 = (7/48) ** 0.25 = 0.6179654585...
  got = metrics.bleu(['a b c d', 'w x y z'], ['a b c d', 'w x q z'])
  assert got == pytest.approx(100 * (7 / 48) ** 0.25)
  assert got == pytest.approx(61.79654585, abs=1e-6)
  assert metrics.bleu(['w x y z'], ['w x q z']) == 0.0


def test_bleu_no_smoothing_and_case_sensitive():
  # Three tokens have no 4-gram: p4 = 0/0 counts as 0 -> BLEU 0 (no smoothing).
  assert metrics.bleu(['a b c'], ['a b c']) == 0.0
  assert metrics.bleu([''], ['']) == 0.0
  # Whitespace tokens, case-sensitive: 'The' != 'the' acts as a substitution at the first
  # position: p1 = 5/6, p2 = 4/5, p3 = 3/4, p4 = 2/3 -> (1/3) ** 0.25 = 0.7598356856...
  assert metrics.bleu([REF], ['The cat sat on the mat']) == pytest.approx(75.98356856, abs=1e-6)


def test_rouge_n_and_l():
  # REF vs 'the mat sat on a cat' (6 tokens each, so F = P = R):
  # ROUGE-1: the, mat, sat, on, cat -> 5/6; ROUGE-2: 'sat on', 'the mat' -> 2/5;
  # ROUGE-L: LCS 'the sat on' -> 3/6.
  got = metrics.rouge([REF], ['the mat sat on a cat'])
  assert got['rouge1'] == pytest.approx(500 / 6)
  assert got['rouge2'] == pytest.approx(40.0)
  assert got['rougeL'] == pytest.approx(50.0)


def test_rouge_unequal_lengths_and_mean():
  # ref 'a b c d e' (5), pred 'a c e' (3): ROUGE-1 overlap 3: P 3/3, R 3/5,
  # F = 2 * 1 * 0.6 / 1.6 = 0.75. ROUGE-2: pred {a c, c e}, none in ref -> 0.
  # ROUGE-L: LCS 'a c e' = 3 -> same as ROUGE-1, 0.75.
  got = metrics.rouge(['a b c d e'], ['a c e'])
  assert got == pytest.approx({'rouge1': 75.0, 'rouge2': 0.0, 'rougeL': 75.0})
  # Averaged over examples: (0.75 + 1) / 2 for ROUGE-1; empty prediction scores 0.
  got = metrics.rouge(['a b c d e', 'x y', 'z'], ['a c e', 'x y', ''])
  assert got['rouge1'] == pytest.approx(100 * (0.75 + 1 + 0) / 3)
  assert got['rouge2'] == pytest.approx(100 * (0 + 1 + 0) / 3)


def test_lcs_length():
  assert metrics.lcs_length('a b c b d a b'.split(), 'b d c a b a'.split()) == 4  # CLRS: b c b a
  assert metrics.lcs_length([], ['a']) == 0


def test_text_metrics_keys_and_length_check():
  got = metrics.text_metrics(['Lafeu'], ['Lafeu'])
  assert set(got) == {'sequence_accuracy', 'exact_match', 'f1', 'bleu', 'rouge1', 'rouge2',
                      'rougeL'}
  assert got['exact_match'] == 100.0 and got['rouge1'] == 100.0
  assert got['bleu'] == 0.0  # one token: no 2-, 3-, 4-grams, and BLEU is not smoothed
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.bleu(['a', 'b'], ['a'])
  assert not math.isnan(metrics.f1([], []))
