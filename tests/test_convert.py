"""`python -m t5x_lite.convert`: HF dir -> Orbax params dir -> HF dir is lossless, special-token
ids included; a model trained here exports its own vocabulary's ids."""
import json
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault('USE_TF', '0')

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
import transformers

from configs import gpt as gpt_config
from t5x_lite import conversion as convert, decoding, hf, hf_config, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors(d):
  return safetensors.numpy.load_file(os.path.join(d, 'model.safetensors'))


def _hf_config(d):
  with open(os.path.join(d, 'config.json')) as f:
    return json.load(f)


def _assert_same_tensors(a_dir, b_dir):
  a, b = _tensors(a_dir), _tensors(b_dir)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def t5_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
      num_heads=4, feed_forward_proj='gated-gelu', tie_word_embeddings=False))
  path = str(tmp_path_factory.mktemp('t5'))
  model.save_pretrained(path, safe_serialization=True)
  return path


@pytest.mark.parametrize('scan_layers', [False, True])
def test_round_trip(tmp_path, t5_dir, scan_layers):
  ours = convert.hf_to_t5x(t5_dir, str(tmp_path / 'ours'), scan_layers=scan_layers)
  with open(os.path.join(ours, 'config.json')) as f:
    saved = json.load(f)['model']
  assert saved['num_encoder_layers'] == 2 and saved['num_decoder_layers'] == 3
  assert saved['scan_layers'] == scan_layers
  models.build(saved)  # the stored model section is a valid model config
  out = convert.t5x_to_hf(ours, str(tmp_path / 'back'))
  _assert_same_tensors(t5_dir, out)
  ids = lambda d: {k: _hf_config(d).get(k) for k in ('pad_token_id', 'bos_token_id',
                                                     'eos_token_id', 'decoder_start_token_id')}
  assert ids(out) == ids(t5_dir)
  model = transformers.T5ForConditionalGeneration.from_pretrained(out)
  assert model.config.num_decoder_layers == 3


def test_gpt2_round_trip_keeps_its_special_ids(tmp_path):
  """An imported GPT-2 keeps its own ids (bos = eos = 50256, <|endoftext|> of its BPE
  vocabulary) through hf_to_t5x -> t5x_to_hf."""
  torch.manual_seed(0)
  src = str(tmp_path / 'gpt2')
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=50257, n_embd=32, n_layer=1, n_head=4, n_positions=64)).save_pretrained(src)
  out = convert.t5x_to_hf(convert.hf_to_t5x(src, str(tmp_path / 'ours')), str(tmp_path / 'back'))
  _assert_same_tensors(src, out)
  got = _hf_config(out)
  assert (got['bos_token_id'], got['eos_token_id']) == (50256, 50256)
  assert 'pad_token_id' not in got


def test_trained_gpt_exports_its_eos_and_hf_generate_stops_there(tmp_path):
  """A decoder trained here saw this codebase's vocabulary (t5x_lite/data/vocab.py: EOS 1;
  rows start with BOS 0), whatever its vocab_size (configs/gpt.py has GPT-2's 50257): the
  export says so, and HF greedy `generate` (plain input_ids, no attention_mask) on the
  exported directory gives decoding.decoder_only_generate's tokens, stopping at its EOS."""
  assert hf_config.hf_config_dict(gpt_config.get_config('tiny').model)['eos_token_id'] == 1
  cfg = gpt_config.get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))
  rng = np.random.default_rng(0)

  def draw(path, x):  # kernels N(0, 1 / d_model), not 0.02: clear greedy margins (>= 0.1)
    name, noise = jax.tree_util.keystr(path), rng.standard_normal(x.shape)
    if 'scale' in name:
      return (1 + 0.1 * noise).astype(np.float32)
    if 'bias' in name:
      return (0.1 * noise).astype(np.float32)
    return (noise if 'embedding' in name else noise / np.sqrt(32)).astype(np.float32)
  params = jax.tree_util.tree_map_with_path(draw, nn.unbox(models.abstract_params(cfg.model)))
  # EOS's logit + 16 (the final norm's bias along EOS's tied embedding): greedy decoding then
  # ends some rows at EOS after a few tokens.
  eos = params['token_embedder']['embedding'][1]
  params['decoder']['final_norm']['bias'] += 16 * eos / (eos @ eos)
  prompts = np.concatenate([np.zeros((4, 1), np.int32),
                            rng.integers(3, 1152, (4, 3)).astype(np.int32)], axis=1)
  ours = np.asarray(decoding.decoder_only_generate(models.build(cfg.model), params, prompts, 12))
  ends = [list(row).index(1) + 1 if 1 in row else len(row) for row in ours]
  assert min(ends) < 12 and max(ends) == 12, ends  # some rows stop, one runs to max_length

  workdir = str(tmp_path / 'workdir')  # what t5x_to_hf reads of a training workdir
  ocp.PyTreeCheckpointer().save(workdir, {'params': params})
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(cfg.to_json_best_effort())
  out = convert.t5x_to_hf(workdir, str(tmp_path / 'hf'))
  got = _hf_config(out)
  assert (got['bos_token_id'], got['eos_token_id']) == (0, 1)
  model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  for prompt, row, end in zip(prompts, ours, ends):
    theirs = model.generate(torch.tensor(prompt[None], dtype=torch.long), max_new_tokens=12,
                            do_sample=False)[0, len(prompt):]
    assert theirs.tolist() == row[:end].tolist()


def test_refuses_non_empty_output(tmp_path, t5_dir):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'keep.txt').write_text('x')
  with pytest.raises(ValueError, match='--output'):
    convert.hf_to_t5x(t5_dir, str(tmp_path / 'out'))


def test_output_through_a_symbolic_link_is_written_into_its_target(tmp_path, t5_dir):
  """A link to an empty directory (common on clusters) is followed: the conversion lands in
  the target and the link still points there. It failed at the final rename."""
  (tmp_path / 'real').mkdir()
  os.symlink('real', tmp_path / 'link')
  convert.hf_to_t5x(t5_dir, str(tmp_path / 'link'))
  convert.t5x_to_hf(str(tmp_path / 'link'), str(tmp_path / 'back'))
  assert os.path.islink(tmp_path / 'link') and (tmp_path / 'real' / 'config.json').exists()
  _assert_same_tensors(t5_dir, str(tmp_path / 'back'))


@pytest.mark.parametrize('output,message', [
    ('dangling', '--output={d}/dangling is a symbolic link to nowhere, which does not exist.'),
    ('afile/out', '--output={d}/afile/out: {d}/afile is a file, not a directory.'),
])
def test_cli_refuses_an_output_it_cannot_create_before_reading_weights(tmp_path, t5_dir,
                                                                       output, message):
  """One line naming --output, not [Errno 20] / [Errno 17] after the whole conversion."""
  os.symlink('nowhere', tmp_path / 'dangling')
  (tmp_path / 'afile').write_text('')
  r = subprocess.run([sys.executable, '-m', 't5x_lite.convert', '--direction=hf_to_t5x',
                      f'--input={t5_dir}', f'--output={tmp_path / output}'], cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and r.stderr.strip() == f'error: {message.format(d=tmp_path)}', \
      r.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ['afile', 'dangling']  # no staging left behind


def test_cli(tmp_path, t5_dir):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  run = lambda *args: subprocess.run([sys.executable, '-m', 't5x_lite.convert', *args],
                                     cwd=ROOT, env=env, capture_output=True, text=True,
                                     timeout=120)
  r = run('--direction=hf_to_t5x', f'--input={t5_dir}', f'--output={tmp_path / "ours"}')
  assert r.returncode == 0, r.stderr[-2000:]
  r = run('--direction=t5x_to_hf', f'--input={tmp_path / "ours"}',
          f'--output={tmp_path / "back"}')
  assert r.returncode == 0, r.stderr[-2000:]
  _assert_same_tensors(t5_dir, str(tmp_path / 'back'))


@pytest.mark.parametrize('stop,status,said', [
    (signal.SIGTERM, 143, 'terminated (SIGTERM).'), (signal.SIGINT, 130, 'interrupted (Ctrl-C).')])
def test_a_conversion_stopped_while_it_writes_leaves_nothing_behind(tmp_path, stop, status, said):
  """SIGTERM (timeout, kill, a job scheduler) ended the process at once, leaving the staging
  directory and Orbax's temporary sibling of it (tens of MB) hidden beside the output; now
  it unwinds as Ctrl-C does: one line, 128 + the signal, nothing left in the output's parent.
  The signal is sent once Orbax's temporary directory exists (the weights being written)."""
  torch.manual_seed(0)
  big = str(tmp_path / 'gpt2')
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=32000, n_embd=256, n_layer=2, n_head=4, n_positions=64)).save_pretrained(big)
  parent = tmp_path / 'out'
  parent.mkdir()
  proc = subprocess.Popen(
      [sys.executable, '-m', 't5x_lite.convert', '--direction=hf_to_t5x', f'--input={big}',
       f'--output={parent / "o"}'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'))
  deadline = time.time() + 120
  while not any('.orbax-checkpoint-tmp' in n for n in os.listdir(parent)):
    assert proc.poll() is None, f'finished before it could be stopped: {proc.communicate()}'
    assert time.time() < deadline
    time.sleep(0.001)
  proc.send_signal(stop)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == status, err[-2000:]
  assert err.strip().splitlines() == [said] and 'wrote' not in out
  assert os.listdir(parent) == []
