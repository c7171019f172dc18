r"""Evaluation metrics on decoded strings, implemented from their definitions.

Every function takes `targets` and `predictions`, equal-length sequences of strings, and
returns a score in [0, 100] (T5's convention). A target may also be a list of reference
strings; each metric then says how it combines them (max per example for exact match, F1
and ROUGE; multi-reference clipping and closest length for BLEU).

    sequence_accuracy  exact string equality
    exact_match        equality after SQuAD normalisation (`normalize_answer`)
    f1                 SQuAD token F1 on normalised words (multiset overlap)
    bleu               corpus BLEU (Papineni et al. 2002), 1-4-grams, no smoothing
    rouge              ROUGE-1 / ROUGE-2 / ROUGE-L F-measures, averaged over examples

Tokenisation: BLEU and ROUGE split on whitespace and are case-sensitive, with no other
preprocessing. They are therefore *not* sacrebleu's default (13a tokenisation, which
splits punctuation off words) or rouge-score's (which lowercases, drops non-alphanumerics
and can stem): scores differ from those packages whenever the text has punctuation
attached to words or mixed case. Compare figures only with figures computed the same way.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Dict, List, Sequence, Union

Target = Union[str, Sequence[str]]


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


# ------------------------------------------------------------ exact match and F1
def sequence_accuracy(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal, character for character, to a reference.

  >>> sequence_accuracy(['Lafeu', 'Helena'], ['Lafeu', 'helena'])
  50.0
  """
  _check(targets, predictions)
  return _mean([float(any(p == r for r in _references(t))) for t, p in zip(targets, predictions)])


_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
  """SQuAD's normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the,
  collapse whitespace.

  >>> normalize_answer('The  Duke of York!')
  'duke of york'
  """
  s = ''.join(ch for ch in s.lower() if ch not in _PUNCT)
  s = _ARTICLES.sub(' ', s)
  return ' '.join(s.split())


def exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal to a reference after `normalize_answer`.

  >>> exact_match(['The Duke', 'Helena'], ['duke.', 'Lafeu'])
  50.0
  """
  _check(targets, predictions)
  return _mean([float(any(normalize_answer(p) == normalize_answer(r) for r in _references(t)))
                for t, p in zip(targets, predictions)])


def _token_f1(reference: str, prediction: str) -> float:
  ref, pred = normalize_answer(reference).split(), normalize_answer(prediction).split()
  if not ref or not pred:  # SQuAD v2: both empty is a match, one empty is not
    return float(ref == pred)
  overlap = sum((collections.Counter(ref) & collections.Counter(pred)).values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(pred), overlap / len(ref)
  return 2 * precision * recall / (precision + recall)


def f1(targets: Sequence[Target], predictions: Sequence[str]) -> float:
  """Mean SQuAD token F1 (best reference per example), in percent.

  Words are the whitespace tokens of `normalize_answer`'s output; the overlap counts each
  word at most as often as it occurs in both (multiset intersection).
  Worked example: reference 'the Duke of York', prediction 'York the duke' ->
  normalised ['duke', 'of', 'york'] and ['york', 'duke']; overlap 2, precision 2/2,
  recall 2/3, F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8:

  >>> f1(['the Duke of York'], ['York the duke'])
  80.0
  """
  _check(targets, predictions)
  return _mean([max(_token_f1(r, p) for r in _references(t))
                for t, p in zip(targets, predictions)])


# ------------------------------------------------------------------------- BLEU
def _ngrams(tokens: List[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(targets: Sequence[Target], predictions: Sequence[str], max_order: int = 4) -> Dict:
  """The corpus sums BLEU is made of: clipped n-gram matches and candidate n-gram counts
  per order, candidate length c and effective reference length r."""
  _check(targets, predictions)
  matches, totals = [0] * max_order, [0] * max_order
  c = r = 0
  for target, prediction in zip(targets, predictions):
    refs = [x.split() for x in _references(target)]
    cand = prediction.split()
    c += len(cand)
    # Closest reference length; ties go to the shorter one (sacrebleu, NIST).
    r += min((abs(len(x) - len(cand)), len(x)) for x in refs)[1]
    for n in range(1, max_order + 1):
      cand_counts = _ngrams(cand, n)
      max_ref = collections.Counter()
      for x in refs:
        max_ref |= _ngrams(x, n)  # elementwise max over references
      matches[n - 1] += sum(min(k, max_ref[g]) for g, k in cand_counts.items())
      totals[n - 1] += max(len(cand) - n + 1, 0)
  return dict(matches=matches, totals=totals, candidate_length=c, reference_length=r)


def bleu(targets: Sequence[Target], predictions: Sequence[str], max_order: int = 4) -> float:
  """Corpus BLEU (Papineni et al. 2002) on whitespace tokens, case-sensitive, in percent.

  p_n = (sum over sentences of clipped n-gram matches) / (sum of candidate n-grams), where
  a candidate n-gram's count is clipped to its largest count in any one reference;
  BLEU = BP * exp(mean_{n=1..4} log p_n), BP = 1 if c > r else exp(1 - r / c) with c the
  total candidate length and r the total closest-reference length. No smoothing: any
  p_n = 0 (including a corpus without any n-gram of order n) gives 0.

  Worked example: reference 'the cat sat on the mat', candidate 'the cat sat on a mat'
  (6 tokens each, so BP = 1). Matches: 1-grams the, cat, sat, on, mat = 5/6;
  2-grams 'the cat', 'cat sat', 'sat on' = 3/5; 3-grams 'the cat sat', 'cat sat on' = 2/4;
  4-grams 'the cat sat on' = 1/3. BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25
  = 0.537285...:

  >>> round(bleu(['the cat sat on the mat'], ['the cat sat on a mat']), 4)
  53.7285
  """
  s = bleu_stats(targets, predictions, max_order)
  c, r = s['candidate_length'], s['reference_length']
  if c == 0 or any(m == 0 for m in s['matches']):
    return 0.0
  log_p = sum(math.log(m / t) for m, t in zip(s['matches'], s['totals'])) / max_order
  bp = 1.0 if c > r else math.exp(1.0 - r / c)
  return 100.0 * bp * math.exp(log_p)


# ------------------------------------------------------------------------ ROUGE
def _f_measure(overlap: int, n_pred: int, n_ref: int) -> float:
  if overlap == 0:
    return 0.0
  precision, recall = overlap / n_pred, overlap / n_ref
  return 2 * precision * recall / (precision + recall)


def _rouge_n(reference: List[str], prediction: List[str], n: int) -> float:
  ref, pred = _ngrams(reference, n), _ngrams(prediction, n)
  overlap = sum((ref & pred).values())
  return _f_measure(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence (not necessarily contiguous).

  >>> lcs_length('the cat sat on the mat'.split(), 'the mat sat on a cat'.split())
  3
  """
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def _rouge_l(reference: List[str], prediction: List[str]) -> float:
  return _f_measure(lcs_length(reference, prediction), len(prediction), len(reference))


def rouge(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (beta = 1) on whitespace tokens, averaged over
  examples (best reference per example), in percent: {'rouge1', 'rouge2', 'rougeL'}.

  ROUGE-N: overlap = multiset intersection of the n-grams; P = overlap / prediction
  n-grams, R = overlap / reference n-grams, F = 2PR / (P + R) (0 when the overlap is 0,
  so also when either side is empty). ROUGE-L uses the LCS length as the overlap and the
  token counts as the denominators. Sentence-level L, not the summary-level 'rougeLsum'.

  Worked example: reference 'the cat sat on the mat', prediction 'the mat sat on a cat'
  (6 tokens each, so F = P = R). 1-grams: the, mat, sat, on, cat match (the reference's
  second 'the' has no partner) -> 5/6; 2-grams: 'sat on' and 'the mat' -> 2/5; LCS
  'the sat on' -> 3/6:

  >>> {k: round(v, 4) for k, v in rouge(['the cat sat on the mat'],
  ...                                   ['the mat sat on a cat']).items()}
  {'rouge1': 83.3333, 'rouge2': 40.0, 'rougeL': 50.0}
  """
  _check(targets, predictions)
  scores = {'rouge1': [], 'rouge2': [], 'rougeL': []}
  for target, prediction in zip(targets, predictions):
    pred = prediction.split()
    refs = [x.split() for x in _references(target)]
    scores['rouge1'].append(max(_rouge_n(x, pred, 1) for x in refs))
    scores['rouge2'].append(max(_rouge_n(x, pred, 2) for x in refs))
    scores['rougeL'].append(max(_rouge_l(x, pred) for x in refs))
  return {k: _mean(v) for k, v in scores.items()}


def text_metrics(targets: Sequence[Target], predictions: Sequence[str]) -> Dict[str, float]:
  """All of the above in one dict (what `python -m t5x_lite.eval` reports)."""
  return {'sequence_accuracy': sequence_accuracy(targets, predictions),
          'exact_match': exact_match(targets, predictions),
          'f1': f1(targets, predictions),
          'bleu': bleu(targets, predictions),
          **rouge(targets, predictions)}
