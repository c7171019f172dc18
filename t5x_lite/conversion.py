"""Hugging Face model directories <-> t5x_lite (Orbax) params directories.

`hf_to_t5x` reads a `T5ForConditionalGeneration`, `BertForMaskedLM` or `GPT2LMHeadModel`
directory (`hf.load`) and writes an Orbax pytree checkpoint of `{'params': params}` plus
config.json = `{"model": {...}, "hf_special_tokens": {...}}` (usable as `config.init_from`);
`load_t5x` reads such a directory or a training workdir; `t5x_to_hf` writes what
`from_pretrained` loads (`hf.save`).

Special-token ids are the data's, not the architecture's: a model imported from HF keeps its
own (GPT-2's 50256; "hf_special_tokens"), while one trained here (a workdir, whose tokens are
this codebase's SentencePiece layout whatever its vocab_size, e.g. configs/gpt.py's 50257)
gets pad 0 / EOS 1 / BOS 0 (`hf.trained_special_tokens`).
"""
import json
import os


CONFIG_NAME = 'config.json'
SPECIAL_TOKENS = 'hf_special_tokens'


def check_output(path: str):
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ValueError(f'--output={path} already exists and is not an empty directory.')


def hf_to_t5x(hf_dir: str, out_dir: str, scan_layers: bool = False) -> str:
  """HF directory -> Orbax params checkpoint + config.json in `out_dir`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = hf.load(hf_dir, scan_layers=scan_layers)
  ids = hf.special_tokens(hf.read_config(hf_dir)[1])
  out_dir = os.path.abspath(out_dir)
  if os.path.isdir(out_dir):
    os.rmdir(out_dir)  # empty (checked); Orbax creates the directory itself
  ocp.PyTreeCheckpointer().save(out_dir, {'params': params})
  with open(os.path.join(out_dir, CONFIG_NAME), 'w') as f:
    json.dump({'model': json.loads(model_cfg.to_json()), SPECIAL_TOKENS: ids}, f, indent=2,
              sort_keys=True)
  return out_dir


def _saved_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_NAME)
  if not os.path.isfile(path):
    raise ValueError(f'{path} does not exist: --input must be a directory written by '
                     f'--direction=hf_to_t5x or a training workdir.')
  with open(path) as f:
    saved = json.load(f)
  if 'model' not in saved:
    raise ValueError(f'{path} has no "model" section.')
  return saved


def load_t5x(directory: str):
  """(model ConfigDict, params) of a hf_to_t5x output dir or a training workdir."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from t5x_lite import checkpoints, models  # pylint: disable=import-outside-toplevel
  model_cfg = ml_collections.ConfigDict(_saved_config(directory)['model'])
  params, _ = checkpoints.load_params(directory, nn.meta.unbox(models.abstract_params(model_cfg)))
  return model_cfg, params


def t5x_to_hf(directory: str, out_dir: str) -> str:
  """t5x_lite params dir (or training workdir) -> HF directory in `out_dir`."""
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = load_t5x(directory)
  # None (a training workdir): the ids of this codebase's vocabulary.
  return hf.save(model_cfg, params, out_dir, _saved_config(directory).get(SPECIAL_TOKENS))
