r"""Evaluate the latest checkpoint of a run:

    python -m t5x_lite.eval --config=CFG --workdir=DIR [--split=validation] [--eval_steps=N]
        [--config.x=v ...] [--show_predictions=3] [--beam_size=1]

Read-only on the checkpoint: restores only the params of the latest step in
DIR/checkpoints/ (the optimizer state and data position are not read, nothing is saved).

1. Teacher-forced loss and token accuracy over `--eval_steps` batches of the split
   (default `config.train.eval_steps`, 0 = the whole split), exactly as training reports
   `eval_loss` / `eval_accuracy` (`evaluation.evaluate`, same packing as the config).
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
JSON keys: step, split, eval_steps, eval_loss, eval_accuracy, skipped_input ({reason:
count}), for text-to-text tasks examples_read, truncated_inputs and truncated_targets, then
(when it decodes) beam_size, decoded_examples, sequence_accuracy, exact_match, f1, bleu,
rouge1, rouge2, rougeL, rougeLsum; seconds.

Bad input (`data.on_bad_input`, docs/cli.md): lines and records the pipeline skips are
counted by reason (an example whose inputs or targets are empty or tokenize to nothing is a
counted skip); a text-to-text example longer than data.inputs_length / targets_length (EOS
included) is truncated, as in training, and counted. One stderr line says it, e.g.
`3 of 200 examples had inputs longer than data.inputs_length=64 tokens (EOS included) and
were truncated`; the counts are those of the teacher-forced pass (the decode pass reads the
same examples), over every stream of this host, read up to the last batch (with
--eval_steps, the pipeline may have read a few examples ahead).

The config is the one given on the command line (use the run's config and overrides, or
the same file); the checkpoint's params must have the shapes it describes.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import json
import sys
import time
from typing import Optional

from absl import flags

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


# ------------------------------------------------------------------------ run
def run_eval(config, workdir: str, split: str = 'validation',
             eval_steps: Optional[int] = None, show: int = 0, beam_size: int = 1) -> dict:
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
  trainer, params, step = evaluation.load(config, workdir)
  print(f'[t5x_lite] eval: params of step {step} from {workdir}/checkpoints/{step}; '
        f'{split} split, {steps or "all"} batches of {config.train.batch_size}.',
        file=sys.stderr, flush=True)
  result = {'step': step, 'split': split, 'eval_steps': steps}
  skips = sources.SkipCounter()
  result.update(evaluation.evaluate(config, trainer, params, split, skips=skips))
  # Bad and over-long input, counted as the pass read it (this host's streams, summed).
  result.update(skips.figures())
  print(f'[t5x_lite] eval data ({split}): {skips.report() or "no input skipped"}.',
        file=sys.stderr, flush=True)
  why_not = evaluation.can_decode(config)
  if why_not:
    print(f'[t5x_lite] eval: no decoding ({why_not}).', file=sys.stderr, flush=True)
  else:
    decoded = evaluation.decode_split(config, trainer.model, params, split, steps,
                                      beam_size=beam_size)
    result['beam_size'] = beam_size
    result['decoded_examples'] = len(decoded['targets'])
    evaluation.write_predictions(
        os.path.join(workdir, f'predictions_{split}_{step}.jsonl'), decoded)
    if decoded['targets']:
      result.update(metrics_lib.text_metrics(decoded['targets'], decoded['predictions']))
    evaluation.print_predictions(decoded, show, file=sys.stderr)
  result['seconds'] = round(time.time() - start, 2)
  path = os.path.join(workdir, f'eval_{split}_{step}.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def main():
  result = run_eval(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.eval_steps,
                    FLAGS.show_predictions, FLAGS.beam_size)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.define_common_flags()
  _define_flags()
  cli.run(main)
