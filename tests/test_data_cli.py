"""The data command lines: inspect (JSONL of what the model sees) and the pipeline bench."""
import json
import os
import subprocess
import sys

from test_data_helpers import ROOT

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')


def _run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=ENV)


def test_inspect_prints_ids_and_text_per_feature():
  r = _run('t5x_lite.inspect', '--config=configs/default.py', '--split=validation', '--n=2')
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(l) for l in r.stdout.splitlines()]
  assert len(rows) == 2
  row = rows[0]
  assert set(row) >= {'encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens',
                      'decoder_loss_weights', 'encoder_segment_ids', 'decoder_positions'}
  assert row['decoder_target_tokens']['text'][0].startswith('<extra_id_0>')
  assert '<extra_id_0>' in row['encoder_input_tokens']['text'][0]
  assert row['decoder_target_tokens']['ids'][-1] == 1 and 'text' not in row['decoder_loss_weights']
  assert 'no input skipped' in r.stderr
  # MLM on the encoder family shows the masks.
  r = _run('t5x_lite.inspect', '--config=configs/default.py', '--split=validation', '--n=1',
           '--config.data.objective=mlm', '--config.model.family=encoder')
  assert r.returncode == 0, r.stderr[-2000:]
  row = json.loads(r.stdout.splitlines()[0])
  assert '[MASK]' in ' '.join(row['encoder_input_tokens']['text'])
  assert set(row) == {'encoder_input_tokens', 'encoder_target_tokens', 'encoder_loss_weights',
                      'encoder_segment_ids', 'encoder_positions'}
  # A bad config is one clear line.
  r = _run('t5x_lite.inspect', '--config=configs/default.py', '--config.data.train_source=text:nope/*.txt')
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
      "error: source text:nope/*.txt: 'nope/*.txt' matches no files")


def test_bench_prints_pipeline_tokens_per_second():
  r = _run('t5x_lite.data.bench', '--seconds=1', '--model_steps=0', '--batch_size=8')
  assert r.returncode == 0, r.stderr[-2000:]
  line = r.stdout.strip().splitlines()[-1]
  assert line.startswith('pipeline: span corruption + packing, inputs 512 / targets 114')
  assert float(line.split(': ')[-1].split(' ')[0].replace(',', '')) > 10000
