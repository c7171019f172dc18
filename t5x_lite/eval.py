r"""Evaluate the latest checkpoint of a run:

    python -m t5x_lite.eval --config=CFG --workdir=DIR [--split=validation] [--eval_steps=N]
        [--config.x=v ...] [--show_predictions=3] [--beam_size=1]

Read-only on the checkpoint: restores only the params of the latest step in
DIR/checkpoints/ (the optimizer state and data position are not read, nothing is saved).

1. Teacher-forced loss and token accuracy over `--eval_steps` batches of the split
   (default `config.train.eval_steps`, 0 = the whole split), exactly as training reports
   `eval_loss` / `eval_accuracy` (`train.evaluate`, same packing as the config).
2. For text-to-text tasks (`data.objective=text_to_text`) of encoder-decoder and
   decoder-only models: greedy decoding (or beam search, `--beam_size=K`, T5X length
   penalty alpha 0.6) of the same number of unpacked batches (`data.pack=False`, so one
   example per row) up to `data.targets_length` tokens, scored against the targets with
   `t5x_lite.metrics` (sequence accuracy, SQuAD v1.1 exact match and F1, sacrebleu BLEU,
   rouge-score ROUGE-1/2/L/Lsum; all in percent). Every decoded example goes to
   DIR/predictions_<split>_<step>.jsonl: {inputs, targets, predictions, score}.

Prints one JSON line on stdout with every figure (progress and a few predictions go to
stderr) and writes it to DIR/eval_<split>_<step>.json. A workdir without a checkpoint, or a
config that does not match the checkpoint, is a one-line `error: ...` and exit status 1.
JSON keys: step, split, eval_steps, eval_loss, eval_accuracy, then (when it decodes)
beam_size, decoded_examples, sequence_accuracy, exact_match, f1, bleu, rouge1, rouge2,
rougeL, rougeLsum; seconds.

The config is the one given on the command line (use the run's config and overrides, or
the same file); the checkpoint's params must have the shapes it describes.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import json
import sys
import time
from typing import Dict, List, Optional, Tuple

from absl import flags

from t5x_lite import cli
from t5x_lite import train as train_lib

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_enum('split', 'validation', ['train', 'validation'], 'Split to evaluate.')
  flags.DEFINE_integer('beam_size', 1, 'Beams for decoding (1 = greedy); scores use the '
                       'T5X length penalty alpha=0.6.')
  flags.DEFINE_integer('eval_steps', None, 'Batches to evaluate and decode (default '
                       'config.train.eval_steps; 0 = the whole split, which the endless '
                       'train split does not allow).')


# ----------------------------------------------------------------- checkpoints
def latest_checkpoint(workdir: str) -> Tuple[int, str]:
  """(step, path of its state item) of the newest complete checkpoint in workdir."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = []
  if os.path.isdir(directory):
    steps = sorted(int(d) for d in os.listdir(directory)
                   if d.isdigit() and os.path.isdir(os.path.join(directory, d, 'state')))
  if not steps:
    raise ValueError(f'--workdir={workdir} has no checkpoint (no {directory}/<step>/state); '
                     'train one first with `python -m t5x_lite.train`.')
  return steps[-1], os.path.join(directory, str(steps[-1]), 'state')


def _check_param_shapes(path: str, abstract_params) -> None:
  """Clear error when the saved params' shapes differ from the config's."""
  import orbax.checkpoint as ocp
  from t5x_lite import checkpoints
  meta = ocp.StandardCheckpointer().metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  mismatch = checkpoints.shape_mismatch(getattr(meta, 'tree', meta)['params'], abstract_params)
  if mismatch:
    raise ValueError(f'checkpoint {path} does not match this config: {mismatch}. Pass the '
                     'config (and --config overrides) the run was trained with.')


def load(config, workdir: str):
  """Validates the config, builds the Trainer on a mesh of the local devices and restores
  the params of the latest checkpoint in workdir (read-only). Returns (trainer, params,
  step)."""
  step, path = latest_checkpoint(workdir)  # before anything compiles: a fast, clear error
  import jax
  from t5x_lite import checkpoints, partitioning, trainer as trainer_lib, validation
  validation.validate_config(config, jax.device_count())
  trainer = trainer_lib.Trainer(config, partitioning.create_mesh(config.partitioning))
  _check_param_shapes(path, trainer.abstract_state.params)
  params, _ = checkpoints.load_params(path, trainer.abstract_state.params)
  return trainer, params, step


# -------------------------------------------------------------------- decoding
def can_decode(config) -> Optional[str]:
  """None if eval decodes this config's task, else the reason it does not."""
  if config.model.family not in ('encoder_decoder', 'decoder'):
    return f'model.family={config.model.family!r} does not generate text'
  if config.data.objective != 'text_to_text':
    return f'data.objective={config.data.objective!r} is not text_to_text'
  return None


def pad_rows(x, n: int):
  """Repeat the first row so `x` has `n` rows (fixed shapes: one compilation per length)."""
  import numpy as np
  return x if x.shape[0] == n else np.concatenate([x, np.repeat(x[:1], n - x.shape[0], 0)])


def decode_split(config, trainer, params, split: str, steps: int,
                 beam_size: int = 1) -> Dict[str, list]:
  """Predictions (greedy, or beam search with `beam_size` beams) on `steps` unpacked batches
  of `split` (0 = all): {'inputs', 'targets', 'predictions', 'scores'}, one entry per real
  example (padding rows dropped); scores as `decoding.decode` defines them."""
  import numpy as np
  from t5x_lite import decoding
  from t5x_lite.data import pipeline
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.pack = False
  it = pipeline.get_dataset(cfg, split)
  vocab, model, length = it.vocab, trainer.model, cfg.data.targets_length
  out = {'inputs': [], 'targets': [], 'predictions': [], 'scores': []}
  for i, batch in enumerate(it):
    if steps and i >= steps:
      break
    real = np.nonzero(batch['decoder_loss_weights'].sum(axis=1) > 0)[0]
    if cfg.model.family == 'encoder_decoder':
      pred, score = decoding.decode(model, params, batch, length, beam_size=beam_size)
      rows = [(batch['encoder_input_tokens'][r], batch['decoder_target_tokens'][r], pred[r],
               score[r]) for r in real]
    else:  # decoder-only prefix LM: prompt = BOS + inputs + EOS (the causal-attention span)
      prompt_len = batch['decoder_causal_attention'].sum(axis=1)
      preds = {}
      for n in sorted(set(prompt_len[real].tolist())):
        idx = real[prompt_len[real] == n]
        prompts = pad_rows(batch['decoder_input_tokens'][idx, :n], len(prompt_len))
        got, score = decoding.decode(model, params, {'decoder_input_tokens': prompts}, length,
                                     beam_size=beam_size, prefix_lm=True)
        preds.update({int(r): (got[j], score[j]) for j, r in enumerate(idx)})
      rows = [(batch['decoder_input_tokens'][r, 1:prompt_len[r]],
               batch['decoder_target_tokens'][r][batch['decoder_loss_weights'][r] > 0],
               *preds[int(r)]) for r in real]
    for inputs, targets, pred, score in rows:
      out['inputs'].append(vocab.decode(inputs))
      out['targets'].append(vocab.decode(targets))
      out['predictions'].append(vocab.decode(pred))
      out['scores'].append(float(score))
  return out


# ------------------------------------------------------------------------ run
def run_eval(config, workdir: str, split: str = 'validation',
             eval_steps: Optional[int] = None, show: int = 0, beam_size: int = 1) -> dict:
  """Everything `python -m t5x_lite.eval` does; returns the figures it prints."""
  from t5x_lite import metrics as metrics_lib
  start = time.time()
  config = config.copy_and_resolve_references()
  if eval_steps is not None:
    if eval_steps < 0:
      raise ValueError(f'--eval_steps={eval_steps} must be >= 0 (0 = the whole split).')
    config.train.eval_steps = eval_steps
  steps = int(config.train.eval_steps)
  if not steps and (split == 'train' or config.data.eval_repeat):
    raise ValueError(f'the {split} split is endless here: pass --eval_steps > 0.')
  from t5x_lite import decoding
  decoding.check_beam_size(beam_size, config.model.vocab_size)
  trainer, params, step = load(config, workdir)
  print(f'[t5x_lite] eval: params of step {step} from {workdir}/checkpoints/{step}; '
        f'{split} split, {steps or "all"} batches of {config.train.batch_size}.',
        file=sys.stderr, flush=True)
  result = {'step': step, 'split': split, 'eval_steps': steps}
  result.update(train_lib.evaluate(config, trainer, params, split))
  why_not = can_decode(config)
  if why_not:
    print(f'[t5x_lite] eval: no decoding ({why_not}).', file=sys.stderr, flush=True)
  else:
    decoded = decode_split(config, trainer, params, split, steps, beam_size)
    result['beam_size'] = beam_size
    result['decoded_examples'] = len(decoded['targets'])
    write_predictions(os.path.join(workdir, f'predictions_{split}_{step}.jsonl'), decoded)
    if decoded['targets']:
      result.update(metrics_lib.text_metrics(decoded['targets'], decoded['predictions']))
    for i in range(min(show, len(decoded['targets']))):
      print(f'  input:      {decoded["inputs"][i][:300]}\n'
            f'  target:     {decoded["targets"][i][:200]}\n'
            f'  prediction: {decoded["predictions"][i][:200]}', file=sys.stderr)
  result['seconds'] = round(time.time() - start, 2)
  path = os.path.join(workdir, f'eval_{split}_{step}.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def write_predictions(path: str, decoded: Dict[str, list]) -> None:
  """One JSON object per decoded example: inputs, targets, predictions, score."""
  with open(path, 'w', encoding='utf-8') as f:
    for i, o, p, s in zip(decoded['inputs'], decoded['targets'], decoded['predictions'],
                          decoded['scores']):
      f.write(json.dumps({'inputs': i, 'targets': o, 'predictions': p, 'score': s},
                         ensure_ascii=False) + '\n')


def main():
  result = run_eval(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.eval_steps,
                    FLAGS.show_predictions, FLAGS.beam_size)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.define_common_flags()
  _define_flags()
  cli.run(main)
