"""Convert between Hugging Face model directories and t5x_lite (Orbax) params.

    python -m t5x_lite.convert --direction=hf_to_t5x --input=HF_DIR --output=OUT_DIR
    python -m t5x_lite.convert --direction=t5x_to_hf --input=OUT_DIR --output=HF_DIR

hf_to_t5x: reads `config.json` + `model.safetensors` of a `T5ForConditionalGeneration`,
`BertForMaskedLM` or `GPT2LMHeadModel` directory (`t5x_lite.hf.load`) and writes OUT_DIR as
an Orbax pytree checkpoint of `{'params': params}` (unscanned unless `--scan_layers`) plus
OUT_DIR/config.json = `{"model": {...}}`, the model section of a t5x_lite config. OUT_DIR can be
used as `config.init_from` for fine-tuning (same params layout as the train-state checkpoints).

t5x_to_hf: reads such a directory, or a training workdir (its config.json and the params of
its latest checkpoint), and writes a directory that `transformers`' `from_pretrained` loads
(`t5x_lite.hf.save`). OUTPUT must not exist yet (or be empty) in both directions.
"""
import json
import os

from absl import app
from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_enum('direction', None, ['hf_to_t5x', 't5x_to_hf'], 'Conversion direction.')
  flags.DEFINE_string('input', None, 'Input directory (HF model dir, or t5x_lite params dir).')
  flags.DEFINE_string('output', None, 'Output directory (must not exist or be empty).')
  flags.DEFINE_bool('scan_layers', False, 'hf_to_t5x: store layers stacked (scan_layers=True).')

CONFIG_NAME = 'config.json'


def _check_output(path: str):
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ValueError(f'--output={path} already exists and is not an empty directory.')


def hf_to_t5x(hf_dir: str, out_dir: str, scan_layers: bool = False) -> str:
  """HF directory -> Orbax params checkpoint + config.json in `out_dir`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  _check_output(out_dir)
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
  import jax  # pylint: disable=import-outside-toplevel
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
  module = models.build(model_cfg)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            models.dummy_batch(model_cfg))['params']
  params, _ = checkpoints.load_params(directory, nn.meta.unbox(abstract))
  return model_cfg, params


def t5x_to_hf(directory: str, out_dir: str) -> str:
  """t5x_lite params dir (or training workdir) -> HF directory in `out_dir`."""
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  _check_output(out_dir)
  model_cfg, params = load_t5x(directory)
  return hf.save(model_cfg, params, out_dir)


def main():
  for name in ('direction', 'input', 'output'):
    if not getattr(FLAGS, name):
      raise app.UsageError(f'--{name} is required.')
  if FLAGS.direction == 'hf_to_t5x':
    out = hf_to_t5x(FLAGS.input, FLAGS.output, FLAGS.scan_layers)
  else:
    out = t5x_to_hf(FLAGS.input, FLAGS.output)
  print(f'wrote {out}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
