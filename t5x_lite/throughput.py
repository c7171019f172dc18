"""Throughput measurements: a train step's time and tokens/s, the input pipeline's tokens/s,
this machine's float32 matmul peak, decode tokens/s, and paired (alternating) timings.

Used by `python -m t5x_lite.bench` (train step on synthetic batches of the configured shapes,
`families.synthetic_batch`) and `python -m t5x_lite.data.bench` (span corruption + packing
beside a T5 v1.1 small train step, and their ratio). Token positions per row and FLOPs come
from `families.stream_lengths` and `accounting.flops_per_token`, as in training's log.
"""
import math
import resource
import statistics
import time

from t5x_lite import accounting
from t5x_lite import families
from t5x_lite import models


def measure_train_step(config, steps: int = 5) -> dict:
  """Seconds per step (the mean, and the fastest of `steps`), tokens/s, examples/s, FLOP/s.

  Each step is timed to its end (`block_until_ready`), so the fastest step is known too: on a
  shared machine it is the estimate least disturbed by other work, the same estimator as
  `matmul_peak`'s best of n. Rates (tokens/s, FLOP/s) are from the mean.
  """
  import jax
  step = train_step_runner(config)
  step()  # compile + warm-up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  step_time = sum(times) / steps
  flops = accounting.flops_per_token(config)
  tokens_per_row = flops['lengths']['encoder'] + flops['lengths']['decoder']
  examples_per_sec = config.train.batch_size / step_time
  return dict(step_time=step_time, fastest_step_time=min(times), step_times=times,
              examples_per_sec=examples_per_sec,
              tokens_per_sec=examples_per_sec * tokens_per_row,
              flops_per_sec=flops['per_example']['train'] * examples_per_sec,
              devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
              formula=flops['formula'])


def train_step_runner(config):
  """A function that runs one train step of `config` on a synthetic batch and waits for it
  (the state carried from call to call, as in training). The first call compiles."""
  import jax
  from t5x_lite import partitioning, trainer as trainer_lib
  trainer = trainer_lib.Trainer(config, partitioning.create_mesh(config.partitioning))
  carried = {'state': trainer.init_state(config.train.seed)}
  batch = trainer.shard_batch(families.synthetic_batch(config, config.train.batch_size))
  rng = jax.random.PRNGKey(0)

  def step():
    carried['state'], metrics = trainer.train_step(carried['state'], batch, rng)
    jax.block_until_ready(metrics)
  return step


def matmul_peak(n: int = 1024, repeats: int = 10, dtype: str = 'float32') -> float:
  """FLOP/s of the best of `repeats` jitted [n, n] x [n, n] matmuls (2 n^3 FLOPs each) in
  `dtype` on the default device: the peak MFU is measured against where no peak is given
  (float32, n=1024); on an accelerator `bench` also prints a bfloat16 n=8192 one beside the
  datasheet's. On CPU, the best over both dot emitters (`cli.CPU_DOT_EMITTERS`), so choosing
  one cannot raise MFU by lowering the peak."""
  return 2 * n ** 3 / min(_best_times(_peak_matmuls(n, dtype), repeats))


def _peak_matmuls(n: int, dtype: str = 'float32') -> list:
  """[(compiled [n, n] x [n, n] matmul, its arguments)], one per CPU dot emitter."""
  import jax
  from t5x_lite import cli
  # Random, not zeros: some accelerators multiply zeros measurably faster.
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  lowered = jax.jit(lambda x, y: x @ y).lower(a, a)
  options = [{}]
  if jax.default_backend() == 'cpu':
    options = [{cli.CPU_DOT_OPTION: v} for v in cli.CPU_DOT_EMITTERS.values()]
  return [(lowered.compile(compiler_options=o), (a, a)) for o in options]


def _best_times(calls, repeats: int) -> list:
  """Best of `repeats` seconds of each (f, args), called in turn each round (after one
  untimed call each), so that a slow spell on a shared machine hits all of them alike."""
  import jax
  for f, args in calls:
    jax.block_until_ready(f(*args))
  best = [float('inf')] * len(calls)
  for _ in range(repeats):
    for i, (f, args) in enumerate(calls):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      best[i] = min(best[i], time.perf_counter() - t0)
  return best


def matmul_rates(config, repeats: int = 10, peak_n: int = 1024) -> list:
  """Every matmul of the config's forward pass, each distinct shape timed alone (jitted,
  float32, best of `repeats`): where MFU is lost. Rows: {name, shape, count, flops,
  flops_per_sec, peak_flops_per_sec}; `flops` is one instance's 2 x (multiply-adds), `count`
  how many instances one forward pass runs, so sum(count * flops) is `accounting.FORMULA`'s
  forward FLOPs for the whole batch. `peak_flops_per_sec`: `matmul_peak`'s [peak_n, peak_n]
  matmuls timed in alternation with the row's (a slow spell hits both), for the caller's peak.
  Dense rows come from the parameter tree (each kernel over its stream's tokens,
  `accounting.stream_of`; an attention output kernel contracts its heads x d_kv input);
  attention rows are QK^T and AV per attention layer, as the model writes them; the logits
  row uses the logits kernel or, tied, the token embedding."""
  import jax
  import jax.numpy as jnp
  mcfg = models.ModelConfig.from_config(config.model)
  lengths, b = families.stream_lengths(config), config.train.batch_size
  family = families.get(mcfg.family)
  tokens = {'encoder': b * lengths['encoder'], 'decoder': b * lengths['decoder'],
            'logits': b * lengths['target']}
  groups = {}  # (kind, shapes) -> [name, shape text, count, flops, fn]

  def add(key, label, shape, flops, fn):
    row = groups.setdefault(key, [[], shape, 0, flops, fn])
    row[2] += 1
    if label not in row[0]:
      row[0].append(label)

  for path, shape in accounting.kernel_shapes(config):
    contracted = 2 if path[-2] == 'out' and 'attention' in path[-3] else 1
    k, n = math.prod(shape[:contracted]), math.prod(shape[contracted:])
    t = tokens[accounting.stream_of(path)]
    label = '/'.join(p for p in path[:-1] if not p.startswith('layers_'))
    add(('dense', (t, k), (k, n)), label, f'[{t}, {k}] x [{k}, {n}]', 2 * t * k * n,
        lambda x, w: x @ w)
  if mcfg.tie_embeddings:
    t, v, d = tokens['logits'], mcfg.vocab_size, mcfg.d_model
    add(('tied', (t, d), (v, d)), 'logits through token_embedder (tied)',
        f'[{t}, {d}] x [{v}, {d}]^T', 2 * t * d * v,
        lambda x, e: jnp.einsum('td,vd->tv', x, e))
  h, dk = mcfg.num_heads, mcfg.d_kv
  attention = []
  if family.has_encoder:
    attention += [('encoder self-attention', lengths['encoder'], lengths['encoder'])] * \
        mcfg.num_encoder_layers
  if family.has_decoder:
    attention += [('decoder self-attention', lengths['decoder'], lengths['decoder'])] * \
        mcfg.num_decoder_layers
    if family.has_encoder:
      attention += [('decoder cross-attention', lengths['decoder'], lengths['encoder'])] * \
          mcfg.num_decoder_layers
  for label, q, kv in attention:
    flops = 2 * b * h * q * kv * dk
    add(('qk', (b, q, h, dk), (b, kv, h, dk)), f'{label} QK^T',
        f'[{b}, {q}, {h}, {dk}] x [{b}, {kv}, {h}, {dk}]', flops,
        lambda x, y: jnp.einsum('bqhd,bkhd->bhqk', x, y))
    add(('av', (b, h, q, kv), (b, h, kv, dk)), f'{label} AV',
        f'[{b}, {h}, {q}, {kv}] x [{b}, {h}, {kv}, {dk}]', flops,
        lambda x, y: jnp.einsum('bhqk,bhkd->bhqd', x, y))
  peak_calls, out = _peak_matmuls(peak_n), []
  for i, (key, (names, shape, count, flops, fn)) in enumerate(groups.items()):
    args = [jax.random.normal(k, s, jnp.float32)
            for k, s in zip(jax.random.split(jax.random.PRNGKey(i), 2), key[1:])]
    seconds, *peak_seconds = _best_times([(jax.jit(fn), args)] + peak_calls, repeats)
    out.append(dict(name=', '.join(names), shape=shape, count=count, flops=flops,
                    flops_per_sec=flops / seconds,
                    peak_flops_per_sec=2 * peak_n ** 3 / min(peak_seconds)))
  return out


def matmul_ceiling(rows: list, peak: float) -> dict:
  """What the step's matmuls alone would cost at the rates `matmul_rates` measured.

  forward_s = sum(count * flops / rate); the train step's matmuls take ~3 x that (the
  backward's dots assumed at their forward shapes' rates). ceiling_mfu = forward FLOPs /
  forward_s / peak: the MFU of a step whose every other op (norms, softmax, activations,
  loss, optimizer) took no time at all.
  """
  flops = sum(r['count'] * r['flops'] for r in rows)
  forward_s = sum(r['count'] * r['flops'] / r['flops_per_sec'] for r in rows)
  return dict(forward_flops=flops, forward_s=forward_s, train_s=3 * forward_s,
              ceiling_mfu=flops / forward_s / peak)


def paired_medians(fns: dict, rounds: int) -> dict:
  """{name: median seconds} of each no-argument callable, called once each in turn per round
  after one untimed (compiling) call, so load changes hit every entry alike."""
  import jax
  for f in fns.values():
    jax.block_until_ready(f())
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def stream_token_features(family_name: str) -> list:
  """The features holding the tokens each stack of the family reads: the encoder's inputs,
  the decoder's targets (its inputs are the same positions, shifted). Their widths add up to
  `families.stream_lengths`' encoder + decoder, the positions tokens/s counts."""
  family = families.get(family_name)
  return ((['encoder_input_tokens'] if family.has_encoder else []) +
          (['decoder_target_tokens'] if family.has_decoder else []))


def pipeline_throughput(config, seconds: float, batch_size: int):
  """(positions/s, real tokens/s, one batch) of get_dataset(config, 'train'): positions are
  every token position of the features each stack reads (`stream_token_features`), real
  tokens the non-padding (non-zero) ones among them."""
  from t5x_lite.data import pipeline
  keys = stream_token_features(config.model.family)
  t0 = time.perf_counter()
  it = pipeline.get_dataset(config, 'train', batch_size=batch_size)
  first = next(it)  # build, trace and fill buffers before timing
  pipeline_throughput.first_batch_s = time.perf_counter() - t0
  for _ in range(3):
    next(it)
  n = real = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    n += 1
    real += sum(int((b[k] != 0).sum()) for k in keys)
  dt = time.perf_counter() - t0
  width = sum(first[k].shape[1] for k in keys)
  return n * batch_size * width / dt, real / dt, first


def pipeline_vs_train_step(seconds: float = 10.0, batch_size: int = 32, model_batch_size: int = 4,
        model_steps: int = 2, inputs_length: int = 512, targets_length: int = 114,
        print_fn=print, train_source: str = '', num_virtual_shards: int = 0) -> dict:
  """Runs the benchmark, prints its lines and returns the figures. `train_source` (with its
  `num_virtual_shards`) replaces the shipped corpus; then the seconds from get_dataset to
  the first batch and the peak RSS after the pipeline ran are printed too."""
  from configs import base
  cfg = base.get_base_config()
  cfg.model.vocab_size = 32128
  cfg.data.update(dict(objective='span_corruption', inputs_length=inputs_length,
                       targets_length=targets_length, pack=True))
  corpus = 'shipped corpus'
  if train_source:
    cfg.data.train_source = train_source
    cfg.data.num_virtual_shards = num_virtual_shards or cfg.data.num_virtual_shards
    corpus = f'{train_source}, {cfg.data.num_virtual_shards} streams'
  pos, real, batch = pipeline_throughput(cfg, seconds, batch_size)
  out = dict(pipeline_positions_per_s=pos, pipeline_tokens_per_s=real,
             first_batch_s=pipeline_throughput.first_batch_s,
             peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB on Linux
  if train_source:
    print_fn(f'first batch: {out["first_batch_s"]:.1f} s after get_dataset (target <= 20 s); '
             f'peak RSS so far {out["peak_rss_gb"]:.2f} GB (target <= 2.5 GB)')
  print_fn(f'pipeline: span corruption + packing, inputs {inputs_length} / targets {targets_length}, '
           f'{corpus}: {pos:,.0f} token positions/s ({real:,.0f} non-padding tokens/s)')
  if model_steps <= 0:
    return out
  import jax
  from configs import t5_v1_1
  small = t5_v1_1.get_config('small')
  small.data.update(dict(inputs_length=inputs_length, targets_length=targets_length))
  small.train.batch_size = model_batch_size
  measured = measure_train_step(small, model_steps)  # full step: loss, grads, Adafactor
  step_pos, dt = measured['tokens_per_sec'], measured['step_time']
  print_fn(f'train step: T5 v1.1 small (loss, gradients, Adafactor update), batch {model_batch_size} x '
           f'({inputs_length}+{targets_length}) on {jax.devices()[0].platform}: {dt:.2f} s/step, '
           f'{step_pos:,.0f} token positions/s')
  ratio = pos / step_pos
  print_fn(f'ratio: pipeline / train step = {ratio:,.1f}x '
           f'({"OK" if ratio >= 5 else "BELOW"} the 5x requirement)')
  out.update(train_step_positions_per_s=step_pos, ratio=ratio)
  return out
