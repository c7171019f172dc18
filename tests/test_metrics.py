"""t5x_lite.metrics against the libraries called directly (sacrebleu, rouge-score) and
SQuAD v1.1 values derived by hand (each derivation in a comment)."""
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from t5x_lite import metrics

# Punctuation glued to words, case, an empty prediction, repeated words, newlines.
TARGETS = ['The cat sat on the mat.', 'Hello, world!', "It's 3.5 km -- isn't it?",
           'A man, a plan, a canal: Panama.', 'First sentence.\nSecond one here.', 'x']
PREDICTIONS = ['the cat sat on a mat', 'Hello world', "It's 3.5 km, isn't it?",
               'a man a plan a canal panama', 'Second one here.\nFirst sentence.', '']


def t5_bleu(targets, predictions):
  """t5.evaluation.metrics.bleu, verbatim but for the return value."""
  if isinstance(targets[0], list):
    targets = [[x for x in target] for target in targets]
  else:
    targets = [targets]
  return sacrebleu.corpus_bleu(predictions, targets, smooth_method='exp', smooth_value=0.0,
                               force=False, lowercase=False, tokenize='intl',
                               use_effective_order=False).score


def test_bleu_equals_t5s_sacrebleu_call():
  got = metrics.bleu(TARGETS, PREDICTIONS)
  assert got == pytest.approx(t5_bleu(TARGETS, PREDICTIONS), abs=1e-9)
  assert 0 < got < 100
  # The tokenizer splits punctuation off words: 'Hello, world!' vs 'Hello , world !' is a
  # perfect match only because of it (whitespace tokens would share nothing but 'world').
  assert metrics.bleu(['Hello, world!'], ['Hello , world !']) == pytest.approx(100.0)
  # ... in every script ('intl'): sacrebleu's default 13a leaves '„', '“' and '—' on words.
  german = ['Der König sagte: „Guten Tag!“ und ging—schnell—…']
  spaced = ['Der König sagte : „ Guten Tag ! “ und ging — schnell — …']
  assert metrics.bleu(german, spaced) == pytest.approx(100.0)
  assert sacrebleu.corpus_bleu(spaced, [german]).score < 50


def test_bleu_variable_references_per_example():
  targets = [['the cat is on the mat', 'there is a cat on the mat'], ['a b c d e'],
             ['Hello, world!', 'hello world', 'Hi, world.']]
  predictions = ['the cat is on the mat', 'a b c d', 'hello world']
  streams = [['the cat is on the mat', 'a b c d e', 'Hello, world!'],
             ['there is a cat on the mat', None, 'hello world'],
             [None, None, 'Hi, world.']]
  want = sacrebleu.corpus_bleu(predictions, streams, tokenize='intl').score
  assert metrics.bleu(targets, predictions) == pytest.approx(want, abs=1e-9)
  # More references can only help: dropping the extra ones lowers the score here.
  assert metrics.bleu([t[0] for t in targets], predictions) < want


def test_rouge_equals_rouge_score():
  got = metrics.rouge(TARGETS, PREDICTIONS)
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL', 'rougeLsum'])
  per_example = [scorer.score(t, p) for t, p in zip(TARGETS, PREDICTIONS)]
  for key in ('rouge1', 'rouge2', 'rougeL', 'rougeLsum'):
    want = 100 * np.mean([s[key].fmeasure for s in per_example])
    assert got[key] == pytest.approx(want, abs=1e-9), key
  # rougeLsum reads lines as sentences: swapped sentences are a perfect summary-level match
  # while sentence-insensitive rougeL is not.
  swapped = metrics.rouge([TARGETS[4]], [PREDICTIONS[4]])
  assert swapped['rougeLsum'] == pytest.approx(100.0) and swapped['rougeL'] < 100.0
  # ... and, as T5 prepares texts, ' . ' ends a sentence in space-tokenized text.
  spaced = metrics.rouge(['The cat sat . The dog ran .'], ['The dog ran . The cat sat .'])
  assert spaced['rougeLsum'] == pytest.approx(100.0) and spaced['rougeL'] < 100.0


def test_rouge_multiple_references_take_the_best():
  targets = [['completely different words', 'the cat sat on the mat'], ['x y']]
  predictions = ['the cat sat on a mat', 'x y z']
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL', 'rougeLsum'])
  got = metrics.rouge(targets, predictions)
  for key in got:
    want = 100 * np.mean([max(scorer.score(r, p)[key].fmeasure for r in t)
                          for t, p in zip(targets, predictions)])
    assert got[key] == pytest.approx(want, abs=1e-9), key


def test_squad_normalisation_exact_match():
  assert metrics.normalize_answer('  The Duke,  of an York! ') == 'duke of york'
  assert metrics.normalize_answer('theatre') == 'theatre'  # articles only as whole words
  # 'A  duke.' -> 'duke' == 'duke'; 'Helena' vs 'Lafeu' no -> 1 / 2
  assert metrics.exact_match(['the Duke', 'Lafeu'], ['A  duke.', 'Helena']) == 50.0
  assert metrics.exact_match([['Lafeu', 'The Duke']], ['duke']) == 100.0  # any reference


def test_squad_f1_v1_1():
  # ref 'x y y z' -> [x, y, y, z]; pred 'Y y. y' -> [y, y, y]. Overlap min(2, 3) = 2 'y'.
  # P = 2/3, R = 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
  assert metrics.f1(['x y y z'], ['Y y. y']) == pytest.approx(400 / 7)
  # No overlap -> 0. v1.1: both empty after normalisation ('The' -> '') is also 0
  # (num_same == 0), unlike SQuAD v2's script.
  assert metrics.f1(['x'], ['y']) == 0.0
  assert metrics.f1(['The'], ['']) == 0.0
  # Mean over examples, best of several references: (1 + 4/7) / 2.
  assert metrics.f1([['q', 'x y y z'], 'x'], ['Y y. y', 'x']) == pytest.approx(50 * (1 + 4 / 7))


def test_sequence_accuracy_and_text_metrics():
  assert metrics.sequence_accuracy(['Lafeu', 'Helena', 'Lafeu'],
                                   ['Lafeu', 'helena', ' Lafeu']) == pytest.approx(100 / 3)
  got = metrics.text_metrics(TARGETS, PREDICTIONS)
  assert set(got) == {'sequence_accuracy', 'exact_match', 'f1', 'bleu', 'rouge1', 'rouge2',
                      'rougeL', 'rougeLsum'}
  # SQuAD normalisation makes rows 1-4 match ('cat sat on mat'; 'hello world'; 'its 35 km
  # isnt it' on both sides, the dashes and comma dropped; the palindrome); rows 5 (order)
  # and 6 (empty) do not -> 4 / 6.
  assert got['exact_match'] == pytest.approx(400 / 6)
  assert got['sequence_accuracy'] == 0.0
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.bleu(['a', 'b'], ['a'])


def test_span_tokens_compares_each_span_with_the_same_sentinels_prediction():
  sentinel = lambda i: i >= 90  # ids 90.. are sentinels here; 1 = EOS, 0 = padding
  target = [99, 5, 6, 98, 7, 1, 0, 0]
  # Span 99 right at both positions, span 98 wrong, and a stray span 97 that is not scored.
  assert metrics.span_tokens(target, [99, 5, 6, 98, 8, 97, 7, 1], sentinel) == (2, 3)
  # Spans are matched by sentinel, not by position in the sequence: a missing first span
  # does not shift the second one.
  assert metrics.span_tokens(target, [98, 7, 1], sentinel) == (1, 3)
  # Position-wise inside a span; tokens after EOS never count; sentinels are free.
  assert metrics.span_tokens(target, [99, 6, 5, 1, 98, 7], sentinel) == (0, 3)
  # No sentinels (a text-to-text target): the whole sequence is one span.
  assert metrics.span_tokens([4, 5, 6, 1], [4, 0, 6, 1], sentinel) == (1, 3)
