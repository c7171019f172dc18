"""Evaluation and prediction: what `train`, `eval` and `infer` share after a model exists.

Owns: loading the latest checkpoint's params for read-only use (`load`), teacher-forced
loss / accuracy over a split (`evaluate`, the figures training logs as eval_loss /
eval_accuracy), greedy or beam-search decoding of a split with scores (`decode_split`) and
its predictions file (`write_predictions`), batched generation of token lists (`predict`),
printing a few predictions, and the run's metric log (metrics.jsonl +
TensorBoard event files, `MetricsLog`). How each family generates comes from
`families.Family.generates`.
"""
import json
import math
import os
import sys
from typing import Dict, List, Optional

from t5x_lite import families
from t5x_lite import run_config


# ------------------------------------------------------------------ metrics log
def _step_of(line: str):
  """The step of one metrics.jsonl line; None for a blank or cut-short line."""
  try:
    return json.loads(line).get('step', 0) if line.endswith('\n') else None
  except ValueError:
    return None


def _trim_event_files(directory: str, resume_step: int) -> None:
  """Drop the events after `resume_step` from the TensorBoard event files in `directory`
  (and a record cut short by a kill), as metrics.jsonl drops its lines: the resumed run
  writes those steps again, and TensorBoard would otherwise draw both (event files of TF2
  writers are not purged on a step going back). Atomic per file, so a kill loses nothing."""
  import tensorflow as tf
  for path in sorted(tf.io.gfile.glob(os.path.join(directory, 'events.out.tfevents.*'))):
    records, cut = [], False
    try:
      for record in tf.data.TFRecordDataset(path):
        records.append(record.numpy())
    except tf.errors.DataLossError:
      cut = True
    kept = [r for r in records if tf.compat.v1.Event.FromString(r).step <= resume_step]
    if cut or len(kept) < len(records):
      # Not path + '.tmp': a kill before the rename would leave a file TensorBoard (and the
      # next trim) reads as events too ('tfevents' in its name), drawing steps twice.
      tmp = os.path.join(directory, 'trimming.tmp')
      with tf.io.TFRecordWriter(tmp) as writer:
        for record in kept:
          writer.write(record)
      os.replace(tmp, path)


class MetricsLog:
  """metrics.jsonl + TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not enabled:
      return
    # A resumed run rewrites the steps after its checkpoint: drop their old lines (and a
    # line cut short by a kill); atomic, so a kill here loses nothing.
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [l for l in f if _step_of(l) is not None and _step_of(l) <= resume_step]
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(kept)
      os.replace(self.path + '.tmp', self.path)
    _trim_event_files(os.path.join(workdir, 'tensorboard'), resume_step)
    self.tensorboard = os.path.join(workdir, 'tensorboard')
    self.writer = None  # made at the first write: a run that logs nothing adds no empty file

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    import tensorflow as tf
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.writer is None:
      self.writer = tf.summary.create_file_writer(self.tensorboard)
    with self.writer.as_default(step=step):
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          tf.summary.scalar(k, v)
    self.writer.flush()


# ---------------------------------------------------------------------- loading
def load(config, workdir: str, step: Optional[int] = None):
  """Validates the config, builds the Trainer on a mesh of the local devices and restores
  the params of the latest checkpoint in workdir (of `step` when given; read-only). Returns
  (trainer, params, step, the directory read)."""
  from t5x_lite import checkpoints
  wanted = step
  step, path = checkpoints.latest_checkpoint(workdir, wanted)  # before compiling: a fast error
  run_config.check_model_config(workdir, config.model, '--workdir')
  run_config.check_vocabulary(workdir, config.data, '--workdir')
  import jax
  from t5x_lite import partitioning, trainer as trainer_lib, validation
  validation.validate_config(config, jax.device_count())
  trainer = trainer_lib.Trainer(config, partitioning.create_mesh(config.partitioning))
  for attempt in range(5):
    try:
      params, read = checkpoints.load_params(path, trainer.abstract_state.params)  # shapes checked
      return trainer, params, step, read
    except (ValueError, OSError):
      if os.path.exists(path) or attempt == 4 or wanted is not None:
        raise
      # A job training in the workdir deleted this step while it was read (checkpoint.keep):
      # the newest one now is as good.
      step, path = checkpoints.latest_checkpoint(workdir)


# ------------------------------------------------------------ teacher-forced eval
def evaluate(config, trainer, params, split: str = 'validation', skips=None, data=None):
  """Teacher-forced loss / accuracy over `train.eval_steps` batches of `split` (0 = all),
  and how many batches that was (`eval_batches`: fewer where the split is shorter).
  `skips` (a `sources.SkipCounter`) receives the pass's skipped and truncated input.
  `data`: this process's iterator over `split` built earlier (`pipeline.get_dataset`),
  rewound to its start here instead of building one; its own counter receives the skips."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from t5x_lite.data import pipeline
  it = data.rewind() if data is not None else pipeline.get_dataset(
      config, split, shard_index=jax.process_index(), num_shards=jax.process_count(),
      skips=skips)
  # All-padding batch (zero loss weight) for a host whose shard ran out before the others'.
  padding = {k: np.zeros(shape, np.int32) for k, shape in it.shapes.items()}
  totals, steps = None, 0
  while not (config.train.eval_steps and steps >= config.train.eval_steps):
    batch = next(it, None)
    if jax.process_count() > 1:  # every host must run the same number of steps
      if multihost_utils.process_allgather(np.array(batch is None)).all():
        break
      batch = padding if batch is None else batch
    elif batch is None:
      break
    stats = jax.device_get(trainer.eval_step(params, trainer.shard_batch(batch)))
    totals = stats if totals is None else {k: totals[k] + stats[k] for k in totals}
    steps += 1
  if data is not None:
    data.release()
  if not totals:
    raise ValueError(_no_batch(split, it.skips))
  w = max(float(totals['weight_sum']), 1.0)
  return {'eval_loss': float(totals['loss_sum']) / w, 'eval_batches': steps,
          'eval_accuracy': float(totals['correct_sum']) / w}


def _no_batch(split: str, skips) -> str:
  return (f'the {split} split yielded no batch; check config.data.{split}_source '
          f'({skips.summary()}).')


def check_yields_a_batch(data, split: str = 'validation') -> None:
  """`evaluate`'s ValueError unless `data` (this process's fresh iterator over `split`,
  released after) or another process's yields a batch: training checks its validation split
  at start-up, so a source without a usable record fails before the first steps, not at the
  first eval."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  none = np.array(data.holds_no_batch())
  if jax.process_count() > 1:  # another host's shard may hold the examples
    none = multihost_utils.process_allgather(none).all()
  if none:
    raise ValueError(_no_batch(split, data.skips))


# --------------------------------------------------------------------- decoding
def can_decode(config) -> Optional[str]:
  """None if eval decodes this config's task (every task with inputs, of a family that
  generates), else the reason it does not."""
  if families.get(config.model.family).generates is None:
    return f'model.family={config.model.family!r} does not generate text'
  if config.data.objective == 'causal_lm':
    return "data.objective='causal_lm' has no inputs to decode from"
  return None


def pad_rows(x, n: int):
  """Repeat the first row so `x` has `n` rows (fixed shapes: one compilation per length)."""
  import numpy as np
  return x if x.shape[0] == n else np.concatenate([x, np.repeat(x[:1], n - x.shape[0], 0)])


def decode_split(config, model, params, split: str, steps: int,
                 batch_size: Optional[int] = None, beam_size: int = 1,
                 sample_seed: Optional[int] = None) -> Dict[str, list]:
  """Predictions (greedy, or beam search with `beam_size` beams) on `steps` unpacked batches
  of `split` (0 = all): {'inputs', 'targets', 'predictions', 'scores', 'span_tokens'}, one
  entry per real example (padding rows dropped); scores as `decoding.decode` defines them,
  span_tokens (correct, total) as `metrics.span_tokens`. Text-to-text inputs and targets are
  the texts as read (so metrics score against the whole target, not one truncated to
  data.targets_length or with characters the vocabulary lacks); other objectives' are their
  ids decoded. The split is read as one stream, so
  examples come in file order: `steps` batches are the split's first steps x batch examples
  (at most one pass, also of the train split and with data.eval_repeat).
  With `sample_seed`, they are instead drawn uniformly at random (that seed, without
  replacement) from the split's first SAMPLE_POOL_ROWS real examples (all, on a smaller
  split), kept in file order."""
  import numpy as np
  from t5x_lite import decoding, metrics
  from t5x_lite.data import packing, pipeline
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.pack = False
    cfg.data.num_virtual_shards = 1  # file order (V streams would interleave parts of it)
    cfg.data.eval_repeat = False     # each example decoded once, however many steps asked
  texts = cfg.data.objective == 'text_to_text'
  it = pipeline.get_dataset(cfg, split, batch_size=batch_size, keep_text=texts,
                            in_order=True)  # the train split too: one unshuffled pass
  vocab, length = it.vocab, cfg.data.targets_length
  if sample_seed is not None:
    it = _sampled_batches(it, steps, sample_seed)
  generates = families.get(cfg.model.family).generates
  out = {'inputs': [], 'targets': [], 'predictions': [], 'scores': [], 'span_tokens': []}
  for i, batch in enumerate(it):
    if steps and i >= steps:
      break
    real = np.nonzero(batch['decoder_loss_weights'].sum(axis=1) > 0)[0]
    if not real.size:
      continue
    as_read = [[t.decode('utf-8') for t in batch.pop(k)[real]] if texts else None
               for k in packing.TEXT_FEATURES]
    if generates == 'encoder_decoder':
      pred, score = decoding.decode(model, params, batch, length, beam_size=beam_size,
                                    num_ids=vocab.vocab_size)
      rows = [(batch['encoder_input_tokens'][r], batch['decoder_target_tokens'][r], pred[r],
               score[r]) for r in real]
    else:  # decoder-only prefix LM: prompt = BOS + inputs + EOS (the causal-attention span)
      # (every prompt of the batch in one call, `decoding._prompt`; padding rows repeat a
      # real one, whose prompt is not empty)
      prompt_len = batch['decoder_causal_attention'].sum(axis=1)
      rows_in = np.where(prompt_len > 0, np.arange(len(prompt_len)), real[0])
      width = prompt_width(prompt_len.max(), batch['decoder_input_tokens'].shape[1])
      got, score = decoding.decode(
          model, params, {'decoder_input_tokens': batch['decoder_input_tokens'][rows_in, :width],
                          'decoder_prompt_lengths': prompt_len[rows_in]},
          length, beam_size=beam_size, prefix_lm=True, num_ids=vocab.vocab_size)
      rows = [(batch['decoder_input_tokens'][r, 1:prompt_len[r]],
               batch['decoder_target_tokens'][r][batch['decoder_loss_weights'][r] > 0],
               got[r], score[r]) for r in real]
    for j, (inputs, targets, pred, score) in enumerate(rows):
      out['inputs'].append(as_read[0][j] if texts else vocab.decode(inputs))
      out['targets'].append(as_read[1][j] if texts else vocab.decode(targets))
      out['predictions'].append(vocab.decode(pred))
      out['scores'].append(float(score))
      out['span_tokens'].append(metrics.span_tokens(targets, pred, vocab.is_sentinel))
  return out


# Rows a sample is drawn from: the split's first ones, so its time and memory stay bounded
# on any validation split (all of a smaller one: the shipped split has ~1,700 demo rows).
SAMPLE_POOL_ROWS = 10_000


def _sampled_batches(it, steps: int, seed: int) -> list:
  """`steps` (>= 1) batches of the iterator's shape, rows drawn at random (seeded, without
  replacement, kept in file order) from the first SAMPLE_POOL_ROWS real rows the iterator
  yields (it read and held the whole split: minutes and gigabytes on a large one)."""
  import numpy as np
  batches, real_rows = [], 0
  for batch in it:
    batches.append(batch)
    real_rows += int(np.count_nonzero(batch['decoder_loss_weights'].sum(axis=1) > 0))
    if real_rows >= SAMPLE_POOL_ROWS:
      break
  cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  real = np.nonzero(cat['decoder_loss_weights'].sum(axis=1) > 0)[0]
  size = len(batches[0]['decoder_loss_weights'])
  pick = np.sort(np.random.default_rng(seed).choice(real, min(len(real), max(steps, 1) * size),
                                                    replace=False))
  return [{k: v[pick[i:i + size]] for k, v in cat.items()} for i in range(0, len(pick), size)]


def write_predictions(path: str, decoded: Dict[str, list]) -> None:
  """One JSON object per decoded example: inputs, targets, predictions, score."""
  with open(path, 'w', encoding='utf-8') as f:
    for i, o, p, s in zip(decoded['inputs'], decoded['targets'], decoded['predictions'],
                          decoded['scores']):
      f.write(json.dumps({'inputs': i, 'targets': o, 'predictions': p, 'score': s},
                         ensure_ascii=False) + '\n')


def span_counts(decoded: Dict[str, list]) -> tuple:
  """(correct, total) target span tokens over every decoded example (`metrics.span_tokens`:
  a target without sentinels, as prefix LM's or iid noise's, is one span)."""
  return (sum(c for c, _ in decoded['span_tokens']), sum(t for _, t in decoded['span_tokens']))


def span_accuracy(decoded: Dict[str, list]) -> str:
  """'P% (c/t target span tokens)' over every decoded example (`span_counts`)."""
  correct, total = span_counts(decoded)
  return f'{100 * correct / max(total, 1):.1f}% ({correct}/{total} target span tokens)'


def print_predictions(decoded: Dict[str, list], n: int, file=None,
                      text_to_text: bool = False) -> None:
  """The first `n` decoded examples: input, target and prediction, cut to a line each, with
  each example's score: exact match for text-to-text tasks (the metric they are scored by),
  else span accuracy."""
  from t5x_lite import metrics  # pylint: disable=import-outside-toplevel
  file = file or sys.stdout  # looked up per call: sys.stdout may be replaced after import
  for i in range(min(n, len(decoded['targets']))):
    target, prediction = decoded['targets'][i], decoded['predictions'][i]
    if text_to_text:
      score = 'exact match: ' + ('yes' if metrics.exact_match([target], [prediction]) else 'no')
    else:
      score = 'span accuracy: {}/{}'.format(*decoded['span_tokens'][i])
    print(f'  input:      {decoded["inputs"][i][:300]}\n'
          f'  target:     {target[:200]}\n'
          f'  prediction: {prediction[:200]}\n'
          f'  {score}', file=file)


def prompt_width(longest: int, widest: int) -> int:
  """A decoder-only batch's prompt width: its `longest` prompt rounded up to a power of two,
  at most the `widest` of all (so at most ~log2(widest) + 2 widths, each compiled once).

  >>> prompt_width(5, 100), prompt_width(64, 100), prompt_width(65, 100), prompt_width(1, 1)
  (8, 64, 100, 1)
  """
  return min(1 << (int(longest) - 1).bit_length(), widest)


def predict(config, model, params, token_lists: List[List[int]], *, batch_size: int,
            max_length: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
            seed: int = 0, beam_size: int = 1, num_ids: Optional[int] = None,
            on_batch=None) -> List:
  """Generated ids ([max_length] arrays) for each token list, in order. Encoder-decoder:
  fixed [batch_size, data.inputs_length] zero-padded batches. Decoder-only: the lists are
  prompts (BOS included), batched in order whatever their lengths (`decoding._prompt`),
  each batch as wide as its longest prompt rounded up to a power of two (`prompt_width`:
  a few compilations, not one per prompt length). `beam_size` > 1 is beam search (not with
  temperature > 0). `num_ids`: as `decoding.decode` takes it (the vocabulary's size).
  `on_batch(indices, their rows, their scores)` after each batch (the
  writer streams finished lines in input order from it)."""
  import jax
  import numpy as np
  from t5x_lite import decoding
  rng = jax.random.PRNGKey(seed)
  out = [None] * len(token_lists)
  kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, beam_size=beam_size,
            num_ids=num_ids)
  encoder_decoder = families.get(config.model.family).generates == 'encoder_decoder'
  widest = max(map(len, token_lists), default=1)
  for count, start in enumerate(range(0, len(token_lists), batch_size)):
    idx = list(range(start, min(start + batch_size, len(token_lists))))
    key = jax.random.fold_in(rng, count)
    if encoder_decoder:
      enc = np.zeros((len(idx), config.data.inputs_length), np.int32)
      for row, i in enumerate(idx):
        enc[row, :len(token_lists[i])] = token_lists[i]
      # Spare rows repeat a real one: an all-padding row never ends (no EOS), and the
      # loop runs until every row has ended.
      enc = pad_rows(enc, batch_size)
      got, scores = decoding.decode(model, params, {'encoder_input_tokens': enc}, max_length,
                                    rng=key, **kw)
    else:
      lengths = np.array([len(token_lists[i]) for i in idx], np.int32)
      prompts = np.zeros((len(idx), prompt_width(lengths.max(), widest)), np.int32)
      for row, i in enumerate(idx):
        prompts[row, :lengths[row]] = token_lists[i]
      got, scores = decoding.decode(
          model, params, {'decoder_input_tokens': pad_rows(prompts, batch_size),
                          'decoder_prompt_lengths': pad_rows(lengths, batch_size)},
          max_length, rng=key, prefix_lm=config.data.objective != 'causal_lm', **kw)
    for row, i in enumerate(idx):
      out[i] = got[row]
    if on_batch:
      on_batch(idx, got[:len(idx)], scores[:len(idx)])
  return out
