"""The end-of-run loss curve: sparkline levels from known values, a real PNG on disk."""
import json

import matplotlib.image

from t5x_lite import loss_curve


def test_sparkline_levels():
  # Means map linearly from [min, max] onto 8 levels: 0 -> '▁', 7 -> '█', 3.5 rounds to 4.
  assert loss_curve.sparkline([7, 6, 5, 4, 3, 2, 1, 0]) == '█▇▆▅▄▃▂▁'
  # Width 2 over 4 values: run means 9.5 and 0.5 -> highest then lowest.
  assert loss_curve.sparkline([10, 9, 1, 0], width=2) == '█▁'
  assert loss_curve.sparkline([2.0, 2.0]) == '▄▄'
  assert loss_curve.sparkline([]) == ''


def test_report_reads_metrics_and_writes_png(tmp_path):
  rows = [{'step': s, 'loss': 10.0 / s} for s in range(1, 21)] + [{'step': 20, 'eval_loss': 1}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  line = loss_curve.report(str(tmp_path))
  assert line.startswith('[t5x_lite] loss 10.000 █') and '0.500 (steps 1-20;' in line
  image = matplotlib.image.imread(tmp_path / 'loss.png')
  assert image.shape[:2] == (350, 600)
