"""`python -m t5x_lite.eval` and `python -m t5x_lite.infer` end to end, in subprocesses, on a
tiny encoder-decoder fine-tuned for a few steps on the shipped speaker task."""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tiny_run import ROOT, TINY_MODEL, config_from_flags, numpy_loss

# The tiny model on the text-to-text speaker task.
# One input stream (the default reads four: each costs a start-up ~1 s of tf.data tracing);
# test_eval_counts_empty_and_truncated_examples reads four.
CONFIG = TINY_MODEL + [
    '--config.data.num_virtual_shards=1',
    '--config.data.targets_length=8', '--config.data.objective=text_to_text',
    '--config.data.train_source=jsonl:data/tasks/speaker/train.jsonl',
    '--config.data.validation_source=jsonl:data/tasks/speaker/validation.jsonl',
]
# Training-time eval at steps 5 and 6 (the last) on 1 validation batch; a checkpoint every
# step, of which keep=2 leaves steps 5 and 6.
TRAIN = ['--config.train.log_every=1', '--config.train.eval_every=5',
         '--config.train.eval_steps=1', '--config.train.steps=6',
         '--config.train.checkpoint_every=1', '--config.checkpoint.keep=2',
         '--show_predictions=0']


def run(module, *args, check=True, stdin=None, timeout=300):
  proc = subprocess.run([sys.executable, '-m', f't5x_lite.{module}', *CONFIG, *args], cwd=ROOT,
                        capture_output=True, text=True, input=stdin, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def snapshot(directory):
  return sorted((os.path.join(d, f), os.stat(os.path.join(d, f)).st_mtime_ns)
                for d, _, files in os.walk(directory) for f in files)


@functools.lru_cache(maxsize=None)
def numpy_eval(workdir, step):
  """(loss, token accuracy) of the checkpoint at `step` on the first validation batch (what
  eval_steps=1 evaluates), recomputed in float64 numpy from its params read with Orbax."""
  import jax
  import orbax.checkpoint as ocp
  from t5x_lite import models
  from t5x_lite.data import pipeline
  params = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))['params']
  cfg = config_from_flags(CONFIG)
  batch = next(pipeline.get_dataset(cfg, 'validation'))
  logits = jax.jit(models.build(cfg.model).apply)({'params': params}, batch)
  return numpy_loss(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
                    cfg.optimizer.z_loss)


TRAIN_LOG = {}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('speaker'))
  TRAIN_LOG[workdir] = run('train', f'--workdir={workdir}', *TRAIN).stderr
  return workdir


def test_eval_prints_and_writes_metrics_without_touching_checkpoints(workdir):
  before = snapshot(os.path.join(workdir, 'checkpoints'))
  # A workdir relative to the cwd, as the README's commands give it.
  proc = run('eval', f'--workdir={os.path.relpath(workdir, ROOT)}', '--eval_steps=1',
             '--show_predictions=1')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['step'] == 6 and result['split'] == 'validation'
  assert result['eval_steps'] == 1
  loss, accuracy = numpy_eval(workdir, 6)
  assert result['eval_loss'] == pytest.approx(loss, rel=1e-5)
  assert result['eval_accuracy'] == pytest.approx(accuracy, rel=1e-6)
  assert result['decoded_examples'] == 8  # 1 unpacked batch of 8
  for key in ('sequence_accuracy', 'exact_match', 'f1', 'bleu', 'rouge1', 'rouge2', 'rougeL'):
    assert 0 <= result[key] <= 100, key
  with open(os.path.join(workdir, 'eval_validation_6.json')) as f:
    assert json.load(f) == result
  assert 'prediction:' in proc.stderr and 'target:' in proc.stderr
  assert 'exact match: ' in proc.stderr   # a text-to-text task: scored by exact match
  # Every decoded example is on disk, and the reported text metrics follow from the file.
  from t5x_lite import metrics
  with open(os.path.join(workdir, 'predictions_validation_6.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  assert len(rows) == 8 and all(set(r) == {'inputs', 'targets', 'predictions', 'score'}
                                for r in rows)
  assert all(r['inputs'].startswith('speaker:') and r['score'] <= 0 for r in rows)
  # In file order: the split's first 8 examples, as read (the model saw inputs cut to 64
  # tokens; the file keeps them whole).
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    first = [json.loads(next(f)) for _ in range(8)]
  assert [(r['inputs'], r['targets']) for r in rows] == [(e['inputs'], e['targets'])
                                                         for e in first]
  recomputed = metrics.text_metrics([r['targets'] for r in rows], [r['predictions'] for r in rows])
  for key, value in recomputed.items():
    assert result[key] == pytest.approx(value), key
  assert snapshot(os.path.join(workdir, 'checkpoints')) == before  # read-only


def test_training_eval_and_checkpoint_keep(workdir):
  """train.eval_every: metrics.jsonl's eval figures at steps 5 and 6 are those of the
  checkpoints at 5 and 6, recomputed in numpy; checkpoint.keep=2 with a checkpoint every step
  leaves exactly steps 5 and 6, both restorable (numpy_eval reads their params)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = {r['step']: r for r in map(json.loads, f)}
  assert sorted(rows) == [1, 2, 3, 4, 5, 6]
  assert [s for s, r in rows.items() if 'eval_loss' in r] == [5, 6]
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == [5, 6]
  for step in (5, 6):
    loss, accuracy = numpy_eval(workdir, step)
    assert rows[step]['eval_loss'] == pytest.approx(loss, rel=1e-5), step
    assert rows[step]['eval_accuracy'] == pytest.approx(accuracy, rel=1e-6), step
  assert rows[5]['eval_loss'] != rows[6]['eval_loss']  # the params moved in step 6


def in_process(module, workdir, monkeypatch, **kwargs):
  """`module`'s library body as its command runs it (the flags -> arguments layer is shown
  by the one-line-error tests below, which pass bad values through it); the config is
  CONFIG's, and relative data paths resolve from the repository root."""
  monkeypatch.chdir(ROOT)
  config = config_from_flags(CONFIG)
  if module == 'eval':
    from t5x_lite import eval as eval_cmd
    return eval_cmd.run_eval(config, workdir, **kwargs)
  from t5x_lite import infer
  return infer.run_infer(config, workdir, **kwargs)


def test_eval_and_infer_read_the_step_asked_for(workdir, tmp_path, monkeypatch, capsys):
  """--step=N evaluates (and decodes with) an earlier checkpoint than the latest; there was
  no way to, and a step directory given as --workdir was called 'no checkpoint'."""
  result = in_process('eval', workdir, monkeypatch, eval_steps=1, step=5)
  loss, accuracy = numpy_eval(workdir, 5)
  assert result['step'] == 5 and result['eval_loss'] == pytest.approx(loss, rel=1e-5)
  assert result['eval_accuracy'] == pytest.approx(accuracy, rel=1e-6)
  assert loss != numpy_eval(workdir, 6)[0]
  with open(os.path.join(workdir, 'eval_validation_5.json')) as f:
    assert json.load(f) == result
  # Another extent (or source) replaces that step's results: said (it was silent).
  capsys.readouterr()
  in_process('eval', workdir, monkeypatch, eval_steps=2, step=5)
  err = capsys.readouterr().err
  assert err.count('replacing') == 1, err  # once, though two names hold the eval
  assert (f'[t5x_lite] warning: replacing {workdir}/eval_validation_5.json and its predictions '
          f'(1 batch of jsonl:data/tasks/speaker/validation.jsonl) with this eval (2 batches of '
          'jsonl:data/tasks/speaker/validation.jsonl).') in err
  in_process('eval', workdir, monkeypatch, eval_steps=2, step=5)  # the same again: nothing
  assert 'replacing' not in capsys.readouterr().err
  (tmp_path / 'in.txt').write_text('speaker: Macbeth. Is this a dagger\n')
  for step in (5, 6):
    out = tmp_path / f'out{step}.jsonl'
    in_process('infer', workdir, monkeypatch, input_path=str(tmp_path / 'in.txt'),
               output_path=str(out), step=step)
    assert len(out.read_text().splitlines()) == 1
    assert f'[t5x_lite] infer: params of step {step} from {workdir}/checkpoints/{step}/' in (
        capsys.readouterr().err)
  with pytest.raises(ValueError, match=rf'^--step=4: {workdir}/checkpoints has no checkpoint '
                                       r'of that step \(it has 5, 6\)\.$'):
    in_process('eval', workdir, monkeypatch, eval_steps=1, step=4)
  step_dir = os.path.join(workdir, 'checkpoints', '5')
  with pytest.raises(ValueError, match=rf'^--workdir={step_dir} is one checkpoint of a run: '
                                       rf'pass --workdir={workdir} --step=5\.$'):
    in_process('eval', step_dir, monkeypatch, eval_steps=1)


def test_beam_search_eval_and_infer_write_scores(workdir, tmp_path, monkeypatch, capsys):
  greedy = in_process('eval', workdir, monkeypatch, eval_steps=1, split='train')
  result = in_process('eval', workdir, monkeypatch, eval_steps=1, beam_size=3, split='train')
  assert result['beam_size'] == 3 and result['decoded_examples'] == 8
  # The plain names hold the latest eval; each beam size keeps its own copy beside them
  # (beam search once wrote over greedy's files).
  for name, want in (('train_6', result), ('train_6_beam1', greedy), ('train_6_beam3', result)):
    with open(os.path.join(workdir, f'eval_{name}.json')) as f:
      assert json.load(f) == want
    with open(os.path.join(workdir, f'predictions_{name}.jsonl')) as f:
      assert len([json.loads(l)['score'] for l in f]) == 8
  source, out = tmp_path / 'in.txt', tmp_path / 'out.jsonl'
  source.write_text('speaker: Macbeth. Is this a dagger\n')
  in_process('infer', workdir, monkeypatch, input_path=str(source), output_path=str(out),
             beam_size=3)
  row = json.loads(out.read_text())
  assert isinstance(row['prediction'], str) and row['score'] < 0
  assert 'beam search (3 beams)' in capsys.readouterr().err


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
           json.dumps({'id': 7, 'line': 99, 'inputs': 'speaker: Macbeth. Is this a dagger',
                       'prediction': 'old', 'targets': 'Macbeth'})]
  out = tmp_path / 'out.jsonl'
  proc = run('infer', f'--workdir={workdir}', '--input=-', f'--output={out}', '--batch_size=2',
             stdin='\n'.join(lines) + '\n')
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r['inputs'] for r in rows] == [long_line, 'speaker: Macbeth. Is this a dagger']
  assert all(isinstance(r['prediction'], str) for r in rows)
  assert rows[1]['targets'] == 'Macbeth'  # the input's other JSON fields are kept
  # in their order, then infer's (an input's own `line` / `prediction` replaced: they kept
  # the input's place); `line` joins an output to its input across skipped lines.
  assert list(rows[1]) == ['id', 'inputs', 'targets', 'prediction', 'score', 'line']
  assert rows[1]['prediction'] != 'old'
  assert [r['line'] for r in rows] == [1, 3]
  assert 'skipped 1 empty line (line 2)' in proc.stderr
  assert 'wrote 2 predictions' in proc.stderr
  assert 'truncated 1 of 2 inputs to data.inputs_length=64 tokens, EOS included (line 1:' in proc.stderr


def test_infer_without_a_usable_line_still_refuses_a_config_the_checkpoint_does_not_fit(
    workdir, tmp_path):
  """With no usable input line infer reads no params, and so said 'read 0 lines; wrote 0
  predictions', exit 0, under a model config the checkpoint was not trained with."""
  (tmp_path / 'empty.txt').write_text('')
  proc = run('infer', f'--workdir={workdir}', f'--input={tmp_path / "empty.txt"}',
             f'--output={tmp_path / "out.jsonl"}', '--config.model.d_ff=96', check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
      f'error: --workdir={workdir}: config.model.d_ff=96 differs from'), proc.stderr
  assert not (tmp_path / 'out.jsonl').exists()


def test_infer_skips_inputs_without_tokens_and_counts_truncation(workdir, tmp_path):
  """Known numbers: 2 of 5 inputs over data.inputs_length, 2 lines that tokenize to
  nothing, 1 empty line; every count exact and nothing else dropped."""
  long_line = 'speaker: Hamlet. ' + ' '.join(['To be, or not to be, that is the question.'] * 8)
  lines = ['speaker: Macbeth. Is this a dagger', long_line, '\u200b', 'speaker: Lear. Blow, winds',
           '', long_line, json.dumps({'inputs': '\u200b\u200b'}), 'speaker: Puck. Lord, what fools']
  out = tmp_path / 'out.jsonl'
  proc = run('infer', f'--workdir={workdir}', f'--output={out}', '--batch_size=4',
             stdin='\n'.join(lines) + '\n')
  assert len(out.read_text().splitlines()) == 5
  assert 'read 8 lines; wrote 5 predictions; skipped 1 empty line (line 5)' in proc.stderr
  assert 'skipped 2 inputs that tokenize to nothing (lines 3, 7)' in proc.stderr
  assert 'truncated 2 of 5 inputs to data.inputs_length=64 tokens, EOS included (lines 2: ' in proc.stderr


def _task_with_bad_input(tmp_path):
  """A speaker-style validation file: 12 good examples, 3 with inputs and 2 with targets
  longer than the tiny config's 64 / 8 tokens, 2 empty and 2 token-less inputs, a blank line."""
  long_input = 'speaker: Hamlet. ' + ' '.join(['To be, or not to be, that is the question.'] * 8)
  # Over 8 tokens, with characters the tiny vocabulary lacks (eval scores against it as is).
  long_target = 'Hamlet, Prince of Denmark \u2014 and his father the late King \u263a'
  good = [{'inputs': f'speaker: {name}. {line}', 'targets': name} for name, line in [
      ('Hamlet', 'To be, or not to be'), ('Macbeth', 'Is this a dagger'), ('Lear', 'Blow, winds'),
      ('Puck', 'Lord, what fools'), ('Juliet', 'Wherefore art thou'), ('Romeo', 'But soft'),
      ('Portia', 'The quality of mercy'), ('Prospero', 'We are such stuff'),
      ('Ophelia', 'There is rosemary'), ('Iago', 'I am not what I am'),
      ('Brutus', 'Not that I loved Caesar less'), ('Viola', 'I am not that I play')]]
  rows = (good[:6] + [{'inputs': long_input, 'targets': 'Hamlet'}] * 3 + good[6:] +
          [{'inputs': 'speaker: King. Well', 'targets': long_target}] * 2 +
          [{'inputs': '', 'targets': 'x'}, {'inputs': ' ', 'targets': 'x'}] +
          [{'inputs': '\u200b', 'targets': 'x'}] * 2)
  path = tmp_path / 'validation.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '\n')
  return path


def test_eval_counts_empty_and_truncated_examples(workdir, tmp_path):
  """eval over a whole split with known bad input, read by 4 streams (one file, so every
  stream reads every line): exact counts in the JSON and the stderr line."""
  path = _task_with_bad_input(tmp_path)
  proc = run('eval', f'--workdir={workdir}', '--eval_steps=0',
             f'--config.data.validation_source=jsonl:{path}',
             '--config.data.num_virtual_shards=4')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['examples_read'] == 17 and result['decoded_examples'] == 17
  assert result['truncated_inputs'] == 3 and result['truncated_targets'] == 2
  assert result['skipped_input'] == {"empty field 'inputs'": 2, 'empty line': 1,
                                     "field 'inputs' without tokens": 2}
  assert ('3 of 17 examples had inputs longer than data.inputs_length=64 tokens (EOS '
          'included) and were truncated; 2 of 17 examples had targets longer than '
          'data.targets_length=8 tokens (EOS included) and were truncated') in proc.stderr
  assert "eval data (validation): skipped 2 x empty field 'inputs'" in proc.stderr
  # Predictions are scored against the texts as read, as seqio's *_pretokenized features:
  # the long targets whole and the characters the vocabulary lacks kept (not decoded back
  # from truncated ids, or as ' \u2047 '), the long inputs whole too.
  with open(os.path.join(workdir, f'predictions_validation_{result["step"]}.jsonl')) as f:
    decoded = [json.loads(l) for l in f]
  read = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  read = [r for r in read if r['inputs'].strip(' \u200b')]
  assert [(r['inputs'], r['targets']) for r in decoded] == \
      [(r['inputs'], r['targets']) for r in read]
  from t5x_lite import metrics
  recomputed = metrics.text_metrics([r['targets'] for r in read],
                                    [r['predictions'] for r in decoded])
  for key, value in recomputed.items():
    assert result[key] == pytest.approx(value), key


def test_training_reports_truncated_examples(workdir):
  """The speaker task has inputs over 64 tokens: training counts and says so, for the
  train stream (as read so far) and once for the validation pass of train.eval_every."""
  log = TRAIN_LOG[workdir]
  assert re.search(r'data train \(this host shard\): \d+ of \d+ examples had inputs longer '
                   r'than data.inputs_length=64 tokens \(EOS included\) and were truncated', log)
  assert len(re.findall(r'data validation \(this host shard\): \d+ of \d+ examples', log)) == 1


def test_infer_sampling_flags(workdir, tmp_path, monkeypatch, capsys):
  """--temperature / --top_k / --seed (in process): top_k=1 sampling is greedy decoding
  exactly; a fixed seed reproduces its samples, which differ from greedy somewhere."""
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    lines = [json.loads(next(f))['inputs'] for _ in range(4)]
  source = tmp_path / 'in.txt'
  source.write_text('\n'.join(lines) + '\n')

  def predictions(name, **kwargs):
    out = tmp_path / f'{name}.jsonl'
    in_process('infer', workdir, monkeypatch, input_path=str(source), output_path=str(out),
               **kwargs)
    return ([json.loads(l)['prediction'] for l in out.read_text().splitlines()],
            capsys.readouterr().err)

  greedy, err = predictions('greedy')
  assert len(greedy) == 4 and 'greedy' in err
  top1, err = predictions('top1', temperature=1.0, top_k=1, seed=3)
  assert 'sampling (T=1.0, top_k=1' in err
  assert top1 == greedy
  sampled, _ = predictions('sampled', temperature=1.0, seed=3)
  again, _ = predictions('again', temperature=1.0, seed=3)
  assert sampled == again
  assert sampled != greedy
  # A temperature so small that logits / T overflowed float32 (+-inf: NaN probabilities and
  # arbitrary ids, pad 0 among them) samples the greedy sequence, as it tends to.
  tiny, _ = predictions('tiny', temperature=1e-45, seed=3)
  assert tiny == greedy


def test_infer_and_eval_read_a_converted_hugging_face_model_as_it_is(workdir, tmp_path,
                                                                   monkeypatch):
  """The workdir exported to Hugging Face and imported back (`convert` both ways) decodes
  as a workdir: infer and eval take the converted directory (step 0), with the workdir's
  predictions, no training needed."""
  from t5x_lite import conversion
  hf_dir = conversion.t5x_to_hf(workdir, str(tmp_path / 'hf'))
  converted = conversion.hf_to_t5x(hf_dir, str(tmp_path / 'converted'))
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    lines = [json.loads(next(f))['inputs'] for _ in range(3)]
  source = tmp_path / 'in.txt'
  source.write_text('\n'.join(lines) + '\n')
  predictions = {}
  for name, directory in (('trained', workdir), ('converted', converted)):
    out = tmp_path / f'{name}.jsonl'
    in_process('infer', directory, monkeypatch, input_path=str(source), output_path=str(out))
    predictions[name] = [json.loads(l) for l in out.read_text().splitlines()]
  assert [p['prediction'] for p in predictions['converted']] == [
      p['prediction'] for p in predictions['trained']]
  result = in_process('eval', converted, monkeypatch, eval_steps=1)
  assert result['step'] == 0 and result['eval_loss'] == pytest.approx(
      numpy_eval(workdir, 6)[0], rel=1e-5)


def test_infer_batches_neither_pad_with_empty_rows_nor_need_the_training_batch(
    workdir, tmp_path, monkeypatch):
  """--batch_size=3 over 4 lines (a full batch, then 1 line and 2 spare rows) with a
  train.batch_size that 8 devices do not divide (loading refused it: a training field); the
  spare rows repeat a real one (an all-zero row never emits EOS, so its batch decoded to
  --max_length); the predictions are those of the default batch."""
  from t5x_lite import decoding, infer
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    lines = [json.loads(next(f))['inputs'] for _ in range(4)]
  source = tmp_path / 'in.txt'
  source.write_text('\n'.join(lines) + '\n')
  batches = []
  decode = decoding.decode

  def recording_decode(model, params, batch, *args, **kwargs):
    batches.append(batch['encoder_input_tokens'])
    return decode(model, params, batch, *args, **kwargs)
  monkeypatch.setattr(decoding, 'decode', recording_decode)
  monkeypatch.chdir(ROOT)
  outputs = {}
  for name, train_batch, batch_size in (('default', 8, 0), ('small', 12, 3)):
    config = config_from_flags(CONFIG)
    config.train.batch_size = train_batch
    out = tmp_path / f'{name}.jsonl'
    infer.run_infer(config, workdir, str(source), str(out), batch_size=batch_size)
    outputs[name] = [json.loads(l)['prediction'] for l in out.read_text().splitlines()]
  assert outputs['small'] == outputs['default'] and len(outputs['small']) == 4
  assert [len(b) for b in batches] == [8, 3, 3]
  assert all((b != 0).any(axis=1).all() for b in batches)  # no all-padding row


def test_infer_top_p_samples_the_nucleus_at_its_frequencies(workdir, tmp_path, monkeypatch):
  """`infer --top_p` (a subprocess, on 1 device: this session's 8 would replicate the
  decode): the first tokens of 4,000 samples of one input are the nucleus of
  softmax(logits / T) at the checkpoint's first decoder step (a full forward pass, float64),
  drawn at its renormalised frequencies (chi-square). T makes the 4 most likely tokens hold
  80% of the mass and top_p lies halfway through the 4th token's share, so the nucleus is
  exactly 4 tokens and an unapplied top_p would put ~20% of draws outside it. Each output
  row's token is recovered from its text and its score (the model's log-prob of the token:
  max_length=1, length penalty 1)."""
  import jax
  import orbax.checkpoint as ocp
  from scipy import special, stats
  from t5x_lite import models
  from t5x_lite.data import vocab as vocab_lib
  monkeypatch.chdir(ROOT)
  cfg = config_from_flags(CONFIG)
  text, draws = 'speaker: Macbeth. Is this a dagger', 4000
  vocab = vocab_lib.from_config(cfg.data)
  enc = np.zeros((1, cfg.data.inputs_length), np.int32)
  ids = vocab.encode(text) + [vocab.eos_id]
  enc[0, :len(ids)] = ids
  params = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', '6', 'state'))['params']
  start = np.zeros((1, 1), np.int32)
  logits = np.asarray(jax.jit(models.build(cfg.model).apply)({'params': params}, {
      'encoder_input_tokens': enc, 'decoder_input_tokens': start,
      'decoder_target_tokens': np.ones_like(start)}), np.float64)[0, 0]
  log_p = logits - special.logsumexp(logits)

  def tempered(t):  # softmax(logits / t), most likely first
    p = special.softmax(logits / t)
    order = np.argsort(-p, kind='stable')
    return order, p[order]
  lo, hi = 1e-4, 1e4  # the top-4 mass falls as t grows: bisect for 0.8
  for _ in range(200):
    mid = np.sqrt(lo * hi)
    lo, hi = (mid, hi) if tempered(mid)[1][:4].sum() > 0.8 else (lo, mid)
  temperature = float(lo)
  order, p = tempered(temperature)
  cum = np.cumsum(p)
  top_p = float(cum[2] + p[3] / 2)
  nucleus, expected = order[:4], p[:4] / cum[3]
  assert 1 - cum[3] > 0.19 and draws * expected.min() >= 50, (p[:6], expected)

  source = tmp_path / 'same.txt'
  source.write_text((text + '\n') * draws)
  out = tmp_path / 'top_p.jsonl'
  run('infer', f'--workdir={workdir}', f'--input={source}', f'--output={out}', '--max_length=1',
      f'--temperature={temperature!r}', f'--top_p={top_p!r}', '--batch_size=1000', '--seed=5')
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == draws
  texts = np.array([vocab.decode([t]) for t in range(len(logits))], dtype=object)
  token_of = {}
  for key in {(r['prediction'], r['score']) for r in rows}:
    candidates = np.nonzero(texts == key[0])[0]
    best = candidates[np.argmin(np.abs(log_p[candidates] - key[1]))]
    assert abs(log_p[best] - key[1]) < 1e-4, key
    token_of[key] = best
  tokens = np.array([token_of[(r['prediction'], r['score'])] for r in rows])
  outside = ~np.isin(tokens, nucleus)
  assert not outside.any(), (f'{outside.sum()} of {draws} draws outside the nucleus',
                             np.unique(tokens[outside]), nucleus)
  counts = np.array([(tokens == t).sum() for t in nucleus])
  p_value = stats.chisquare(counts, draws * expected).pvalue
  print(f'T {temperature:.4g}, top_p {top_p:.4f}: expected {np.round(draws * expected)}, '
        f'drew {counts}, p-value {p_value:.3f}')
  assert p_value > 1e-3, (counts, draws * expected)


_RANGE = 'need finite temperature >= 0, top_k >= 0 and 0 < top_p <= 1'
_GREEDY = 'sampling needs --temperature > 0'


@pytest.mark.parametrize('flags,message', [
    (['--temperature=-1'], _RANGE), (['--top_k=-1'], _RANGE), (['--top_p=0'], _RANGE),
    # nan ran as greedy decoding of nothing, inf sampled uniformly over every id.
    (['--temperature=nan'], _RANGE), (['--temperature=inf'], _RANGE),
    # Without --temperature, top-k / top-p were silently ignored (greedy decoding).
    (['--top_k=5'], '--top_k=5 / --top_p=1.0 with --temperature=0: ' + _GREEDY),
    (['--top_p=0.9'], '--top_k=0 / --top_p=0.9 with --temperature=0: ' + _GREEDY),
    # JAX's raw top_k error after the model had loaded.
    (['--temperature=1', '--top_k=1153'], '--top_k=1153 is larger than the vocabulary size '
                                          '(1152)')])
def test_bad_sampling_flag_is_a_one_line_error(workdir, flags, message):
  proc = run('infer', f'--workdir={workdir}', *flags, check=False, stdin='x\n', timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0] and \
      flags[-1].split('=')[0] in lines[0], proc.stderr


def test_a_tsv_input_to_infer_is_an_error(tmp_path, monkeypatch):
  """Its header and target column were decoded as inputs, silently."""
  with pytest.raises(ValueError, match=r'--input=.*a.tsv.gz: a TSV file; infer reads text or '
                                       r'JSONL lines. Decode a TSV task with eval'):
    in_process('infer', str(tmp_path), monkeypatch, input_path=str(tmp_path / 'a.tsv.gz'))


def test_a_utf16_input_to_infer_is_an_error(workdir, tmp_path, monkeypatch):
  """Read as UTF-8 it is valid, a NUL between every two characters: <unk>s decoded."""
  (tmp_path / 'in.txt').write_bytes('to be or not\n'.encode('utf-16'))
  with pytest.raises(ValueError, match=r'--input=.*in.txt: UTF-16LE text; infer reads UTF-8 '
                                       r'\(convert it, e\.g\. `iconv -f UTF-16 -t UTF-8`\)'):
    in_process('infer', workdir, monkeypatch, input_path=str(tmp_path / 'in.txt'))


@pytest.mark.parametrize('module', ['eval', 'infer'])
def test_no_checkpoint_is_a_one_line_error(module, tmp_path):
  proc = run(module, f'--workdir={tmp_path / "empty"}', check=False, stdin='', timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'has no checkpoint' in lines[0]
  assert proc.stdout == ''


def test_decoder_only_predict_batches_prompts_of_any_length_in_input_order(monkeypatch):
  """In process, random params: 12 prompts of 12 different lengths share batches of 4 (each
  batch as wide as its longest prompt rounded up to a power of two): every line gets the
  greedy continuation it gets decoded alone, in input order, from 3 decode calls of at most
  3 widths (it was one call, and one compilation, per length)."""
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
  prompts = [[0] + rng.randint(3, 64, n).tolist() + [1] for n in rng.permutation(12)]
  widths, decode = [], decoding.decode

  def counted(model, params, batch, *args, **kwargs):
    widths.append(batch['decoder_input_tokens'].shape)
    return decode(model, params, batch, *args, **kwargs)
  monkeypatch.setattr(decoding, 'decode', counted)
  done = []
  got = evaluation.predict(config, model, params, prompts, batch_size=4, max_length=3,
                           on_batch=lambda idx, rows, scores: done.append(list(idx)))
  assert done == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
  assert len(widths) == 3 and {rows for rows, _ in widths} == {4}
  for b, (_, width) in enumerate(widths):  # the batch's longest prompt, to a power of 2 or 13
    longest = max(map(len, prompts[4 * b:4 * b + 4]))
    assert width == min(13, next(2 ** i for i in range(5) if 2 ** i >= longest))
  monkeypatch.setattr(decoding, 'decode', decode)
  for prompt, out in zip(prompts, got):
    want = decoding.decoder_only_generate(model, params, np.array([prompt], np.int32), 3,
                                          prefix_lm=True)[0]
    np.testing.assert_array_equal(out, np.asarray(want))


def _tiny_gpt(max_positions):
  from tiny_run import tiny_config
  return tiny_config('gpt', layers=1, max_position_embeddings=max_positions,
                     data=dict(targets_length=16),
                     train=dict(batch_size=8, steps=1, eval_every=0, log_every=1))


def test_absolute_positions_bound_decoding_and_infer_cuts_prompts_to_fit(
    tmp_path, monkeypatch, capsys):
  """A learned position table (GPT-2) holds the prompt and every new token but the last (it
  is never fed back) or decoding refuses: past it jnp.take reads NaN. At the edge, greedy
  tokens are the full forward pass's argmaxes and beam scores its log-likelihoods. infer
  (causal LM: prompt = BOS + ids) cuts prompts to the room left, counted as truncated."""
  import jax
  from t5x_lite import decoding, infer, models, train_loop
  config = _tiny_gpt(24)
  model = models.build(config.model)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), {
      'decoder_input_tokens': np.ones((1, 4), np.int32)})['params']
  prompt = np.random.RandomState(0).randint(2, 64, (2, 16)).astype(np.int32)

  def full_logits(tokens):  # the prompt and all new tokens but the last: 24 positions
    return np.asarray(model.apply({'params': params}, {
        'decoder_input_tokens': np.concatenate([prompt, tokens[:, :-1]], 1)}))[:, 15:]
  greedy = np.asarray(decoding.decoder_only_generate(model, params, prompt, 9))
  np.testing.assert_array_equal(greedy, np.argmax(full_logits(greedy), -1))
  tokens, scores = decoding.decode(model, params, {'decoder_input_tokens': prompt}, 9,
                                   beam_size=3, alpha=0.0)
  assert (tokens != 1).all()  # no EOS: the score sums all 9 log-probs
  log_p = jax.nn.log_softmax(full_logits(tokens))
  np.testing.assert_allclose(scores, np.take_along_axis(log_p, tokens[..., None], -1).sum(
      (1, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match='a prompt of 16 tokens continued by max_length=10 '
                                       'needs 25 positions.*max_position_embeddings=24'):
    decoding.decoder_only_generate(model, params, prompt, 10)

  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / 'gpt')
  train_loop.train(config, workdir)
  lines = tmp_path / 'in.txt'
  lines.write_text('the king ' * 30 + '\nthe king\n')
  out = tmp_path / 'out.jsonl'
  report = infer.run_infer(config, workdir, str(lines), str(out), max_length=8)
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 2 and all(np.isfinite(r['score']) for r in rows)
  assert [n for n, _ in report.truncated] == [1]  # only the long line: BOS + 16 ids + 7 = 24
  assert ('truncated 1 of 2 inputs to 17 tokens, BOS included (what model.max_position_embeddings'
          '=24 leaves for a prompt continued by max_length=8, less than data.inputs_length) '
          '(line 1: 61 tokens)' in capsys.readouterr().err)   # BOS + 'the king ' * 30
  infer.run_infer(config, workdir, str(lines), str(out), max_length=23)  # BOS + 1 id + 22
  assert len(out.read_text().splitlines()) == 2
  with pytest.raises(ValueError, match='--max_length=24 leaves no room for a prompt'):
    infer.run_infer(config, workdir, str(lines), str(out), max_length=24)


@pytest.fixture(scope='module')
def gpt_prefix_lm(tmp_path_factory):
  """GPT-2 (learned positions) trained 1 step as a prefix LM on the speaker task, its rows
  filling the 56-entry position table: inputs_length 48 + targets_length 8."""
  from tiny_run import tiny_config
  from t5x_lite import train_loop
  config = tiny_config('gpt', layers=1, max_position_embeddings=56, data=dict(
      objective='text_to_text', inputs_length=48, targets_length=8,
      train_source='jsonl:data/tasks/speaker/train.jsonl',
      validation_source='jsonl:data/tasks/speaker/validation.jsonl'),
      train=dict(batch_size=8, steps=1, eval_every=0, log_every=1, eval_steps=1))
  workdir = str(tmp_path_factory.mktemp('gpt_prefix_lm'))
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    train_loop.train(config, workdir)
  finally:
    os.chdir(cwd)
  return config, workdir


def test_eval_decodes_a_prefix_lm_whose_rows_fill_the_position_table(gpt_prefix_lm,
                                                                     monkeypatch):
  """Prompts of BOS + 48 tokens (long inputs, cut) continued by 8 tokens feed exactly 56
  positions; a config one position longer is refused before anything runs."""
  from t5x_lite import eval as eval_cmd
  config, workdir = gpt_prefix_lm
  monkeypatch.chdir(ROOT)
  result = eval_cmd.run_eval(config, workdir, eval_steps=1)
  assert result['decoded_examples'] == 8 and result['truncated_inputs'] > 0
  assert os.path.exists(os.path.join(workdir, 'eval_validation_1.json'))
  longer = config.copy_and_resolve_references()
  longer.data.targets_length = 9
  with pytest.raises(ValueError, match=r'inputs_length \+ targets_length=48 \+ 9 gives the '
                                       r'decoder rows of 57 tokens, more than '
                                       r'config.model.max_position_embeddings=56'):
    eval_cmd.run_eval(longer, workdir, eval_steps=1)


def test_infer_cuts_prefix_lm_prompts_to_fill_the_position_table(gpt_prefix_lm, tmp_path,
                                                                 monkeypatch, capsys):
  """--max_length=20 on a 56-entry table: prompts of BOS + 35 ids + EOS = 37 tokens, + 19 fed
  back = 56 positions exactly; every line predicted. --max_length=54 leaves BOS + 1 id + EOS;
  55 leaves no room: a one-line error, before any input is read or the model loaded."""
  from t5x_lite import infer
  config, workdir = gpt_prefix_lm
  monkeypatch.chdir(ROOT)
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    texts = [json.loads(next(f))['inputs'] for _ in range(6)]
  source, out = tmp_path / 'in.txt', tmp_path / 'out.jsonl'
  source.write_text('\n'.join(texts) + '\n')
  report = infer.run_infer(config, workdir, str(source), str(out), max_length=20, batch_size=4)
  assert report.predicted == 6 and len(out.read_text().splitlines()) == 6
  assert report.truncated  # some prompts at the edge
  assert (f'truncated {len(report.truncated)} of 6 inputs to 36 tokens, EOS included (what '
          'model.max_position_embeddings=56 leaves for a prompt continued by max_length=20, '
          'less than data.inputs_length)') in capsys.readouterr().err
  report = infer.run_infer(config, workdir, str(source), str(out), max_length=54, batch_size=4)
  assert report.predicted == 6
  monkeypatch.setattr(infer, 'read_examples', lambda *a: pytest.fail('input read'))
  with pytest.raises(ValueError, match=r'^--max_length=55 leaves no room for a prompt: the '
                                       r'model has model.max_position_embeddings=56\.$'):
    infer.run_infer(config, workdir, str(source), str(out), max_length=55)


def test_infer_reads_a_first_line_after_a_byte_order_mark():
  """With the mark, the first JSONL line read as plain text: the whole JSON became the prompt."""
  import io
  from t5x_lite import infer
  report = infer.Report()
  got = infer.read_examples(io.StringIO('\ufeff{"inputs": "q1", "id": 7}\n\nplain q2\n'), report)
  assert got == [(1, 'q1', {'inputs': 'q1', 'id': '7'}), (3, 'plain q2', {})]  # 7 as written
  assert report.lines == 3 and report.empty == [2] and report.bad == []


def test_infer_reads_carriage_returns_as_the_data_pipeline_does(tmp_path):
  """tf.data's line reader (eval's and training's text_to_text input) drops every CR, a
  stray one inside a line too; infer kept it (SentencePiece read it as a space: other ids,
  another prediction for the same input)."""
  import io
  import tensorflow as tf
  from t5x_lite import infer
  data = b'mid\rcr line\r\n\rlead\nCRLF line\r\ntwo\r\r\nend\r'
  (tmp_path / 'in.txt').write_bytes(data)
  pipeline_lines = [x.decode() for x in
                    tf.data.TextLineDataset(str(tmp_path / 'in.txt')).as_numpy_iterator()]
  got = infer.read_examples(io.BytesIO(data), infer.Report())
  assert [text for _, text, _ in got] == pipeline_lines == [
      'midcr line', 'lead', 'CRLF line', 'two', 'end']


def test_infer_skips_invalid_text_and_reads_gzip(workdir, tmp_path, monkeypatch, capsys):
  """Invalid UTF-8 bytes and a JSON lone surrogate (SentencePiece cannot take it) are
  skipped and reported by line, from stdin and from a .gz file; the other lines predicted."""
  import gzip
  import io
  data = (b'speaker: Macbeth. Is this a dagger\n{"inputs": "lone \\ud800 surrogate"}\n'
          b'bad \xff byte\n{"inputs": "speaker: Lear. Blow, winds", "id": 4}\n')
  (tmp_path / 'in.gz').write_bytes(gzip.compress(data))
  monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(io.BytesIO(data), encoding='utf-8'))
  for source in ('-', str(tmp_path / 'in.gz')):
    out = tmp_path / 'out.jsonl'
    report = in_process('infer', workdir, monkeypatch, input_path=source, output_path=str(out))
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r['inputs'] for r in rows] == ['speaker: Macbeth. Is this a dagger',
                                           'speaker: Lear. Blow, winds'], source
    assert rows[1]['id'] == 4 and report.invalid == [2, 3]
    assert ('read 4 lines; wrote 2 predictions; skipped 0 empty lines; skipped 2 lines of '
            'invalid UTF-8 or lone-surrogate text (lines 2, 3)') in capsys.readouterr().err


def test_infer_copies_json_numbers_as_written_and_skips_invalid_json(workdir, tmp_path,
                                                                     monkeypatch, capsys):
  """A JSON line is read as the data pipeline reads it (records.jsonl_parser): numbers kept
  as written (1.50 was written back as 1.5) and NaN / Infinity refused (they were copied out
  as non-JSON `NaN`, `-Infinity`, and 1e400 as `Infinity`); a line that starts with '{' but
  is not JSON is skipped and reported (it was decoded as plain text, the raw JSON the prompt).
  The literal tab of line 6 is invalid JSON to the pipeline's parser too; a number as the
  inputs is its text, as the pipeline reads it (it was skipped)."""
  from t5x_lite.data import records, sources
  json_lines = [
      '{"inputs": "speaker: Macbeth. Is this a dagger", "v": 1e400}',
      '{"inputs": "nan", "v": NaN}', '{"inputs": "neg", "v": -Infinity}',
      '{"id": 7, "inputs": "speaker: Lear. Blow, winds", "v": 1.50, '
      '"big": 123456789012345678901234567890, "more": [1.0, -0, {"e": 2E+3}]}',
      '{"inputs": "hello wor', '{"inputs": "a\tb"}', '{"inputs": "x",}', '{not JSON}',
      '{"inputs": 1.50}']
  source, out = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  source.write_text('\n'.join(json_lines + ['speaker: Puck. Lord, what fools']) + '\n')
  report = in_process('infer', workdir, monkeypatch, input_path=str(source),
                      output_path=str(out))

  def not_json(constant):
    raise AssertionError(f'{constant} in the output')
  rows = [json.loads(l, parse_constant=not_json) for l in out.read_text().splitlines()]
  copied = ['{"inputs": "speaker: Macbeth. Is this a dagger", "v": 1e400',
            '{"id": 7, "inputs": "speaker: Lear. Blow, winds", "v": 1.50, "big": '
            '123456789012345678901234567890, "more": [1.0, -0, {"e": 2E+3}]',
            '{"inputs": 1.50', '{"inputs": "speaker: Puck. Lord, what fools"']
  assert out.read_text().splitlines() == [
      f'{fields}, "prediction": {json.dumps(r["prediction"], ensure_ascii=False)}, '
      f'"score": {r["score"]!r}, "line": {n}}}' for fields, r, n in zip(copied, rows, [1, 4, 9, 10])]
  parse = records.jsonl_parser(('inputs',), sources.SkipCounter(), 'skip')
  assert report.invalid_json == [2, 3, 5, 6, 7, 8] == [
      n for n, l in enumerate(json_lines, 1) if parse('in', n, l.encode(), None) is None]
  assert ('[t5x_lite] infer: read 10 lines; wrote 4 predictions; skipped 0 empty lines; skipped '
          '6 lines of invalid JSON (lines 2, 3, 5, 6, 7, 8); truncated 0 of 4 inputs to '
          'data.inputs_length=64 tokens, EOS included.') in capsys.readouterr().err


def test_infer_reads_a_pipe_such_as_a_process_substitution(workdir, tmp_path, monkeypatch):
  """`--input=<(zcat in.gz)` is /dev/fd/63, a pipe and not a regular file: it was refused as
  'no such file' (a FIFO and /dev/stdin too)."""
  read_end, write_end = os.pipe()
  os.write(write_end, b'speaker: Macbeth. Is this a dagger\n\nspeaker: Lear. Blow, winds\n')
  os.close(write_end)
  out = tmp_path / 'out.jsonl'
  try:
    report = in_process('infer', workdir, monkeypatch, input_path=f'/dev/fd/{read_end}',
                        output_path=str(out))
  finally:
    os.close(read_end)
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [(r['inputs'], r['line']) for r in rows] == [
      ('speaker: Macbeth. Is this a dagger', 1), ('speaker: Lear. Blow, winds', 3)]
  assert (report.lines, report.predicted, report.empty) == (3, 2, [2])


@pytest.mark.parametrize('name,module,what', [('in.txt.bz2', 'bz2', 'bzip2'),
                                               ('in.txt.xz', 'lzma', 'xz'),
                                               ('in.txt', 'gzip', 'gzip')])
def test_infer_refuses_compressed_input_it_would_read_as_text(workdir, tmp_path, monkeypatch,
                                                              name, module, what):
  """A .bz2 / .xz file, or gzip not named .gz, was decoded as text: lines of invalid UTF-8,
  0 predictions, exit 0. The data pipeline refuses them by their first bytes; so does infer."""
  import importlib
  path = tmp_path / name
  path.write_bytes(importlib.import_module(module).compress(b'speaker: Lear. Blow, winds\n'))
  with pytest.raises(ValueError) as e:
    in_process('infer', workdir, monkeypatch, input_path=str(path),
               output_path=str(tmp_path / 'out.jsonl'))
  assert str(e.value) == (f'--input={path}: {what} data; infer reads text or JSONL lines (gzip '
                          'files named .gz are decompressed).')


def test_infer_refuses_a_hard_link_to_the_input_or_a_read_only_output_first(tmp_path,
                                                                            monkeypatch):
  """Before the checkpoint is looked for (there is none here) or stdin read: a hard link to
  the input passed the path comparison and the input was overwritten; a read-only output
  failed only after the whole input was read and the params loaded."""
  source, link, read_only = tmp_path / 'in.txt', tmp_path / 'link.jsonl', tmp_path / 'ro.jsonl'
  source.write_text('speaker: Macbeth. Is this a dagger\n')
  os.link(source, link)
  with pytest.raises(ValueError, match=f'^--output={re.escape(str(link))} is the --input file: '):
    in_process('infer', str(tmp_path), monkeypatch, input_path=str(source),
               output_path=str(link))
  assert source.read_text() == 'speaker: Macbeth. Is this a dagger\n'
  read_only.write_text('')
  read_only.chmod(0o444)
  if os.access(read_only, os.W_OK):  # root writes anyway: answer as for another user
    access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: access(path, mode) and not (
        os.fspath(path) == str(read_only) and mode & os.W_OK))
  with pytest.raises(ValueError) as error:
    in_process('infer', str(tmp_path), monkeypatch, output_path=str(read_only))
  assert str(error.value) == f'--output={read_only}: the file is not writable.'


def test_infer_names_output_write_errors_and_ends_quietly_when_stdout_closes(
    workdir, tmp_path, monkeypatch, capsys):
  """A failed write was `error: [Errno 28] No space left on device`, naming no flag; a
  reader of stdout that goes away (`infer | head -1`) was an error line too."""
  source = tmp_path / 'in.txt'
  source.write_text('speaker: Macbeth. Is this a dagger\n')
  with pytest.raises(ValueError) as error:
    in_process('infer', workdir, monkeypatch, input_path=str(source), output_path='/dev/full')
  assert str(error.value) == '--output=/dev/full: cannot write it (No space left on device).'
  capsys.readouterr()
  read_end, write_end = os.pipe()
  os.close(read_end)
  stdout = os.fdopen(write_end, 'w')
  with monkeypatch.context() as patch:
    patch.setattr(sys, 'stdout', stdout)
    in_process('infer', workdir, monkeypatch, input_path=str(source))
  try:
    stdout.close()  # its buffered line has nowhere to go
  except BrokenPipeError:
    pass
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith('[t5x_lite] infer: params of step 6 from '), err


def test_eval_with_a_model_config_other_than_the_workdirs_is_refused(workdir):
  """Same shapes, another network (the relative-position distance): the params would load
  and eval would report figures of a model that was never trained."""
  before = snapshot(workdir)
  proc = run('eval', f'--workdir={workdir}', '--config.model.relative_attention_max_distance=64',
             check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --workdir=') and (
      'config.model.relative_attention_max_distance=64 differs from') in last, last
  assert snapshot(workdir) == before


def test_printed_predictions_are_scored_by_the_task_metric(capsys):
  """Text-to-text examples are shown with exact match (their metric), span corruption with
  span accuracy."""
  from t5x_lite import evaluation
  decoded = dict(inputs=['reverse: a b', 'reverse: c d'], targets=['b a', 'd c'],
                 predictions=['b a', 'c d'], span_tokens=[(2, 2), (0, 2)])
  evaluation.print_predictions(decoded, 2, text_to_text=True)
  out = capsys.readouterr().out
  assert out.count('exact match: yes') == 1 and out.count('exact match: no') == 1
  assert 'span accuracy' not in out
  evaluation.print_predictions(decoded, 2)
  out = capsys.readouterr().out
  assert 'span accuracy: 2/2' in out and 'span accuracy: 0/2' in out


def test_an_endless_unpacked_validation_split_is_evaluated_and_decoded_once(tmp_path):
  """data.eval_repeat with data.pack=False: training's evals and its closing predictions run
  (the unpacked rows had no static length, and the predictions listed an endless split), and
  eval reads --eval_steps batches of the repeated split for the loss but decodes each
  example once, in file order (3 batches of 8 over 11 examples had decoded 24)."""
  with open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) as f:
    records = [next(f) for _ in range(11)]
  (tmp_path / 'val.jsonl').write_text(''.join(records))
  data = [f'--config.data.validation_source=jsonl:{tmp_path}/val.jsonl',
          '--config.data.pack=False', '--config.data.eval_repeat=True']
  workdir = str(tmp_path / 'run')
  proc = run('train', f'--workdir={workdir}', *data, '--config.train.steps=2',
             '--config.train.eval_every=2', '--config.train.eval_steps=2',
             '--config.train.log_every=1', '--show_predictions=1', timeout=400)
  assert 'eval_loss' in proc.stdout and 'Predictions on validation examples' in proc.stdout
  result = json.loads(run('eval', f'--workdir={workdir}', *data,
                          '--eval_steps=3').stdout.strip().splitlines()[-1])
  assert result['eval_steps'] == 3 and np.isfinite(result['eval_loss'])
  assert result['decoded_examples'] == 11
  with open(os.path.join(workdir, 'predictions_validation_2.jsonl')) as f:
    inputs = [json.loads(line)['inputs'] for line in f]
  assert inputs == [json.loads(r)['inputs'] for r in records]


def _uncached_greedy(model, params, batch, rows, length, num_ids, prefix_lm):
  """Greedy continuations of `rows` of an unpacked batch, each token the argmax of a full
  forward pass over everything so far (no KV cache, no decoding.py), cut after EOS: the
  reference eval's predictions must equal. Ids past `num_ids` (the vocabulary's padding) are
  never chosen. Each row is a fixed-length window, so later positions (zeros) cannot reach
  earlier ones through the causal mask, and one compiled forward pass serves every step."""
  import jax
  apply = jax.jit(lambda b: model.apply({'params': params}, b))
  if prefix_lm:  # decoder-only: prompt = the causal-attention span of each row
    prompt = batch['decoder_causal_attention'][rows].sum(axis=1)
    seq = np.zeros((len(rows), int(prompt.max()) + length), np.int32)
    for i, r in enumerate(rows):
      seq[i, :prompt[i]] = batch['decoder_input_tokens'][r, :prompt[i]]
    inputs = {'decoder_causal_attention':
              (np.arange(seq.shape[1]) < prompt[:, None]).astype(np.int32)}
  else:  # encoder-decoder: the decoder starts from 0
    prompt = np.ones(len(rows), np.int64)
    seq = np.zeros((len(rows), 1 + length), np.int32)
    inputs = {'encoder_input_tokens': batch['encoder_input_tokens'][rows]}
  at = np.arange(len(rows))
  for k in range(length):
    logits = np.asarray(apply(dict(inputs, decoder_input_tokens=seq)))
    seq[at, prompt + k] = logits[at, prompt + k - 1, :num_ids].argmax(-1)
  out = []
  for i in at:
    ids = list(seq[i, prompt[i]:])
    out.append(ids[:ids.index(1) + 1] if 1 in ids else ids)
  return out


@pytest.mark.parametrize('objective', ['span_corruption', 'prefix_lm'])
def test_eval_decodes_pretraining_objectives_as_an_uncached_greedy_reference(
    objective, request, monkeypatch):
  """Span corruption (encoder-decoder) and prefix LM (decoder-only) evals decode too (they
  wrote no predictions file): each prediction is the greedy continuation recomputed without
  the KV cache, targets are the batch's target ids as text, and span_accuracy /
  sequence_accuracy follow from those ids."""
  from t5x_lite import eval as eval_cmd, metrics, models
  from t5x_lite.data import pipeline
  monkeypatch.chdir(ROOT)
  corpus = dict(train_source='text:data/corpus/train.txt',
                validation_source='text:data/corpus/validation.txt')
  if objective == 'span_corruption':  # the speaker model, fed the corpus span-corrupted
    workdir = request.getfixturevalue('workdir')
    config = config_from_flags(CONFIG)
    config.data.update(dict(corpus, objective=objective, targets_length=14))  # 64 -> 14
  else:
    config, workdir = request.getfixturevalue('gpt_prefix_lm')
    config = config.copy_and_resolve_references()
    config.data.update(dict(corpus, objective=objective))
  result = eval_cmd.run_eval(config, workdir, eval_steps=1)
  step = result['step']
  with open(os.path.join(workdir, f'predictions_validation_{step}.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  # The reference reads the batch eval decodes: the split's first, unpacked, in file order.
  cfg = config.copy_and_resolve_references()
  cfg.data.update(dict(pack=False, num_virtual_shards=1))
  it = pipeline.get_dataset(cfg, 'validation')
  batch, vocab = next(it), it.vocab
  real = np.nonzero(batch['decoder_loss_weights'].sum(axis=1) > 0)[0]
  assert result['decoded_examples'] == len(rows) == len(real) > 0
  import orbax.checkpoint as ocp
  params = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))['params']
  want = _uncached_greedy(models.build(cfg.model), params, batch, real,
                          cfg.data.targets_length, vocab.vocab_size,
                          prefix_lm=objective == 'prefix_lm')
  targets = [batch['decoder_target_tokens'][r][batch['decoder_loss_weights'][r] > 0]
             for r in real]
  assert [r['predictions'] for r in rows] == [vocab.decode(w) for w in want]
  assert [r['targets'] for r in rows] == [vocab.decode(t) for t in targets]
  counts = [metrics.span_tokens(t, w, vocab.is_sentinel) for t, w in zip(targets, want)]
  correct, total = sum(c for c, _ in counts), sum(t for _, t in counts)
  assert result['span_tokens'] == [correct, total] and total > 0
  assert result['span_accuracy'] == pytest.approx(100 * correct / total)
  assert result['sequence_accuracy'] == pytest.approx(100 * np.mean(
      [r['predictions'] == r['targets'] for r in rows]))
  assert 'bleu' not in result  # text metrics score text-to-text tasks only


def test_eval_on_a_read_only_workdir_fails_before_evaluating(workdir, monkeypatch):
  """eval writes its figures and predictions into the workdir: one it cannot write to (a
  read-only mount; root ignores chmod, so the OS's answer is simulated) is refused after
  the checkpoint is found and before any example is evaluated (it evaluated, then lost the
  figures)."""
  import tempfile
  from t5x_lite import eval as eval_cmd
  from t5x_lite import evaluation

  def read_only(*args, **kwargs):
    raise OSError(30, 'Read-only file system')
  monkeypatch.setattr(tempfile, 'NamedTemporaryFile', read_only)
  monkeypatch.setattr(evaluation, 'evaluate', lambda *a, **k: pytest.fail('evaluated'))
  with pytest.raises(ValueError, match=re.escape(
      f'--workdir={workdir} is not writable (Read-only file system): it holds '
      f'eval_validation_<step>.json')):
    eval_cmd.run_eval(config_from_flags(CONFIG), workdir)


def test_eval_beside_a_training_job_reads_the_step_left_after_a_rotation(workdir, tmp_path,
                                                                         monkeypatch):
  """A job training in the workdir with a small checkpoint.keep can delete the step eval
  chose before eval reads it: eval then reads the newest step left (it said the deleted
  step's directory held 'no t5x_lite checkpoint')."""
  import shutil
  from t5x_lite import checkpoints, evaluation
  copy = str(tmp_path / 'w')
  shutil.copytree(workdir, copy)
  steps = sorted(int(s) for s in os.listdir(os.path.join(copy, 'checkpoints')) if s.isdigit())
  assert len(steps) == 2
  real, calls = checkpoints.load_params, []

  def rotated_while_read(path, abstract):
    calls.append(path)
    if len(calls) == 1:  # the rotation lands between choosing the step and reading it
      shutil.rmtree(os.path.dirname(path))
    return real(path, abstract)
  monkeypatch.setattr(checkpoints, 'load_params', rotated_while_read)
  monkeypatch.chdir(ROOT)
  _, params, step, _ = evaluation.load(config_from_flags(CONFIG), copy)
  assert step == steps[0] and calls[0].endswith(f'/{steps[1]}/state'), (step, calls)
  assert params is not None


def test_the_end_of_run_sample_reads_a_bounded_prefix_of_the_split(monkeypatch):
  """The predictions printed after training are drawn from the validation split's first
  SAMPLE_POOL_ROWS real rows: it read and held the whole split (155 s and 2.5 GB at the end
  of a run on a 100 MB one). A smaller split is sampled whole, as before."""
  from t5x_lite import evaluation
  monkeypatch.setattr(evaluation, 'SAMPLE_POOL_ROWS', 20)
  read = []

  def split(num_batches):  # batches of 8 rows, the last 2 of each padding; row ids in tokens
    for b in range(num_batches):
      read.append(b)
      ids = np.arange(8 * b, 8 * b + 8)
      yield {'encoder_input_tokens': ids[:, None],
             'decoder_loss_weights': (np.arange(8) < 6).astype(np.int32)[:, None]}
  sample = evaluation._sampled_batches(split(10_000), steps=1, seed=0)
  assert read == [0, 1, 2, 3]  # 4 x 6 real rows >= 20: no further batch read
  rows = sample[0]['encoder_input_tokens'][:, 0]
  assert len(rows) == 8 and list(rows) == sorted(rows) and len(set(rows)) == 8
  assert all(r < 32 and r % 8 < 6 for r in rows)  # real rows of the batches read
  read.clear()
  whole = evaluation._sampled_batches(split(2), steps=1, seed=0)  # 12 real rows, all read
  real = np.array([0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13])
  want = np.sort(np.random.default_rng(0).choice(np.arange(12), 8, replace=False))
  assert read == [0, 1] and list(whole[0]['encoder_input_tokens'][:, 0]) == list(real[want])
