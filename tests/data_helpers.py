"""Shared helpers of the data tests (no tests here): configs, spec-side reference code."""
import os
import re

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work

import numpy as np  # noqa: E402

from tiny_run import ROOT, tiny_config  # noqa: E402

EOS, PAD = 1, 0


def data_config(**data):
  """The tiny T5 config, batches of 4 (or the least multiple of data.num_virtual_shards).
  Training reads the (small) validation file unless a test says otherwise: same code path,
  faster tests."""
  import math
  return tiny_config('t5', data={'train_source': 'text:data/corpus/validation.txt', **data},
                     train=dict(batch_size=math.lcm(4, data.get('num_virtual_shards', 4))))


def spec_counts(length, density=0.15, mean=3.0):
  """(N, S) per docs/t5.md §1: L' = max(L, 2), N = round(L' d) in float32 (ties to
  even) clamped to [1, L'-1], S = round(N / m) clamped to [1, min(N, L' - N)]; L = 1 keeps
  no noise."""
  if length == 1:
    return 0, 0
  lp = max(length, 2)
  n = int(np.round(np.float32(lp) * np.float32(density)))
  n = min(max(n, 1), lp - 1)
  s = min(max(1, int(np.round(np.float32(n) / np.float32(mean)))), n, lp - n)
  return n, s


def blank_line_documents(path):
  """Documents of a blank-line separated text file, read independently of the library."""
  text = open(path, encoding='utf-8').read()
  docs = []
  for para in re.split(r'\n[ \t\r]*\n', text):
    lines = [l.strip() for l in para.split('\n') if l.strip()]
    if lines:
      docs.append('\n'.join(lines))
  return docs


def strip_pad(x):
  x = np.asarray(x)
  return x[x != PAD]


def segments(tokens, segment_ids):
  """Splits one packed row into its examples (by segment id, padding dropped)."""
  tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
  return [tokens[segment_ids == s] for s in range(1, int(segment_ids.max(initial=0)) + 1)]
