r"""Pretrain or fine-tune: `python -m t5x_lite.train --config=CFG --workdir=DIR [--config.x=v]`.

Writes DIR/checkpoints/ (Orbax: state + data-iterator position + config), DIR/tensorboard/
(event files), DIR/metrics.jsonl (one JSON object per logged step) and DIR/config.json.
Resumes from the latest checkpoint in DIR; else fine-tunes from `config.init_from`
(a t5x_lite checkpoint dir, or `hf:DIR` for a Hugging Face directory); else starts fresh.
One log line says which and why. SIGTERM / SIGINT save a checkpoint at the current step and
exit cleanly. A non-finite loss stops the run naming the step; the non-finite update is never
applied, so no checkpoint can hold NaNs.

Multi-host: run the same command on every host with --coordinator_address, --num_processes
and --process_id (or on TPU / SLURM with --distributed=auto); each host reads its own data
shard and feeds its rows of the global batch.
"""
import json
import logging
import math
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import signal
import sys
import tempfile
import time

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  cli.define_common_flags()
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device for MFU (0 = from the table).')
  flags.DEFINE_enum('distributed', 'off', ['off', 'auto', 'manual'],
                    'auto: jax.distributed cluster detection (TPU, SLURM); manual: use '
                    '--coordinator_address, --num_processes, --process_id.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (manual mode).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (manual mode).')
  flags.DEFINE_integer('process_id', None, 'This process (manual mode).')


log = logging.getLogger('t5x_lite.train')

def check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # A unique name: every host of a multi-host run probes the same (shared) workdir.
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_'):
      pass
  except OSError as e:
    raise ValueError(f'--workdir={workdir} is not writable ({e.strerror}).') from None


def initialize_distributed(mode: str):
  import jax
  if mode == 'auto':
    jax.distributed.initialize(initialization_timeout=120, heartbeat_timeout_seconds=30)
  elif mode == 'manual':
    missing = [n for n in ('coordinator_address', 'num_processes', 'process_id')
               if getattr(FLAGS, n) is None]
    if missing:
      raise ValueError(f'--distributed=manual needs --{missing[0]}.')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, initialization_timeout=120,
                               heartbeat_timeout_seconds=30)


class MetricsLog:
  """metrics.jsonl + TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not enabled:
      return
    import tensorflow as tf
    # A resumed run rewrites the steps after its checkpoint: drop their old lines.
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [l for l in f if l.strip() and json.loads(l).get('step', 0) <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self.writer = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    import tensorflow as tf
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    with self.writer.as_default(step=step):
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          tf.summary.scalar(k, v)
    self.writer.flush()


def report_skips(split: str, data_iterator) -> None:
  """Skipped input (bad bytes, empty lines, missing fields) is counted, never silent."""
  if data_iterator.skips.total():
    print(f'[t5x_lite] data {split} (this host shard): {data_iterator.skips.summary()}',
          file=sys.stderr, flush=True)


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def restore_or_init(config, trainer, ckpts, train_iter):
  """Latest workdir checkpoint > config.init_from > fresh. Returns (state, one-line why)."""
  from t5x_lite import checkpoints, hf
  latest = ckpts.latest_step()
  if latest is not None:
    state = ckpts.restore(latest, trainer.abstract_state, train_iter)
    why = (f'restored step {latest} from {ckpts.directory / str(latest)} (latest checkpoint '
           'in the workdir wins): params, optimizer state and data-iterator position')
    if config.init_from:
      why += f'; config.init_from={config.init_from!r} ignored because the workdir resumes'
    return state, why
  if config.init_from.startswith('hf:'):
    hf_cfg, params = hf.load(config.init_from[3:], scan_layers=config.model.scan_layers)
    mismatch = [k for k, v in hf_cfg.items() if k in config.model and config.model[k] != v
                and k not in ('dropout_rate', 'dtype', 'scan_layers', 'remat')]
    if mismatch:
      raise ValueError(f'config.model.{mismatch[0]}={config.model[mismatch[0]]!r} differs from '
                       f'the Hugging Face model in {config.init_from[3:]} '
                       f'({hf_cfg[mismatch[0]]!r}).')
    state = trainer.state_from_params(params)
    return state, (f'initialized params from Hugging Face directory {config.init_from[3:]} '
                   '(config.init_from; no checkpoint in the workdir); fresh optimizer state '
                   'and data position')
  if config.init_from:
    params, path = checkpoints.load_params(config.init_from, trainer.abstract_state.params)
    state = trainer.state_from_params(params)
    return state, (f'initialized params from {path} (config.init_from; no checkpoint in the '
                   'workdir); fresh optimizer state, step 0 and data position')
  return trainer.init_state(config.train.seed), (
      f'fresh start from seed {config.train.seed} (no checkpoint in the workdir, no '
      'config.init_from)')


def evaluate(config, trainer, params, split: str = 'validation'):
  """Teacher-forced loss / accuracy over `train.eval_steps` batches of `split` (0 = all)."""
  import jax
  from t5x_lite.data import pipeline
  import numpy as np
  from jax.experimental import multihost_utils
  it = pipeline.get_dataset(config, split, shard_index=jax.process_index(),
                            num_shards=jax.process_count())
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
  if not totals:
    raise ValueError(f'the {split} split yielded no batch; check config.data.{split}_source.')
  w = max(float(totals['weight_sum']), 1.0)
  return {'eval_loss': float(totals['loss_sum']) / w,
          'eval_accuracy': float(totals['correct_sum']) / w}


def show_predictions(config, trainer, params, n: int):
  import jax
  import numpy as np
  from t5x_lite import decoding, models
  from t5x_lite.data import pipeline, vocab as vocab_lib
  if trainer.model_cfg.family != 'encoder_decoder' or n <= 0:
    return
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.pack = False
  vocab = vocab_lib.from_config(cfg.data)
  batch = next(iter(pipeline.get_dataset(cfg, 'validation', batch_size=n)))
  params = jax.device_get(params)
  model = models.build(cfg.model)
  out = np.asarray(decoding.encoder_decoder_generate(
      model, params, batch['encoder_input_tokens'], cfg.data.targets_length))
  print('Predictions on validation examples (greedy):')
  for i in range(min(n, out.shape[0])):
    print(f'  input:      {vocab.decode(batch["encoder_input_tokens"][i])[:300]}')
    print(f'  target:     {vocab.decode(batch["decoder_target_tokens"][i])[:200]}')
    print(f'  prediction: {vocab.decode(out[i])[:200]}')


def train(config, workdir: str, peak_flops: float = 0.0, num_predictions: int = 0):
  import jax
  from t5x_lite import checkpoints, partitioning, plan, trainer as trainer_lib, validation
  from t5x_lite.data import pipeline

  validation.validate_config(config, jax.device_count())
  check_workdir(workdir)
  mesh = partitioning.create_mesh(config.partitioning)
  trainer = trainer_lib.Trainer(config, mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  host_batch = config.train.batch_size // nproc
  train_iter = pipeline.get_dataset(config, 'train', shard_index=pid, num_shards=nproc,
                                    batch_size=host_batch)
  report_skips('train', train_iter)
  if config.train.eval_every:
    try:  # build it once now: a missing or broken validation source fails before compiling
      report_skips('validation', pipeline.get_dataset(config, 'validation', shard_index=pid,
                                                      num_shards=nproc))
    except ValueError as e:
      raise ValueError(f'config.data.validation_source: {e}') from None
  ckpts = checkpoints.Checkpoints(os.path.join(workdir, 'checkpoints'), config.checkpoint.keep,
                                  config.checkpoint.async_save)
  state, why = restore_or_init(config, trainer, ckpts, train_iter)
  start = int(jax.device_get(state.step))
  resumed = ckpts.latest_step() is not None
  tokens_seen = int(ckpts.progress(start).get('tokens_seen', 0)) if resumed else 0
  print(f'[t5x_lite] {why}.', flush=True)
  if pid == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(_config_dict(config), f, indent=2)
  metrics_log = MetricsLog(workdir, start, enabled=pid == 0)

  flops = plan.flops_per_token(config)
  peak = plan.peak_flops_per_device(jax.devices()[0].device_kind, peak_flops)
  lengths = flops['lengths']
  tokens_per_row = lengths['encoder'] + lengths['decoder']
  print(f'[t5x_lite] mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} '
        f'device(s); {config.train.steps} steps of {config.train.batch_size} rows x '
        f'{tokens_per_row} tokens; MFU = 3 x forward matmul FLOPs (plan.py) / peak'
        f'{" (peak unknown for " + jax.devices()[0].device_kind + ": pass --peak_flops)" if not peak else ""}.',
        flush=True)

  stop = {'signal': None}
  def request_stop(signum, frame):
    stop['signal'] = signal.Signals(signum).name
  old_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}

  config_dict = _config_dict(config)
  dropout_rng = jax.random.PRNGKey(config.train.seed + 1)
  pending = []  # (step, device metrics) since the last host sync
  first_loss = last_loss = None
  window_start, window_steps = time.time(), 0
  run_start = time.time()
  last_saved = start

  def sync_pending():
    """Fetch pending metrics; stop at the first non-finite step."""
    nonlocal first_loss, last_loss, tokens_seen
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, fetched):
      if not bool(m['finite']):
        raise FloatingPointError(
            f'non-finite loss ({float(m["loss"])}) or gradient norm ({float(m["grad_norm"])}) at '
            f'step {step}; the update was not applied and no checkpoint was written after step '
            f'{last_saved}. Lower optimizer.learning_rate or enable optimizer.clip_grad_norm.')
      tokens_seen += int(m['target_tokens'])
      if first_loss is None:
        first_loss = float(m['loss'])
      last_loss = float(m['loss'])
    pending.clear()
    return fetched

  def save(step):
    nonlocal last_saved
    ckpts.save(step, state, train_iter, config_dict, {'tokens_seen': tokens_seen})
    last_saved = step

  step = start
  try:
    while step < config.train.steps:
      batch = trainer.shard_batch(next(train_iter))
      state, metrics = trainer.train_step(state, batch, dropout_rng)
      step += 1
      window_steps += 1
      pending.append((step, metrics))
      is_last = step == config.train.steps
      record = {}  # one metrics.jsonl object per logged step (train and eval figures)
      if step % config.train.log_every == 0 or is_last or stop['signal']:
        m = sync_pending()[-1]
        elapsed = time.time() - window_start
        rows_per_sec = window_steps * config.train.batch_size / max(elapsed, 1e-9)
        record.update({k: float(v) for k, v in m.items() if k != 'finite'})
        record['tokens_seen'] = tokens_seen
        record['tokens_per_sec'] = rows_per_sec * tokens_per_row
        record['steps_per_sec'] = window_steps / max(elapsed, 1e-9)
        record['mfu'] = (flops['per_example']['train'] * rows_per_sec /
                         (jax.device_count() * peak)) if peak else None
        eta = (config.train.steps - step) / max(record['steps_per_sec'], 1e-9)
        mfu = 'n/a' if record['mfu'] is None else f"{100 * record['mfu']:.1f}%"
        print(f'step {step:>6}/{config.train.steps}  loss {record["loss"]:.4f}  '
              f'acc {record["accuracy"]:.3f}  lr {record["learning_rate"]:.2e}  '
              f'{record["tokens_per_sec"]:,.0f} tok/s  '
              f'MFU {mfu}  '
              f'ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}', flush=True)
        window_start, window_steps = time.time(), 0
      if config.train.eval_every and (step % config.train.eval_every == 0 or is_last):
        ev = evaluate(config, trainer, state.params)
        print(f'step {step:>6}  eval_loss {ev["eval_loss"]:.4f}  '
              f'eval_accuracy {ev["eval_accuracy"]:.3f}', flush=True)
        record.update(ev)
        window_start = time.time()
      if record:
        metrics_log.write(step, record)
      if (config.train.checkpoint_every and step % config.train.checkpoint_every == 0) \
          or is_last or stop['signal']:
        sync_pending()  # never checkpoint past a non-finite step
        save(step)
      if stop['signal']:
        ckpts.wait()
        print(f'[t5x_lite] {stop["signal"]}: saved checkpoint at step {step} in '
              f'{ckpts.directory}; rerun the same command to resume.', flush=True)
        return
  finally:
    ckpts.wait()
    ckpts.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)

  report_skips('train', train_iter)  # again: streamed sources (TFDS) count as they read
  total = time.time() - run_start
  print(f'[t5x_lite] done: {step - start} steps in {total:.0f}s; first loss '
        f'{first_loss if first_loss is None else round(first_loss, 4)}, last loss '
        f'{last_loss if last_loss is None else round(last_loss, 4)}; checkpoint step {step} in '
        f'{ckpts.directory}.', flush=True)
  if pid == 0:
    from t5x_lite import loss_curve
    print(loss_curve.report(workdir), flush=True)
    show_predictions(config, trainer, state.params, num_predictions)


def main():
  initialize_distributed(FLAGS.distributed)
  train(FLAGS.config, FLAGS.workdir, FLAGS.peak_flops, FLAGS.show_predictions)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
