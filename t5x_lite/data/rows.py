"""Batches as JSON for people: per row and feature, the ids and each packed example's text.

`python -m t5x_lite.inspect` prints these; tests read them to see what the model is fed.
"""
import numpy as np


TOKEN_FEATURES = ('encoder_input_tokens', 'encoder_target_tokens', 'decoder_input_tokens',
                  'decoder_target_tokens')


def rows_as_json(batch: dict, vocab) -> list[dict]:
  """One dict per row: feature -> {'ids': [...], 'text': [per-segment text]} (text only
  for token features)."""
  out = []
  for r in range(next(iter(batch.values())).shape[0]):
    row = {}
    for name, arr in batch.items():
      ids = np.asarray(arr[r])
      side = name.split('_')[0]
      seg = np.asarray(batch.get(f'{side}_segment_ids', arr)[r])
      n = int(np.max(np.nonzero(seg)[0], initial=-1)) + 1
      entry = {'ids': ids[:n].tolist()}
      if name in TOKEN_FEATURES:
        entry['text'] = [vocab.decode(ids[seg == s], stop_at_eos=False) for s in range(1, int(seg.max(initial=0)) + 1)]
      row[name] = entry
    out.append(row)
  return out
