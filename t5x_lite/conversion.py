"""Hugging Face model directories <-> t5x_lite (Orbax) params directories.

`hf_to_t5x` reads a `T5ForConditionalGeneration`, `BertForMaskedLM` or `GPT2LMHeadModel`
directory (`hf.load`) and writes an Orbax pytree checkpoint of `{'params': params}` plus
config.json = `{"model": {...}}` (usable as `config.init_from`); `load_t5x` reads such a
directory or a training workdir; `t5x_to_hf` writes what `from_pretrained` loads (`hf.save`).
"""
import json
import os


CONFIG_NAME = 'config.json'


def check_output(path: str):
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ValueError(f'--output={path} already exists and is not an empty directory.')


def hf_to_t5x(hf_dir: str, out_dir: str, scan_layers: bool = False) -> str:
  """HF directory -> Orbax params checkpoint + config.json in `out_dir`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = hf.load(hf_dir, scan_layers=scan_layers)
  out_dir = os.path.abspath(out_dir)
  if os.path.isdir(out_dir):
    os.rmdir(out_dir)  # empty (checked); Orbax creates the directory itself
  ocp.PyTreeCheckpointer().save(out_dir, {'params': params})
  with open(os.path.join(out_dir, CONFIG_NAME), 'w') as f:
    json.dump({'model': json.loads(model_cfg.to_json())}, f, indent=2, sort_keys=True)
  return out_dir


def load_t5x(directory: str):
  """(model ConfigDict, params) of a hf_to_t5x output dir or a training workdir."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from t5x_lite import checkpoints, models  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, CONFIG_NAME)
  if not os.path.isfile(path):
    raise ValueError(f'{path} does not exist: --input must be a directory written by '
                     f'--direction=hf_to_t5x or a training workdir.')
  with open(path) as f:
    saved = json.load(f)
  if 'model' not in saved:
    raise ValueError(f'{path} has no "model" section.')
  model_cfg = ml_collections.ConfigDict(saved['model'])
  params, _ = checkpoints.load_params(directory, nn.meta.unbox(models.abstract_params(model_cfg)))
  return model_cfg, params


def t5x_to_hf(directory: str, out_dir: str) -> str:
  """t5x_lite params dir (or training workdir) -> HF directory in `out_dir`."""
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = load_t5x(directory)
  return hf.save(model_cfg, params, out_dir)
