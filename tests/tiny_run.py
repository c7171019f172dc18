"""The tests' one tiny-config builder: a config file's 'tiny' size shrunk to a model that
trains in seconds on a CPU, and the same sizes as --config flags for the command-line runs."""
import os

from configs import bert, gpt, t5_decoder_only, t5_v1_1
from t5x_lite import families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    't5': t5_v1_1,               # encoder_decoder, T5 v1.1 (gated-GELU, relative bias, untied)
    'bert': bert,                # encoder, post-norm LayerNorm, absolute positions, MLM head
    'gpt': gpt,                  # decoder, GPT-2 (LayerNorm, biases, absolute positions, tied)
    't5_decoder': t5_decoder_only,  # decoder, T5-style, prefix LM capable
}
TINY = dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16)  # vocab: shipped + 100


def tiny_config(name='t5', *, layers=2, data=None, train=None, **model):
  """configs/<CONFIGS[name]>.py at size 'tiny' with TINY sizes, `layers` per stack it has
  (0 for the other), absolute positions capped at 64; then the `model` fields, `data` and
  `train` sections updated with the dicts given."""
  cfg = CONFIGS[name].get_config('tiny')
  family = families.get(cfg.model.family)
  cfg.model.update(dict(TINY, num_encoder_layers=layers if family.has_encoder else 0,
                        num_decoder_layers=layers if family.has_decoder else 0))
  if cfg.model.position_embedding == 'absolute':
    cfg.model.max_position_embeddings = 64
  cfg.model.update(model)
  cfg.data.update(data or {})
  cfg.train.update(train or {})
  return cfg


TINY_MODEL = ['--config=configs/default.py'] + [
    f'--config.model.{k}={v}' for k, v in TINY.items()] + [
    '--config.data.inputs_length=64', '--config.data.targets_length=29',
    '--config.train.batch_size=8']


def config_from_flags(flags):
  """The ConfigDict a command builds from `--config=FILE` and `--config.a.b=v` flags (each
  value takes the type of the default it overrides)."""
  import ast
  import importlib
  config = None
  for flag in flags:
    name, value = flag[2:].split('=', 1)
    if name == 'config':
      module = value[:-3].replace('/', '.')
      config = importlib.import_module(module).get_config()
    elif name.startswith('config.'):
      *parents, leaf = name.split('.')[1:]
      node = config
      for p in parents:
        node = node[p]
      old = node[leaf]
      if isinstance(old, bool):
        node[leaf] = value.lower() == 'true'
      elif isinstance(old, (tuple, list)):
        node[leaf] = type(old)(ast.literal_eval(value))
      else:
        node[leaf] = type(old)(value)
  return config


def numpy_loss(logits, targets, weights, z_loss=1e-4):
  """Mean over real target tokens of cross-entropy + z_loss * logZ^2, and token accuracy,
  in float64 numpy (independent of t5x_lite.losses)."""
  import numpy as np
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=-1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
  target_logit = np.take_along_axis(logits, targets[..., None].astype(np.int64), -1)[..., 0]
  per_token = log_z - target_logit + z_loss * log_z ** 2
  w = np.asarray(weights, np.float64)
  correct = (logits.argmax(-1) == targets) * w
  return float((per_token * w).sum() / w.sum()), float(correct.sum() / w.sum())
