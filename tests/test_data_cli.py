"""The data command lines: inspect (JSONL of what the model sees) and the pipeline bench."""
import json
import os
import subprocess
import sys

from data_helpers import ROOT

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
  # Fewer rows than streams: the first --n rows of a batch that every stream feeds.
  r3 = _run('t5x_lite.inspect', '--config=configs/default.py', '--split=validation', '--n=3')
  r4 = _run('t5x_lite.inspect', '--config=configs/default.py', '--split=validation', '--n=4')
  assert r3.returncode == r4.returncode == 0, r3.stderr[-2000:]
  assert r3.stdout.splitlines() == r4.stdout.splitlines()[:3] and len(r4.stdout.splitlines()) == 4


def test_inspect_prints_the_first_rows_of_the_batch_training_reads():
  """Rows 0..n-1 of the first training batch (train.batch_size rows, stream blocks in
  order), as the pipeline gives them to the train step. It printed a batch of one row per
  stream: rows 0, 8, 16 of the real batch."""
  from configs import default
  from t5x_lite.data import pipeline, rows
  r = _run('t5x_lite.inspect', '--config=configs/default.py', '--split=train', '--n=3')
  assert r.returncode == 0, r.stderr[-2000:]
  it = pipeline.get_dataset(default.get_config(), 'train')
  want = rows.rows_as_json(next(it), it.vocab)[:3]
  assert [json.loads(l) for l in r.stdout.splitlines()] == json.loads(json.dumps(want))


def test_inspect_rows_show_masks_for_mlm():
  from data_helpers import data_config
  from t5x_lite.data import rows
  from t5x_lite.data import pipeline
  cfg = data_config(objective='mlm', inputs_length=128, num_virtual_shards=1)
  cfg.model.family = 'encoder'
  it = pipeline.get_dataset(cfg, 'validation', batch_size=1)
  row = rows.rows_as_json(next(it), it.vocab)[0]
  assert '[MASK]' in ' '.join(row['encoder_input_tokens']['text'])
  assert '</s>' in ' '.join(row['encoder_target_tokens']['text'])        # documents end in EOS
  assert set(row) == {'encoder_input_tokens', 'encoder_target_tokens', 'encoder_loss_weights',
                      'encoder_segment_ids', 'encoder_positions'}


def test_bench_prints_pipeline_tokens_per_second(capsys):
  from t5x_lite import throughput
  out = throughput.pipeline_vs_train_step(seconds=0.5, batch_size=8, model_steps=0)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith('pipeline: span corruption + packing, inputs 512 / targets 114, shipped corpus: ')
  assert out['pipeline_positions_per_s'] > 10000 and f"{out['pipeline_positions_per_s']:,.0f}" in line


def test_inspect_with_a_non_positive_batch_size_names_the_field():
  """It ended in a TensorFlow traceback (0) or 'Dimension -1 must be >= 0' (-4)."""
  for value in (0, -4):
    r = _run('t5x_lite.inspect', '--config=configs/default.py',
             f'--config.train.batch_size={value}')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f'inspect: error: config.train.batch_size={value} must be a positive integer.')
