"""`python -m t5x_lite.convert`: HF dir -> Orbax params dir -> HF dir is lossless."""
import json
import os
import subprocess
import sys

os.environ.setdefault('USE_TF', '0')

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from t5x_lite import conversion as convert, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors(d):
  return safetensors.numpy.load_file(os.path.join(d, 'model.safetensors'))


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
  model = transformers.T5ForConditionalGeneration.from_pretrained(out)
  assert model.config.num_decoder_layers == 3


def test_refuses_non_empty_output(tmp_path, t5_dir):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'keep.txt').write_text('x')
  with pytest.raises(ValueError, match='--output'):
    convert.hf_to_t5x(t5_dir, str(tmp_path / 'out'))


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
