"""Evaluate the latest checkpoint of a run (or `--step`'s): teacher-forced loss and accuracy,
and decoding scored by the text metrics (text-to-text tasks) or by span accuracy
(pretraining objectives with inputs: span corruption, iid noise, prefix LM):

    python -m t5x_lite.eval --config=CFG --workdir=DIR [--split=validation] [--eval_steps=N]
        [--step=N]

What it reads, decodes, prints and writes (and its JSON keys): docs/cli.md.
"""
import json
import os
import sys
import time
from typing import Optional

from absl import flags

from t5x_lite import checkpoints
from t5x_lite import cli
from t5x_lite import evaluation

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_enum('split', 'validation', ['train', 'validation'], 'Split to evaluate.')
  flags.DEFINE_integer('beam_size', 1, 'Beams for decoding (1 = greedy); scores use the '
                       'T5X length penalty alpha=0.6.')
  flags.DEFINE_integer('eval_steps', None, 'Batches to evaluate and decode (default '
                       'config.train.eval_steps; 0 = the whole split, which the endless '
                       'train split does not allow).')
  flags.DEFINE_integer('step', None, 'The checkpoint step to evaluate (default: the latest).')


# ------------------------------------------------------------------------ run
def run_eval(config, workdir: str, split: str = 'validation',
             eval_steps: Optional[int] = None, show: int = 0, beam_size: int = 1,
             step: Optional[int] = None) -> dict:
  """Everything `python -m t5x_lite.eval` does; returns the figures it prints."""
  from t5x_lite import decoding
  from t5x_lite import metrics as metrics_lib
  from t5x_lite.data import sources
  start = time.time()
  config = config.copy_and_resolve_references()
  if eval_steps is not None:
    if eval_steps < 0:
      raise ValueError(f'--eval_steps={eval_steps} must be >= 0 (0 = the whole split).')
    config.train.eval_steps = eval_steps
  steps = int(config.train.eval_steps)
  if not steps and (split == 'train' or config.data.eval_repeat):
    raise ValueError(f'the {split} split is endless here: pass --eval_steps > 0.')
  decoding.check_beam_size(beam_size, config.model.vocab_size)
  trainer, params, step, read = evaluation.load(config, workdir, step)
  # Before the work: eval writes its figures and predictions into the workdir.
  checkpoints.check_workdir(workdir, writes=f'eval_{split}_<step>.json and its predictions')
  print(f'[t5x_lite] eval: params of step {step} from {read}; '
        f'{split} split, {f"up to {steps}" if steps else "all"} batches of '
        f'{config.train.batch_size}.',
        file=sys.stderr, flush=True)
  result = {'step': step, 'split': split, 'source': config.data[f'{split}_source']}
  skips = sources.SkipCounter()
  result.update(evaluation.evaluate(config, trainer, params, split, skips=skips))
  result['eval_steps'] = result.pop('eval_batches')  # read: a short split has fewer than asked
  # Bad and over-long input, counted as the pass read it (this host's streams, summed).
  result.update(skips.figures())
  print(f'[t5x_lite] eval data ({split}): {skips.report() or "no input skipped"}.',
        file=sys.stderr, flush=True)
  # The plain names hold the latest eval of this step; each beam size (1: greedy) also keeps
  # its own copy, so a beam search does not lose greedy decoding's results.
  names = (f'{split}_{step}', f'{split}_{step}_beam{beam_size}')
  why_not = evaluation.can_decode(config)
  if why_not:
    print(f'[t5x_lite] eval: no decoding ({why_not}).', file=sys.stderr, flush=True)
  else:
    decoded = evaluation.decode_split(config, trainer.model, params, split, steps,
                                      beam_size=beam_size)
    result['beam_size'] = beam_size
    result['decoded_examples'] = len(decoded['targets'])
    for name in names:
      evaluation.write_predictions(os.path.join(workdir, f'predictions_{name}.jsonl'), decoded)
    text_to_text = config.data.objective == 'text_to_text'
    if decoded['targets'] and text_to_text:
      result.update(metrics_lib.text_metrics(decoded['targets'], decoded['predictions']))
    elif decoded['targets']:  # pretraining objectives: ids decoded, sentinels and all
      correct, total = evaluation.span_counts(decoded)
      result.update(
          sequence_accuracy=metrics_lib.sequence_accuracy(decoded['targets'],
                                                          decoded['predictions']),
          span_accuracy=100.0 * correct / max(total, 1), span_tokens=[correct, total])
    evaluation.print_predictions(decoded, show, file=sys.stderr, text_to_text=text_to_text)
  result['seconds'] = round(time.time() - start, 2)
  _say_if_replacing(os.path.join(workdir, f'eval_{names[0]}.json'), result)  # (the latest)
  for name in names:
    with open(os.path.join(workdir, f'eval_{name}.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result


def _say_if_replacing(path: str, result: dict) -> None:
  """A warning when `path` holds an eval of this step over another source or number of
  batches, which this one replaces (with its predictions files): a quick check on a small
  set would otherwise overwrite the full evaluation without a word."""
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return
  was = (old.get('source'), old.get('eval_steps')) if isinstance(old, dict) else (None, None)
  now = (result['source'], result['eval_steps'])
  if was[0] is not None and was != now:  # (files of older versions hold no source)
    extent = lambda source, n: f'{n} batch{"es" if n != 1 else ""} of {source}'  # noqa: E731
    print(f'[t5x_lite] warning: replacing {path} and its predictions ({extent(*was)}) with '
          f'this eval ({extent(*now)}).', file=sys.stderr, flush=True)


def main():
  result = run_eval(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.eval_steps,
                    FLAGS.show_predictions, FLAGS.beam_size, FLAGS.step)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.define_common_flags()
  _define_flags()
  cli.run(main)
