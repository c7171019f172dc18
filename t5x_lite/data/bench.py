"""`python -m t5x_lite.data.bench`: input-pipeline throughput beside a train step's appetite.

    python -m t5x_lite.data.bench [--seconds=10] [--batch_size=32] [--model_steps=3]

Times span corruption + packing (inputs 512 / targets 114, the shipped corpus, the
training split: shuffled, endless) and, on the same machine, a full train step of T5 v1.1
small (configs/t5_v1_1.py:small: loss, gradients, Adafactor update; `bench.measure_train_step`
on batches of the same shapes). Both
figures count token positions per second, `batch x (inputs_length + targets_length)`, so
the ratio says how many such train steps one pipeline keeps fed (the requirement is >= 5x).
The pipeline also reports real (non-padding) tokens/s. `--model_steps=0` skips the model.

`--corpus_gb=1 --corpus_files=8` instead streams a generated corpus of that size (the shipped
text, its documents reshuffled per file) from `--corpus_dir`, one virtual shard per file,
and also prints the seconds from `get_dataset` to the first batch and the peak RSS.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before anything imports TF
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work

import random
import resource
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_float('seconds', 10.0, 'How long to run the pipeline.')
  flags.DEFINE_integer('batch_size', 32, 'Pipeline rows per batch.')
  flags.DEFINE_integer('model_batch_size', 4, 'Rows per train step.')
  flags.DEFINE_integer('model_steps', 2, 'Timed train steps (0: skip the model).')
  flags.DEFINE_integer('inputs_length', 512, 'Encoder length.')
  flags.DEFINE_integer('targets_length', 114, 'Decoder length.')
  flags.DEFINE_float('corpus_gb', 0.0, 'Generate and stream a corpus of this size (0: shipped).')
  flags.DEFINE_integer('corpus_files', 8, 'Files of the generated corpus (= virtual shards).')
  flags.DEFINE_string('corpus_dir', '/tmp/t5x_lite_bench_corpus', 'Where to write it.')


def generate_corpus(directory: str, gigabytes: float, files: int) -> str:
  """Writes `files` text files totalling `gigabytes` (kept if already there); returns a glob."""
  from t5x_lite.data import vocab as vocab_lib
  os.makedirs(directory, exist_ok=True)
  per_file = int(gigabytes * 2**30 / files)
  with open(vocab_lib.resolve_path('data/corpus/train.txt'), encoding='utf-8') as f:
    docs = [d.encode() for d in f.read().split('\n\n') if d.strip()]
  for i in range(files):
    path = os.path.join(directory, f'part-{i:03d}.txt')
    if os.path.exists(path) and os.path.getsize(path) >= per_file:
      continue
    rng, written = random.Random(i), 0
    with open(path, 'wb') as f:
      while written < per_file:
        rng.shuffle(docs)
        chunk = b'\n\n'.join(docs) + b'\n\n'
        f.write(chunk)
        written += len(chunk)
  return os.path.join(directory, '*.txt')


def pipeline_throughput(config, seconds: float, batch_size: int):
  """(positions/s, real tokens/s, one batch) of get_dataset(config, 'train')."""
  from t5x_lite.data import pipeline
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
    real += int((b['encoder_input_tokens'] != 0).sum() + (b['decoder_target_tokens'] != 0).sum())
  dt = time.perf_counter() - t0
  width = first['encoder_input_tokens'].shape[1] + first['decoder_target_tokens'].shape[1]
  return n * batch_size * width / dt, real / dt, first


def run(seconds: float = 10.0, batch_size: int = 32, model_batch_size: int = 4,
        model_steps: int = 2, inputs_length: int = 512, targets_length: int = 114,
        print_fn=print, corpus_gb: float = 0.0, corpus_files: int = 8,
        corpus_dir: str = '/tmp/t5x_lite_bench_corpus') -> dict:
  """Runs the benchmark, prints its lines and returns the figures."""
  from configs import base
  cfg = base.get_base_config()
  cfg.model.vocab_size = 32128
  cfg.data.update(dict(objective='span_corruption', inputs_length=inputs_length,
                       targets_length=targets_length, pack=True))
  corpus = 'shipped corpus'
  if corpus_gb > 0:
    t0 = time.perf_counter()
    cfg.data.train_source = 'text:' + generate_corpus(corpus_dir, corpus_gb, corpus_files)
    cfg.data.num_virtual_shards = corpus_files
    corpus = f'{corpus_gb:g} GB in {corpus_files} files, {corpus_files} streams'
    print_fn(f'corpus: {cfg.data.train_source[5:]} ready in {time.perf_counter() - t0:.1f} s')
  pos, real, batch = pipeline_throughput(cfg, seconds, batch_size)
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
  out = dict(pipeline_positions_per_s=pos, pipeline_tokens_per_s=real,
             first_batch_s=pipeline_throughput.first_batch_s, peak_rss_gb=rss_gb)
  print_fn(f'first batch: {out["first_batch_s"]:.1f} s after get_dataset; peak RSS {rss_gb:.2f} GB')
  print_fn(f'pipeline: span corruption + packing, inputs {inputs_length} / targets {targets_length}, '
           f'{corpus}: {pos:,.0f} token positions/s ({real:,.0f} non-padding tokens/s)')
  if model_steps <= 0:
    return out
  import jax
  from configs import t5_v1_1
  from t5x_lite import bench
  small = t5_v1_1.get_config('small')
  small.data.update(dict(inputs_length=inputs_length, targets_length=targets_length))
  small.train.batch_size = model_batch_size
  measured = bench.measure_train_step(small, model_steps)  # full step: loss, grads, Adafactor
  step_pos, dt = measured['tokens_per_sec'], measured['step_time']
  print_fn(f'train step: T5 v1.1 small (loss, gradients, Adafactor update), batch {model_batch_size} x '
           f'({inputs_length}+{targets_length}) on {jax.devices()[0].platform}: {dt:.2f} s/step, '
           f'{step_pos:,.0f} token positions/s')
  ratio = pos / step_pos
  print_fn(f'ratio: pipeline / train step = {ratio:,.1f}x '
           f'({"OK" if ratio >= 5 else "BELOW"} the 5x requirement)')
  out.update(train_step_positions_per_s=step_pos, ratio=ratio)
  return out


def main(argv):
  del argv
  run(FLAGS.seconds, FLAGS.batch_size, FLAGS.model_batch_size, FLAGS.model_steps,
      FLAGS.inputs_length, FLAGS.targets_length, corpus_gb=FLAGS.corpus_gb,
      corpus_files=FLAGS.corpus_files, corpus_dir=FLAGS.corpus_dir)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
