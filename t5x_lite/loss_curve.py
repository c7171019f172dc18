"""The training loss curve of a workdir, read from DIR/metrics.jsonl: a one-line terminal
sparkline and a PNG (matplotlib, headless Agg backend) at DIR/loss.png.

Sparkline: the logged losses are split into `width` equal runs of consecutive logs, each
run's mean mapped linearly from [min, max] of those means onto the eight block characters
'▁▂▃▄▅▆▇█'; a flat curve is all '▄'.
"""
import json
import math
import os
from typing import List, Tuple

BLOCKS = '▁▂▃▄▅▆▇█'


def read_losses(workdir: str) -> Tuple[List[int], List[float]]:
  """(steps, train losses) of every metrics.jsonl record that has a finite loss (a log
  window of only skipped non-finite steps, train.on_nonfinite=skip, logs NaN)."""
  steps, losses = [], []
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      if 'loss' in record and math.isfinite(float(record['loss'])):
        steps.append(int(record['step']))
        losses.append(float(record['loss']))
  return steps, losses


def sparkline(values: List[float], width: int = 40) -> str:
  if not values:
    return ''
  width = min(width, len(values))
  runs = [values[len(values) * i // width:len(values) * (i + 1) // width] for i in range(width)]
  means = [sum(r) / len(r) for r in runs]
  lo, hi = min(means), max(means)
  if hi == lo:
    return BLOCKS[3] * width
  return ''.join(BLOCKS[round((m - lo) / (hi - lo) * (len(BLOCKS) - 1))] for m in means)


def save_png(workdir: str, steps: List[int], losses: List[float]) -> str:
  import matplotlib
  matplotlib.use('Agg')  # no display on servers and CI
  from matplotlib import pyplot as plt
  path = os.path.join(workdir, 'loss.png')
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
  ax.plot(steps, losses)
  ax.set_xlabel('step')
  ax.set_ylabel('train loss')
  ax.set_title(os.path.basename(os.path.normpath(workdir)))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def report(workdir: str) -> str:
  """One line for the end of a run: sparkline, first and last loss, the PNG's path."""
  steps, losses = read_losses(workdir)
  if not losses:
    return '[t5x_lite] loss curve: no logged losses.'
  path = save_png(workdir, steps, losses)
  return (f'[t5x_lite] loss {losses[0]:.3f} {sparkline(losses)} {losses[-1]:.3f} '
          f'(steps {steps[0]}-{steps[-1]}; plot: {path})')
