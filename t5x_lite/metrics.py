r"""Evaluation metrics on decoded strings, computed by the libraries the field uses.

Every function takes `targets` and `predictions`, equal-length sequences of strings, and
returns scores in [0, 100] (T5's convention). A target may also be a list of reference
strings (variable count per example).

    sequence_accuracy  exact string equality with any reference (T5 `sequence_accuracy`)
    exact_match, f1    SQuAD v1.1 as its official script (evaluate-v1.1.py) defines them:
                       `normalize_answer` (lowercase, drop punctuation and the articles
                       a/an/the, collapse whitespace), max over references, mean over
                       examples; F1 on the multiset of normalised words, 0 when nothing
                       overlaps (also when both sides are empty)
    bleu               T5's `t5.evaluation.metrics.bleu`: sacrebleu.corpus_bleu with
                       tokenize='intl' (punctuation split off in every script, where
                       sacrebleu's default 13a misses e.g. '„' and '—'), exp smoothing,
                       case-sensitive; references padded with None when the number per
                       example varies
    rouge              rouge-score's RougeScorer (no stemming) for rouge1, rouge2, rougeL and
                       rougeLsum, F-measure of the best reference per example
                       (`score_multi`), mean over examples. As T5's `rouge`, ' . ' becomes
                       ' .\n' in both texts first, so rougeLsum (whose sentences are lines)
                       sees the sentences of space-tokenized text; T5 then reports the
                       middle of a bootstrap resampling (unseeded), the mean here.

One metric on token ids instead of strings (`span_tokens`, for span corruption): each
target span (the tokens after sentinel k, up to the next sentinel or EOS) is compared
position by position with the predicted span after the same sentinel k; the count of equal
tokens over the count of target span tokens is the span accuracy. Sentinels and EOS are not
counted (they are free to predict); targets without sentinels are one span.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Dict, List, Sequence, Union

import sacrebleu
from rouge_score import rouge_scorer

Target = Union[str, Sequence[str]]
ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL', 'rougeLsum')


def _references(target: Target) -> List[str]:
  refs = [target] if isinstance(target, str) else list(target)
  if not refs:
    raise ValueError('a target needs at least one reference string.')
  return refs


def _check(targets: Sequence[Target], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')


def _mean(values: List[float]) -> float:
  return 100.0 * sum(values) / len(values) if values else 0.0


def sequence_accuracy(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal, character for character, to a reference."""
  _check(targets, predictions)
  return _mean([float(any(p == r for r in _references(t))) for t, p in zip(targets, predictions)])


# ------------------------------------------------- SQuAD v1.1 (evaluate-v1.1.py, verbatim)
def normalize_answer(s: str) -> str:
  """Lower text and remove punctuation, articles and extra whitespace."""
  def remove_articles(text):
    return re.sub(r'\b(a|an|the)\b', ' ', text)

  def white_space_fix(text):
    return ' '.join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return ''.join(ch for ch in text if ch not in exclude)

  return white_space_fix(remove_articles(remove_punc(s.lower())))


def _f1_score(prediction: str, ground_truth: str) -> float:
  prediction_tokens = normalize_answer(prediction).split()
  ground_truth_tokens = normalize_answer(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  return (2 * precision * recall) / (precision + recall)


def _exact_match_score(prediction: str, ground_truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  _check(targets, predictions)
  return _mean([max(_exact_match_score(p, r) for r in _references(t))
                for t, p in zip(targets, predictions)])


def f1(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  _check(targets, predictions)
  return _mean([max(_f1_score(p, r) for r in _references(t))
                for t, p in zip(targets, predictions)])


# ------------------------------------------------------------------- sacrebleu, rouge-score
def bleu(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  """sacrebleu corpus BLEU as T5 calls it (tokenize='intl', otherwise sacrebleu's defaults)."""
  _check(targets, predictions)
  refs = [_references(t) for t in targets]
  n = max((len(r) for r in refs), default=1)
  streams = [[r[i] if i < len(r) else None for r in refs] for i in range(n)]
  return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize='intl').score)


def _sentence_lines(text: str) -> str:
  """T5's rouge preparation: a sentence per line for rougeLsum (' . ' -> ' .\n')."""
  return text.replace(' . ', ' .\n')


def rouge(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """{'rouge1', 'rouge2', 'rougeL', 'rougeLsum'}: mean best-reference F-measure."""
  _check(targets, predictions)
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
  scores = {k: [] for k in ROUGE_TYPES}
  for target, prediction in zip(targets, predictions):
    best = scorer.score_multi([_sentence_lines(r) for r in _references(target)],
                              _sentence_lines(prediction))
    for k in ROUGE_TYPES:
      scores[k].append(best[k].fmeasure)
  return {k: _mean(v) for k, v in scores.items()}


def text_metrics(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """All of the above in one dict (what `python -m t5x_lite.eval` reports)."""
  return {'sequence_accuracy': sequence_accuracy(targets, predictions),
          'exact_match': exact_match(targets, predictions),
          'f1': f1(targets, predictions),
          'bleu': bleu(targets, predictions),
          **rouge(targets, predictions)}


def _spans(ids: Sequence[int], is_sentinel) -> Dict[object, List[int]]:
  """{sentinel id (None before the first): its span's tokens}, cut at the first EOS (1)."""
  spans, key = {None: []}, None
  for i in ids:
    i = int(i)
    if i in (0, 1):  # padding or EOS ends the sequence
      break
    if is_sentinel(i):
      key = i
      spans.setdefault(key, [])
    else:
      spans[key].append(i)
  return spans


def span_tokens(target_ids: Sequence[int], predicted_ids: Sequence[int],
                is_sentinel) -> tuple:
  """(correct, total) target span tokens of one example: position-wise agreement with the
  predicted span after the same sentinel (module docstring)."""
  want, got = _spans(target_ids, is_sentinel), _spans(predicted_ids, is_sentinel)
  correct = total = 0
  for key, tokens in want.items():
    guess = got.get(key, [])
    total += len(tokens)
    correct += sum(1 for j, t in enumerate(tokens) if j < len(guess) and guess[j] == t)
  return correct, total
