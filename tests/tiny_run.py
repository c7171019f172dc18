"""The tiny model that the command-line tests train in subprocesses (seconds per run)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = [
    '--config=configs/default.py',
    '--config.model.d_model=32', '--config.model.d_ff=64', '--config.model.num_heads=2',
    '--config.model.d_kv=16', '--config.data.inputs_length=64', '--config.train.batch_size=8',
]


def config_from_flags(flags):
  """The ConfigDict a command builds from `--config=FILE` and `--config.a.b=v` flags (each
  value takes the type of the default it overrides)."""
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
      node[leaf] = (value.lower() == 'true') if isinstance(old, bool) else type(old)(value)
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
