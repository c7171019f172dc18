"""The training loop: restore, then step, log, evaluate, checkpoint, stop.

Owns `train(config, workdir, ...)`, what `python -m t5x_lite.train` runs, and the small
host-side objects it reads from top to bottom:
    StopRequest  SIGTERM / SIGINT -> finish the current step, checkpoint it, exit cleanly
    StopVote     multi-host: a signal on any process stops every process at the same step
    Progress     metrics fetched from the device in batches (the host never waits a step):
                 acts on non-finite steps (`train.on_nonfinite`), counts tokens seen and
                 skipped steps, first / last loss, and averages each log window's steps
    Throughput   tokens/s, steps/s and MFU over the window since the last log line (the
                 first step of a session, which compiles, is left out of the first window)
A non-finite loss or gradient norm: the trainer never applies that update. With
`train.on_nonfinite='stop'` the run raises FloatingPointError naming the step; with 'skip'
it goes on (the step counts in `skipped_steps`) until `train.max_consecutive_skips`
consecutive non-finite steps stop it. `Progress.sync` runs before every checkpoint, so no
checkpoint is written past a stopping step, and none can hold NaNs.
A checkpoint save that fails in the background (`checkpoints.CheckpointError`) stops the
run at the next step; the earlier checkpoints stay as they were.
"""
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional

import numpy as np

from t5x_lite import accounting
from t5x_lite import checkpoints
from t5x_lite import evaluation
from t5x_lite import families


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """An exclusive lock on DIR/train.lock while one training job runs in the workdir: a second
  job would interleave its metrics and checkpoints with this one's. flock is released by the
  kernel when the process dies, so a killed run leaves no stale lock; on a filesystem
  without flock (some FUSE mounts) the run goes on unlocked."""
  import fcntl
  with open(os.path.join(workdir, 'train.lock'), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise ValueError(f'--workdir={workdir} is in use by another train job ({holder}, holding '
                       f'{f.name}); wait for it to end or give another workdir.') from None
    except OSError:
      yield  # no flock here: unlocked, as before
      return
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}')
    f.flush()
    yield


def host_params(params):
  """The whole params as host numpy arrays, for decoding on the host. Params that span
  several processes' devices (e.g. FSDP across hosts) cannot be fetched by one process: they
  are all-gathered, a collective that every process must call."""
  import jax
  if all(getattr(x, 'is_fully_addressable', True) for x in jax.tree.leaves(params)):
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def report_skips(split: str, skips) -> None:
  """Skipped input (bad bytes, empty lines, missing fields) and truncated text-to-text
  examples (`sources.SkipCounter`) are counted, never silent."""
  if skips.report():
    print(f'[t5x_lite] data {split} (this host shard): {skips.report()}',
          file=sys.stderr, flush=True)


class StopRequest:
  """Context manager: while active, SIGTERM / SIGINT set `signal` (its name) instead of
  killing the process; the loop checkpoints the step it is on and returns."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, after: Optional['StartupInterrupt'] = None):
    self.signal: Optional[str] = None if after is None else after.signal  # seen at start-up
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if name == 'SIGINT' == self.signal:  # Ctrl-C twice: stop now (the saved steps are kept)
      raise KeyboardInterrupt
    self.signal = name
    if name == 'SIGINT':  # the step, an eval or a save may take a while yet
      # Never raise from here: a print the handler interrupted (reentrant), a closed stderr.
      with contextlib.suppress(RuntimeError, OSError, ValueError):
        print('[t5x_lite] SIGINT: stopping after this step with a checkpoint (Ctrl-C again '
              'to stop at once without it).', file=sys.stderr, flush=True)

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False


class StartupInterrupt:
  """Start-up (set-up, restore, compile): Ctrl-C raises KeyboardInterrupt as usual, and is
  also remembered. Python drops an exception raised while it runs certain callbacks (JAX's
  garbage-collection hook: 'Exception ignored in ...'), which left a run training after a
  Ctrl-C; `StopRequest(after=...)` stops at the first step on a remembered one."""

  def __init__(self):
    self.signal: Optional[str] = None
    self._previous = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name
    raise KeyboardInterrupt

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


def first_batch(train_iter) -> dict:
  """next(train_iter), waited for in a helper thread: the main thread's wait (unlike one in
  tf.data's C++, which holds Python's signal handlers back) ends at once on a Ctrl-C."""
  out = {}

  def fetch():
    try:
      out['batch'] = next(train_iter)
    except BaseException as e:  # noqa: BLE001 - raised in the main thread below
      out['error'] = e
  thread = threading.Thread(target=fetch, name='first-batch', daemon=True)
  thread.start()
  thread.join()  # a lock wait: a KeyboardInterrupt raised in it ends it
  if 'error' in out:
    raise out['error']
  return out['batch']


class StopVote:
  """Multi-host: every process must leave the loop at the same step. A signal reaches one
  host (a preempted VM, `kill` of one task) or reaches them at different steps; a process
  that checkpoints and exits while the others run the next step leaves every process hung
  in a collective. So each step every process's flag (a signal seen) is OR-ed over all
  devices, dispatched without waiting, and read at the next step: every process gets the
  same answer at the same step, and the host still runs one step ahead of the devices."""

  def __init__(self):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ('processes',))
    self._sharding = NamedSharding(mesh, P('processes'))
    self._any = jax.jit(lambda flags: flags.any(), out_shardings=NamedSharding(mesh, P()))
    self._pending = None

  def step(self, signalled: bool) -> bool:
    """Vote `signalled` for this step; True when some process had voted True by the
    previous step (the same answer on every process)."""
    import jax
    flags = np.full((jax.local_device_count(),), bool(signalled))
    vote = self._any(jax.make_array_from_process_local_data(self._sharding, flags))
    previous, self._pending = self._pending, vote
    return previous is not None and bool(previous)


class Progress:
  """Device metrics of the steps since the last sync, and what the host keeps of them."""

  def __init__(self, tokens_seen: int, last_saved: int, on_nonfinite: str = 'stop',
               max_consecutive_skips: int = 1, skipped_steps: int = 0,
               log_window: Optional[dict] = None):
    self.pending = []  # (step, device metrics)
    self.tokens_seen = tokens_seen
    self.last_saved = last_saved
    self.on_nonfinite = on_nonfinite
    self.max_consecutive_skips = max_consecutive_skips
    self.skipped_steps = skipped_steps
    self.consecutive_skips = 0
    self.first_loss = self.last_loss = None
    self.window = Window(log_window)  # the steps since the last log line

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))

  def _nonfinite(self, step: int, m) -> None:
    """Count a skipped step, or raise FloatingPointError if the run must stop here."""
    what = (f'non-finite loss ({float(m["loss"])}) or gradient norm '
            f'({float(m["grad_norm"])}) at step {step}')
    advice = 'Lower optimizer.learning_rate or enable optimizer.clip_grad_norm.'
    if self.on_nonfinite == 'stop':
      raise FloatingPointError(
          f'{what}; the update was not applied and no checkpoint was written after step '
          f'{self.last_saved} (train.on_nonfinite=stop). {advice}')
    self.skipped_steps += 1
    self.consecutive_skips += 1
    print(f'[t5x_lite] warning: {what}: skipped, the update not applied (train.on_nonfinite='
          f'skip; {self.skipped_steps} skipped in all). {advice}', file=sys.stderr, flush=True)
    if self.consecutive_skips >= self.max_consecutive_skips:
      raise FloatingPointError(
          f'{what}: {self.consecutive_skips} consecutive non-finite steps '
          f'(train.max_consecutive_skips={self.max_consecutive_skips}); no update of them was '
          f'applied and no checkpoint was written after step {self.last_saved}. {advice}')

  def sync(self) -> None:
    """Fetch the pending metrics; act on non-finite steps (see `_nonfinite`)."""
    import jax
    fetched = jax.device_get([m for _, m in self.pending])
    for (step, _), m in zip(self.pending, fetched):
      self.window.add(m)
      if not bool(m['finite']):
        self._nonfinite(step, m)
        continue
      self.consecutive_skips = 0
      self.tokens_seen += int(m['target_tokens'])
      if self.first_loss is None:
        self.first_loss = float(m['loss'])
      self.last_loss = float(m['loss'])
    self.pending.clear()

  def window_figures(self, close: bool = True) -> dict:
    """The log line's figures over the steps since the last periodic one (`Window`); `close`
    starts the next window."""
    self.sync()
    figures = self.window.figures()
    if close:
      self.window = Window()
    return figures

  def saved(self) -> dict:
    """The host-side counters a checkpoint keeps (after a `sync`)."""
    return {'tokens_seen': self.tokens_seen, 'skipped_steps': self.skipped_steps,
            'log_window': self.window.state()}


class Window:
  """The steps since the last log line, summed for its figures (memory does not grow with
  log_every): `loss`, `grad_norm` and the like averaged over the finite steps, the per-token
  figures (`PER_TOKEN`) over their target tokens, the tokens summed, the last step's learning
  rate. A window of only skipped steps shows its last step's (non-finite) figures.

  >>> w = Window()
  >>> w.add(dict(loss=4.0, accuracy=0.5, target_tokens=30, learning_rate=0.1, finite=True))
  >>> w.add(dict(loss=2.0, accuracy=0.1, target_tokens=10, learning_rate=0.2, finite=True))
  >>> w.add(dict(loss=float('nan'), accuracy=0.0, target_tokens=10, learning_rate=0.3,
  ...            finite=False))
  >>> w.figures()
  {'loss': 3.0, 'accuracy': 0.4, 'target_tokens': 40.0, 'learning_rate': 0.2}
  """
  PER_TOKEN = ('accuracy', 'loss_per_token', 'z_loss')

  def __init__(self, state: Optional[dict] = None):
    """`state`: a checkpoint's (`state()`): a run resumed mid-window logs what it would
    have logged uninterrupted."""
    state = state or {}
    self.steps, self.sums, self.last = (int(state.get('steps', 0)), dict(state.get('sums', {})),
                                        state.get('last'))

  def state(self) -> dict:
    return {'steps': self.steps, 'sums': self.sums, 'last': self.last}

  def add(self, m: dict) -> None:
    m = {k: float(v) for k, v in m.items() if k != 'finite'} | {'finite': bool(m['finite'])}
    if not m.pop('finite'):
      self.last = m if not self.steps else self.last
      return
    self.steps, self.last = self.steps + 1, m
    for k, v in m.items():
      self.sums[k] = v if k == 'learning_rate' else self.sums.get(k, 0.0) + (
          v * m['target_tokens'] if k in self.PER_TOKEN else v)

  def figures(self) -> dict:
    if not self.steps:
      return dict(self.last)
    tokens = self.sums['target_tokens']
    return {k: v if k in ('learning_rate', 'target_tokens') else
            v / tokens if k in self.PER_TOKEN and tokens else
            self.last[k] if k in self.PER_TOKEN else v / self.steps
            for k, v in self.sums.items()}


class Throughput:
  """Rows, tokens and FLOPs per second over the window since the last `reset`."""

  def __init__(self, config, num_devices: int, peak: float):
    self.batch_size = config.train.batch_size
    lengths = families.stream_lengths(config)
    self.tokens_per_row = lengths['encoder'] + lengths['decoder']
    self.train_flops_per_row = accounting.flops_per_token(config)['per_example']['train']
    self.num_devices, self.peak = num_devices, peak
    self.reset()

  def reset(self):
    self.start, self.steps = time.time(), 0

  def figures(self) -> dict:
    """Rates over the window; None (n/a) for a window of no timed step."""
    if not self.steps:
      return dict(tokens_per_sec=None, steps_per_sec=None, mfu=None)
    elapsed = max(time.time() - self.start, 1e-9)
    rows_per_sec = self.steps * self.batch_size / elapsed
    mfu = (self.train_flops_per_row * rows_per_sec / (self.num_devices * self.peak)
           if self.peak else None)
    return dict(tokens_per_sec=rows_per_sec * self.tokens_per_row,
                steps_per_sec=self.steps / elapsed, mfu=mfu)


def _log_line(step: int, total: int, record: dict) -> str:
  """The progress line; the ETA in hours:minutes:seconds, hours past 24 as they are.

  >>> _log_line(10, 1_000_010, dict(loss=2.5, accuracy=0.5, learning_rate=1e-2,
  ...                               tokens_per_sec=1000, mfu=None, steps_per_sec=5.0))[-12:]
  'ETA 55:33:20'
  >>> _log_line(1, 10, dict(loss=2.5, accuracy=0.5, learning_rate=1e-2,
  ...                       tokens_per_sec=None, mfu=None, steps_per_sec=None))[-27:]
  'n/a tok/s  MFU n/a  ETA n/a'
  """
  if record['steps_per_sec'] is None:  # the compiling step alone: no rate to give
    rate = eta = 'n/a'
  else:
    rate = f'{record["tokens_per_sec"]:,.0f}'
    s = round((total - step) / max(record['steps_per_sec'], 1e-9))
    eta = f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'
  mfu = 'n/a' if record['mfu'] is None else f"{100 * record['mfu']:.1f}%"
  return (f'step {step:>6}/{total}  loss {record["loss"]:.4f}  '
          f'acc {record["accuracy"]:.3f}  lr {record["learning_rate"]:.2e}  '
          f'{rate} tok/s  MFU {mfu}  ETA {eta}')


def _every(period: int, step: int) -> bool:
  return bool(period) and step % period == 0


def _say_what_the_resume_changes(config, ckpts, step: int) -> None:
  """The optimizer settings a resume changes against the checkpoint's config (the restored
  optimizer state goes on under the new ones); and, for a cosine schedule without
  decay_steps, which decays over train.steps, how another train.steps moves the rate."""
  import orbax.checkpoint as ocp
  try:
    saved = ckpts.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']
    saved_opt, before = dict(saved['optimizer']), int(saved['train']['steps'])
    if 'z_loss' not in saved_opt and 'z_loss' in saved['train']:  # train.z_loss until 2026-12-06
      saved_opt['z_loss'] = saved['train']['z_loss']
    saved_opt.setdefault('min_learning_rate', 0.0)  # the cosine's floor until 2026-12-07
  except Exception:  # noqa: BLE001 - only a notice: an old or odd checkpoint says nothing
    return
  o = config.optimizer
  plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (JSON lists)
  changed = [f'{k} {saved_opt[k]!r} -> {o[k]!r}' for k in sorted(saved_opt)
             if k in o and plain(saved_opt[k]) != plain(o[k])]
  if changed:
    print(f'[t5x_lite] resuming with optimizer settings other than the checkpoint\'s: '
          f'{", ".join(changed)}; the restored optimizer state goes on under the new ones.',
          flush=True)
  # What the loss is and where dropout applies (a config file's defaults can move too).
  # (train.seed: a resumed run's dropout masks are drawn from it)
  shaping = [('train', 'label_smoothing', None), ('train', 'loss_normalization', None),
             ('train', 'loss_normalization_constant', None), ('train', 'seed', None),
             ('model', 'dropout_rate', None), ('model', 'dropout_sites', 't5')]
  changed = [f'{s}.{k} {old!r} -> {config[s][k]!r}' for s, k, value_before_the_field in shaping
             for old in [saved.get(s, {}).get(k, value_before_the_field)]
             if old is not None and old != config[s][k]]
  if changed:
    print(f'[t5x_lite] resuming with training settings other than the checkpoint\'s: '
          f'{", ".join(changed)}.', flush=True)
  if o.schedule != 'cosine' or o.decay_steps:
    return
  # As optim.schedule builds it: the decay ends no earlier than one step past the warmup,
  # and both runs share the warmup, so the rates can only part after it.
  warmup = int(o.warmup_steps)
  old, new = max(before, warmup + 1), max(int(config.train.steps), warmup + 1)
  if old == new:
    return
  if step < old:
    effect = (f'so the learning rate changes from step {max(step, warmup)} on; set '
              f'optimizer.decay_steps={old} to keep it')
  else:  # the saved schedule is over: keeping it would train the new steps at its floor
    floor = o.min_learning_rate
    effect = (f'so the learning rate, {floor:g} since step {old}, rises again for the new '
              f'steps (optimizer.decay_steps={old} would keep it at {floor:g}'
              f'{"" if floor else ": no step would change the params"})')
  print(f'[t5x_lite] warning: the cosine schedule decays over train.steps (optimizer.'
        f'decay_steps=0): it was {before} steps, now {config.train.steps}, {effect}.',
        file=sys.stderr, flush=True)


def train(config, workdir: str, peak_flops: float = 0.0, num_predictions: int = 0):
  """Pretrain or fine-tune `config` in `workdir` (`python -m t5x_lite.train`, docs/cli.md)."""
  startup = StartupInterrupt()
  try:
    with contextlib.ExitStack() as held:
      return _train(config, workdir, peak_flops, num_predictions, startup, held)
  finally:
    startup.close()


def _train(config, workdir: str, peak_flops: float, num_predictions: int,
           startup: StartupInterrupt, held: contextlib.ExitStack):
  import jax
  from t5x_lite import optim, partitioning, trainer as trainer_lib, validation
  from t5x_lite.data import pipeline

  # ---- set up: everything that can fail on a bad config fails before compiling
  validation.validate_config(config, jax.device_count())
  unused = families.unused_layer_counts(config.model)
  if unused:
    print(f'[t5x_lite] note: {unused}', flush=True)
  optim.say_if_the_schedule_idles(config)
  optim.say_if_adafactor_decay_erases(config)
  optim.say_if_adamw_moments_unused(config)
  checkpoints.check_workdir(workdir, writes='its checkpoints and metrics',
                            subdirs=('checkpoints', 'tensorboard'),
                            files=('config.json', 'metrics.jsonl'))
  if jax.process_index() == 0:  # one job per workdir (its processes share it)
    held.enter_context(workdir_lock(workdir))
  checkpoints.check_init_from(config, workdir)  # a bad one fails before anything is built
  checkpoints.check_fresh_start(config, workdir)
  mesh = partitioning.create_mesh(config.partitioning)
  trainer = trainer_lib.Trainer(config, mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  # Each process feeds its block of rows of the global batch (`partitioning.global_batch`).
  rows = partitioning.split_batch(config.train, nproc, f'the process count {nproc}')
  train_iter = pipeline.get_dataset(config, 'train', shard_index=pid, num_shards=nproc,
                                    batch_size=rows)
  report_skips('train', train_iter.skips)
  validation_data = None  # built once, now: a broken validation source fails before compiling
  if config.train.eval_every:
    try:
      validation_data = pipeline.get_dataset(config, 'validation', shard_index=pid,
                                             num_shards=nproc)
    except ValueError as e:
      raise ValueError(f'config.data.validation_source: {e}') from None
    report_skips('validation', validation_data.skips)
    # Its iterators are released (and made again at each eval: `rewind`).
    evaluation.check_yields_a_batch(validation_data)
  ckpts = checkpoints.Checkpoints(os.path.join(workdir, 'checkpoints'), config.checkpoint.keep,
                                  config.checkpoint.async_save)

  # ---- restore: latest checkpoint in the workdir > config.init_from > fresh
  state, why = checkpoints.restore_or_init(config, trainer, ckpts, train_iter)
  start = int(jax.device_get(state.step))
  resumed = ckpts.latest_step() is not None
  saved = ckpts.progress(start) if resumed else {}
  progress = Progress(int(saved.get('tokens_seen', 0)), last_saved=start,
                      on_nonfinite=config.train.on_nonfinite,
                      max_consecutive_skips=config.train.max_consecutive_skips,
                      skipped_steps=int(saved.get('skipped_steps', 0)),
                      log_window=saved.get('log_window'))
  print(f'[t5x_lite] {why}.', flush=True)
  # A rerun that trains nothing changes nothing: no notes on the resume, the run's config.json
  # kept (it describes the checkpoints, not this rerun's lower train.steps).
  if start >= config.train.steps:
    print(f'[t5x_lite] the workdir is at step {start}, at or past config.train.steps='
          f'{config.train.steps}: nothing to train (raise train.steps to train on).', flush=True)
  elif resumed:
    _say_what_the_resume_changes(config, ckpts, start)
  config_dict = json.loads(config.to_json_best_effort())
  if pid == 0 and start < config.train.steps:  # atomic: a kill mid-write leaves the old file
    with open(os.path.join(workdir, 'config.json.tmp'), 'w') as f:
      json.dump(config_dict, f, indent=2)
    os.replace(os.path.join(workdir, 'config.json.tmp'), os.path.join(workdir, 'config.json'))
  metrics_log = evaluation.MetricsLog(workdir, start, enabled=pid == 0)
  device = jax.devices()[0]
  peak = accounting.peak_flops_per_device(device.device_kind, peak_flops)
  throughput = Throughput(config, jax.device_count(), peak)
  processes = f' in {nproc} processes (this one: {pid})' if nproc > 1 else ''  # shows a mislaunch
  print(f'[t5x_lite] mesh {dict(mesh.shape)} on {jax.device_count()} {device.platform} '
        f'device(s){processes}; {config.train.steps} steps of {config.train.batch_size} rows x '
        f'{throughput.tokens_per_row} tokens; MFU = 3 x forward matmul FLOPs (accounting.py) '
        f'/ peak{"" if peak else f" (peak unknown for {device.device_kind}: pass --peak_flops)"}.',
        flush=True)

  # ---- loop: step, log, eval, checkpoint, stop
  t = config.train
  # The first batch is start-up too: it can take minutes (shuffle buffers filling) and
  # nothing is trained before it, so a SIGTERM ends the process at once and a Ctrl-C stops
  # the wait (in the loop, a signal in tf.data's wait was taken when the batch came, and the
  # run then compiled, trained and saved a step).
  batches = itertools.chain([first_batch(train_iter)], train_iter) if start < t.steps else None
  dropout_rng = jax.random.PRNGKey(t.seed + 1)
  run_start = time.time()
  evals_reported = False
  step = start
  # Whether to stop at this step: this process's signal, or on several processes the vote of
  # them all, so that every process checkpoints the same step and leaves the loop together.
  vote = StopVote() if nproc > 1 else None
  stopping = False
  startup.close()
  with StopRequest(after=startup) as stop:
    try:
      while step < t.steps:
        ckpts.check_for_errors()  # a failed background save stops the run here
        state, metrics = trainer.train_step(state, trainer.shard_batch(next(batches)),
                                            dropout_rng)
        step += 1
        throughput.steps += 1
        progress.add(step, metrics)
        stopping = (bool(stop.signal) if vote is None else
                    vote.step(stop.signal is not None))
        is_last = step == t.steps
        record = {}  # one metrics.jsonl object per logged step (train and eval figures)
        first = step == start + 1  # compiled in this step: left out of the rates after it
        if first:
          jax.block_until_ready(metrics)
          print(f'[t5x_lite] step {step} (compiling the train step) took '
                f'{time.time() - run_start:.1f}s.', flush=True)
          throughput.reset()  # a window of this step alone has no rates: n/a
        evaluating = _every(t.eval_every, step) or (t.eval_every and is_last)
        # An eval step is also a log step: every metrics.jsonl object has the train figures.
        if _every(t.log_every, step) or is_last or stopping or evaluating:
          # The last step's or a stop's own line leaves its window open (the checkpoint keeps
          # it), so a longer or resumed run's next periodic line covers what it would have.
          periodic = _every(t.log_every, step) or _every(t.eval_every, step)
          record.update(progress.window_figures(close=periodic))
          record['tokens_seen'] = progress.tokens_seen
          record['skipped_steps'] = progress.skipped_steps
          record.update(throughput.figures())
          print(_log_line(step, t.steps, record), flush=True)
          throughput.reset()
        if evaluating:
          eval_start = time.time()
          ev = evaluation.evaluate(config, trainer, state.params, data=validation_data)
          if not evals_reported:  # every eval reads the same examples: said once
            report_skips('validation', validation_data.skips)
            evals_reported = True
          print(f'step {step:>6}  eval_loss {ev["eval_loss"]:.4f}  '
                f'eval_accuracy {ev["eval_accuracy"]:.3f}', flush=True)
          record.update(ev)
          throughput.start += time.time() - eval_start  # the eval's time is not step time
        if record:
          metrics_log.write(step, record)
        if _every(t.checkpoint_every, step) or is_last or stopping:
          progress.sync()  # never checkpoint past a non-finite step
          save_start = time.time()
          ckpts.save(step, state, train_iter, config_dict, progress.saved())
          throughput.start += time.time() - save_start  # nor is the save's (as the eval's)
          progress.last_saved = step
        if stopping:
          break
      ckpts.wait()  # the last save: CheckpointError if it failed
    except checkpoints.CheckpointError:
      ckpts.abandon()  # the error in flight says what failed; closing must not hide it
      raise
    except BaseException:
      ckpts.finish_after_error()  # steps before the error are kept
      raise
    ckpts.close()
  if stopping or (vote is None and stop.signal):
    print(f'[t5x_lite] {stop.signal or "a stop signal on another process"}: saved checkpoint '
          f'at step {step} in '
          f'{os.path.join(workdir, "checkpoints")}; rerun the same command to resume.', flush=True)
    return

  report_skips('train', train_iter.skips)  # again: counted as the streams read
  first, last = progress.first_loss, progress.last_loss
  resumed_at = f' (step {start + 1}: this run resumed)' if start else ''
  skipped = progress.skipped_steps - int(saved.get('skipped_steps', 0))
  losses = ('no step to train' if first is None else
            f'first loss {round(first, 4)}{resumed_at}, last loss {round(last, 4)}' +
            (f' ({skipped} non-finite steps skipped, their losses left out)' if skipped else ''))
  trained = step - start
  print(f'[t5x_lite] done: {trained} step{"s" if trained != 1 else ""} in '
        f'{time.time() - run_start:.0f}s; {losses}; '
        f'checkpoint step {step} in {os.path.join(workdir, "checkpoints")}.', flush=True)
  if pid == 0:
    from t5x_lite import loss_curve
    print(loss_curve.report(workdir), flush=True)
  decode = num_predictions > 0 and \
      families.get(config.model.family).generates == 'encoder_decoder'
  # Every process takes part: params split across hosts (FSDP) are gathered collectively.
  params = host_params(state.params) if decode else None
  if pid == 0 and decode:
    # One batch of validation examples drawn at random (seed 0, the same every run: the file
    # opens with a cast list): the score (exact match for text-to-text tasks, else span
    # accuracy) counts all of it, a few are printed.
    decoded = evaluation.decode_split(config, trainer.model, params,
                                      'validation', steps=1, sample_seed=0)
    if config.data.objective == 'text_to_text':
      from t5x_lite import metrics
      score = f'exact match {metrics.exact_match(decoded["targets"], decoded["predictions"]):.1f}%'
    else:
      score = f'span accuracy over them: {evaluation.span_accuracy(decoded)}'
    print(f'Predictions on validation examples (greedy; {len(decoded["targets"])} drawn at '
          f'random, seed 0); {score}')
    evaluation.print_predictions(decoded, num_predictions,
                                 text_to_text=config.data.objective == 'text_to_text')
