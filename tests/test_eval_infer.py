"""`python -m t5x_lite.eval` and `python -m t5x_lite.infer` end to end, in subprocesses, on a
tiny encoder-decoder fine-tuned for a few steps on the shipped speaker task."""
import json
import os
import subprocess
import sys

import pytest

from tiny_run import ROOT, TINY_MODEL

# The tiny model on the text-to-text speaker task.
CONFIG = TINY_MODEL + [
    '--config.data.targets_length=8', '--config.data.objective=text_to_text',
    '--config.data.train_source=jsonl:data/tasks/speaker/train.jsonl',
    '--config.data.validation_source=jsonl:data/tasks/speaker/validation.jsonl',
]
TRAIN = ['--config.train.log_every=1', '--config.train.eval_every=0',
         '--config.train.steps=6', '--config.train.checkpoint_every=6', '--show_predictions=0']


def run(module, *args, check=True, stdin=None, timeout=300):
  proc = subprocess.run([sys.executable, '-m', f't5x_lite.{module}', *CONFIG, *args], cwd=ROOT,
                        capture_output=True, text=True, input=stdin, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def snapshot(directory):
  return sorted((os.path.join(d, f), os.stat(os.path.join(d, f)).st_mtime_ns)
                for d, _, files in os.walk(directory) for f in files)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('speaker'))
  run('train', f'--workdir={workdir}', *TRAIN)
  return workdir


def test_eval_prints_and_writes_metrics_without_touching_checkpoints(workdir):
  before = snapshot(os.path.join(workdir, 'checkpoints'))
  proc = run('eval', f'--workdir={workdir}', '--eval_steps=1', '--show_predictions=1')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['step'] == 6 and result['split'] == 'validation'
  assert result['eval_steps'] == 1
  assert result['eval_loss'] > 0 and 0 <= result['eval_accuracy'] <= 1
  assert result['decoded_examples'] == 8  # 1 unpacked batch of 8
  for key in ('sequence_accuracy', 'exact_match', 'f1', 'bleu', 'rouge1', 'rouge2', 'rougeL'):
    assert 0 <= result[key] <= 100, key
  with open(os.path.join(workdir, 'eval_validation_6.json')) as f:
    assert json.load(f) == result
  assert 'prediction:' in proc.stderr and 'target:' in proc.stderr
  assert 'span accuracy: ' in proc.stderr
  # Every decoded example is on disk, and the reported text metrics follow from the file.
  from t5x_lite import metrics
  with open(os.path.join(workdir, 'predictions_validation_6.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  assert len(rows) == 8 and all(set(r) == {'inputs', 'targets', 'predictions', 'score'}
                                for r in rows)
  assert all(r['inputs'].startswith('speaker:') and r['score'] <= 0 for r in rows)
  recomputed = metrics.text_metrics([r['targets'] for r in rows], [r['predictions'] for r in rows])
  for key, value in recomputed.items():
    assert result[key] == pytest.approx(value), key
  assert snapshot(os.path.join(workdir, 'checkpoints')) == before  # read-only


def test_beam_search_eval_and_infer_write_scores(workdir, tmp_path):
  result = json.loads(run('eval', f'--workdir={workdir}', '--eval_steps=1', '--beam_size=3',
                          '--split=train').stdout.strip().splitlines()[-1])
  assert result['beam_size'] == 3 and result['decoded_examples'] == 8
  with open(os.path.join(workdir, 'predictions_train_6.jsonl')) as f:
    assert len([json.loads(l)['score'] for l in f]) == 8
  out = tmp_path / 'out.jsonl'
  proc = run('infer', f'--workdir={workdir}', f'--output={out}', '--beam_size=3',
             stdin='speaker: Macbeth. Is this a dagger\n')
  row = json.loads(out.read_text())
  assert isinstance(row['prediction'], str) and row['score'] < 0
  assert 'beam search (3 beams)' in proc.stderr


@pytest.mark.parametrize('module,flag', [('eval', '--beam_size=0'), ('infer', '--beam_size=0'),
                                         ('infer', '--beam_size=100000')])
def test_bad_beam_size_is_a_one_line_error(workdir, module, flag):
  proc = run(module, f'--workdir={workdir}', flag, check=False, stdin='x\n', timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and \
      'must be between 1 and the vocabulary size' in lines[0], proc.stderr


def test_infer_keeps_order_reports_skips_and_truncation(workdir, tmp_path):
  # stdin in, file out, batches of 2 (fixed shape: the last one is padded).
  long_line = 'speaker: Hamlet. ' + ' '.join(['To be, or not to be, that is the question.'] * 8)
  lines = [long_line, '',
           json.dumps({'inputs': 'speaker: Macbeth. Is this a dagger', 'targets': 'Macbeth'})]
  out = tmp_path / 'out.jsonl'
  proc = run('infer', f'--workdir={workdir}', '--input=-', f'--output={out}', '--batch_size=2',
             stdin='\n'.join(lines) + '\n')
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r['inputs'] for r in rows] == [long_line, 'speaker: Macbeth. Is this a dagger']
  assert all(isinstance(r['prediction'], str) for r in rows)
  assert rows[1]['targets'] == 'Macbeth'  # the input's other JSON fields are kept
  assert 'skipped 1 empty line (line 2)' in proc.stderr
  assert 'wrote 2 predictions' in proc.stderr
  assert 'truncated 1 input to data.inputs_length=64 tokens (line 1:' in proc.stderr


@pytest.mark.parametrize('module', ['eval', 'infer'])
def test_no_checkpoint_is_a_one_line_error(module, tmp_path):
  proc = run(module, f'--workdir={tmp_path / "empty"}', check=False, stdin='', timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'has no checkpoint' in lines[0]
  assert proc.stdout == ''


def test_decoder_only_predict_groups_by_length_and_keeps_order():
  """In process, random params: grouping prompts by length (decoder-only needs equal
  lengths) returns each line's greedy continuation in input order."""
  import jax
  import numpy as np
  from configs import t5_decoder_only
  from t5x_lite import decoding, evaluation, models
  config = t5_decoder_only.get_config('tiny')
  config.model.update(dict(vocab_size=64, d_model=32, d_ff=64, num_heads=2, d_kv=16))
  config.data.objective = 'text_to_text'
  model = models.build(config.model)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), {
      'decoder_input_tokens': np.ones((1, 4), np.int32)})['params']
  rng = np.random.RandomState(0)
  prompts = [[0] + rng.randint(3, 64, n).tolist() + [1] for n in (2, 4, 2, 3, 2)]
  done = []
  got = evaluation.predict(config, model, params, prompts, batch_size=2, max_length=3,
                           on_batch=lambda idx, rows, scores: done.append(list(idx)))
  assert sorted(i for idx in done for i in idx) == [0, 1, 2, 3, 4]
  for prompt, out in zip(prompts, got):
    want = decoding.decoder_only_generate(
        model, params, np.array([prompt, prompt], np.int32), 3, prefix_lm=True)[0]
    np.testing.assert_array_equal(out, np.asarray(want))
