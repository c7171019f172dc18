"""get_dataset: shapes, determinism, sharding, save/restore across processes, validation."""
import collections
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from data_helpers import ROOT, blank_line_documents, data_config, segments


from t5x_lite.data import pipeline, sources, vocab as vocab_lib  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_shapes_and_dtypes_are_fixed():
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29)
  it = pipeline.get_dataset(cfg, 'train')
  want = {'encoder_input_tokens': (4, 128), 'encoder_segment_ids': (4, 128), 'encoder_positions': (4, 128),
          'decoder_target_tokens': (4, 29), 'decoder_input_tokens': (4, 29),
          'decoder_loss_weights': (4, 29), 'decoder_segment_ids': (4, 29), 'decoder_positions': (4, 29)}
  assert it.shapes == want
  for b in _take(it, 3):
    assert {k: v.shape for k, v in b.items()} == want
    assert all(v.dtype == np.int32 for v in b.values())


def test_same_seed_same_batches_different_seed_different():
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29)
  a = _take(pipeline.get_dataset(cfg, 'train', seed=3), 4)
  b = _take(pipeline.get_dataset(cfg, 'train', seed=3), 4)
  c = _take(pipeline.get_dataset(cfg, 'train', seed=4), 4)
  assert _equal(a, b)
  assert not np.array_equal(a[0]['encoder_input_tokens'], c[0]['encoder_input_tokens'])
  # The config seed is the default.
  cfg.data.seed = 3
  assert _equal(a, _take(pipeline.get_dataset(cfg, 'train'), 4))


def _examples(it):
  """All examples of a finite iterator, as (inputs, targets) tuples, padding rows dropped."""
  out = []
  for b in it:
    for i, si, t, st in zip(b['encoder_input_tokens'], b['encoder_segment_ids'],
                            b['decoder_target_tokens'], b['decoder_segment_ids']):
      out.extend((tuple(x), tuple(y)) for x, y in zip(segments(i, si), segments(t, st)))
  return out


def test_validation_shards_are_disjoint_and_cover_the_data():
  cfg = data_config(objective='text_to_text', inputs_length=64, targets_length=8,
                    validation_source='jsonl:data/tasks/speaker/validation.jsonl',
                    num_virtual_shards=3)
  cfg.train.batch_size = 30
  full = collections.Counter(_examples(pipeline.get_dataset(cfg, 'validation', batch_size=30)))
  n = sum(1 for line in open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) if line.strip())
  assert sum(full.values()) == n > 900                         # every record of the file
  parts = [collections.Counter(_examples(pipeline.get_dataset(cfg, 'validation', shard_index=k, num_shards=3,
                                                              batch_size=32)))
           for k in range(3)]
  assert sum(parts, collections.Counter()) == full
  assert all(abs(sum(p.values()) - n / 3) <= 1 for p in parts)


def _documents(spec, stream, num_streams):
  vocab = vocab_lib.Vocabulary(os.path.join(ROOT, 'data/vocab/shakespeare_1k.model'))
  src = sources.parse_sources(spec)[0]
  ds = sources.token_dataset(src, vocab, ('text',), split='validation', train=False, seed=0,
                             stream=stream, num_streams=num_streams)
  return collections.Counter(tuple(x[0]) for x in ds.as_numpy_iterator())


@pytest.mark.parametrize('files', [1, 5])
def test_virtual_shards_read_disjoint_documents_covering_the_corpus(tmp_path, files):
  """One big file (documents dealt within it) or more files than streams (whole files):
  the streams' documents never overlap and together are every document of the corpus."""
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))[:600]
  for i in range(files):
    (tmp_path / f'part-{i}.txt').write_text('\n\n'.join(docs[i::files]) + '\n')
  vocab = vocab_lib.Vocabulary(os.path.join(ROOT, 'data/vocab/shakespeare_1k.model'))
  want = collections.Counter(tuple(vocab.encode(d)) for d in docs)   # the Python tokenizer
  parts = [_documents(f'text:{tmp_path}/*.txt', v, 3) for v in range(3)]
  assert sum(parts, collections.Counter()) == want
  assert all(sum(p.values()) > 100 for p in parts)


def test_global_batches_are_the_same_for_any_process_count():
  cfg = data_config(objective='span_corruption', inputs_length=64, targets_length=16,
                    num_virtual_shards=4)
  cfg.train.batch_size = 8
  one = _take(pipeline.get_dataset(cfg, 'train'), 3)
  for procs in (2, 4):
    hosts = [_take(pipeline.get_dataset(cfg, 'train', shard_index=p, num_shards=procs), 3)
             for p in range(procs)]
    for step in range(3):
      for k, v in one[step].items():
        np.testing.assert_array_equal(np.concatenate([h[step][k] for h in hosts]), v)


def test_state_saved_by_two_processes_resumes_on_one(tmp_path):
  cfg = data_config(objective='span_corruption', inputs_length=64, targets_length=16,
                    num_virtual_shards=4)
  cfg.train.batch_size = 8
  hosts = [pipeline.get_dataset(cfg, 'train', shard_index=p, num_shards=2) for p in range(2)]
  for h in hosts:
    _take(h, 2)
    h.save(str(tmp_path))                       # both write into the one data/ directory
  after = [np.concatenate(x) for x in zip(*[[b['encoder_input_tokens'] for b in _take(h, 2)]
                                            for h in hosts])]
  single = pipeline.get_dataset(cfg, 'train')
  single.restore(str(tmp_path))
  for want in after:
    np.testing.assert_array_equal(next(single)['encoder_input_tokens'], want)
  fresh = next(pipeline.get_dataset(cfg, 'train'))['encoder_input_tokens']
  assert not np.array_equal(fresh, after[0])


def test_save_after_k_batches_restore_in_a_new_process(tmp_path):
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29,
                    train_source='text:data/corpus/validation.txt;rate=3,'
                                 'text:data/corpus/validation.txt;boundary=line;rate=1')
  it = pipeline.get_dataset(cfg, 'train', seed=11, shard_index=1, num_shards=2, batch_size=4)
  _take(it, 5)
  step_dir = tmp_path / 'checkpoints' / '5'            # as if inside an Orbax step directory
  (step_dir / 'state').mkdir(parents=True)
  (step_dir / '_CHECKPOINT_METADATA').write_text('{}')
  it.save(str(step_dir / 'data'))
  out = tmp_path / 'restored.npz'
  script = textwrap.dedent(f'''
      import sys, numpy as np
      sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      from data_helpers import data_config
      from t5x_lite.data import pipeline
      cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29,
                        train_source={cfg.data.train_source!r})
      it = pipeline.get_dataset(cfg, 'train', seed=11, shard_index=1, num_shards=2, batch_size=4)
      it.restore({str(step_dir / 'data')!r})
      np.savez({str(out)!r}, **{{f'{{i}}/{{k}}': v for i in range(4) for k, v in next(it).items()}})
  ''')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  child = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, env=env)
  expected = _take(it, 4)              # meanwhile, the batches that follow the save here
  assert child.wait(timeout=180) == 0
  got = np.load(out)
  for i, b in enumerate(expected):
    for k, v in b.items():
      np.testing.assert_array_equal(got[f'{i}/{k}'], v)
  # A fresh iterator without the restore yields something else (the test is not vacuous).
  fresh = next(pipeline.get_dataset(cfg, 'train', seed=11, shard_index=1, num_shards=2, batch_size=4))
  assert not np.array_equal(fresh['encoder_input_tokens'], expected[0]['encoder_input_tokens'])


def test_restore_mid_validation_pass_and_mismatch_errors(tmp_path):
  cfg = data_config(objective='prefix_lm', inputs_length=32, targets_length=32)
  it = pipeline.get_dataset(cfg, 'validation', batch_size=64)
  _take(it, 3)
  it.save(str(tmp_path))
  rest = list(it)                      # to the end of the finite pass
  it2 = pipeline.get_dataset(cfg, 'validation', batch_size=64)
  it2.restore(str(tmp_path))
  assert _equal(rest, list(it2)) and len(rest) > 5
  with pytest.raises(DataError, match='saved with seed 0'):
    pipeline.get_dataset(cfg, 'validation', batch_size=64, seed=1).restore(str(tmp_path))
  cfg.data.num_virtual_shards = 2
  with pytest.raises(DataError, match='has 4 streams; this config has data.num_virtual_shards=2'):
    pipeline.get_dataset(cfg, 'validation', batch_size=64).restore(str(tmp_path))
  (tmp_path / 'old' / 'process_0').mkdir(parents=True)         # the pre-virtual-shard layout
  with pytest.raises(DataError, match=r'older per-process layout \(process_0\)'):
    pipeline.get_dataset(cfg, 'validation', batch_size=64).restore(str(tmp_path / 'old'))


def test_validation_is_one_finite_pass_with_a_padded_last_batch():
  cfg = data_config(objective='text_to_text', inputs_length=64, targets_length=8,
                    validation_source='jsonl:data/tasks/speaker/validation.jsonl', pack=False)
  batches = list(pipeline.get_dataset(cfg, 'validation', batch_size=100))
  n = sum(1 for line in open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) if line.strip())
  # Every example once; each stream pads its own block of rows once it has ended, so the
  # padding (all-zero rows) sits in each stream's block of the last batches.
  real = [b['decoder_loss_weights'].sum(1) > 0 for b in batches]
  assert sum(int(x.sum()) for x in real) == n and len(batches) >= (n + 99) // 100
  assert all(b['encoder_input_tokens'].shape == (100, 64) for b in batches)
  assert all((b['encoder_input_tokens'][~x] == 0).all() for b, x in zip(batches, real))
  cfg.data.eval_repeat = True
  it = pipeline.get_dataset(cfg, 'validation', batch_size=100)
  assert len(_take(it, 20)) == 20


def test_the_train_split_in_order_is_one_unshuffled_pass():
  """eval decodes --split=train from `in_order`: the train file's examples in file order,
  each once (the train split alone is shuffled and endless)."""
  path = os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')
  cfg = data_config(objective='text_to_text', inputs_length=64, targets_length=8, pack=False,
                    train_source=f'jsonl:{path}', num_virtual_shards=1)
  want = [json.loads(line)['inputs'] for line in open(path) if line.strip()]
  it = pipeline.get_dataset(cfg, 'train', batch_size=100, keep_text=True, in_order=True)
  batches = list(itertools.islice(it, len(want) // 100 + 2))  # (an endless one stops too)
  got = [t.decode() for b in batches for t, w in zip(b['inputs_pretokenized'],
                                                        b['decoder_loss_weights'].sum(1)) if w > 0]
  assert got == want
  shuffled = pipeline.get_dataset(cfg, 'train', batch_size=100, keep_text=True)
  first = [t.decode() for t in next(shuffled)['inputs_pretokenized']]
  assert first != want[:100] and set(first) <= set(want)


@pytest.mark.parametrize('objective', ['span_corruption', 'text_to_text'])
def test_a_rewound_validation_pass_repeats_a_fresh_one(objective):
  """Training evaluates by rewinding the validation iterator it built at start-up: the pass
  after a rewind, from mid-pass or from the end, equals a newly built pipeline's."""
  source = ('jsonl:data/tasks/speaker/validation.jsonl' if objective == 'text_to_text' else
            'text:data/corpus/validation.txt')
  cfg = data_config(objective=objective, inputs_length=64, targets_length=16,
                    validation_source=source, pack=objective != 'text_to_text')
  fresh = list(pipeline.get_dataset(cfg, 'validation', batch_size=16))
  it = pipeline.get_dataset(cfg, 'validation', batch_size=16)
  _take(it, 3)
  again = list(it.rewind())
  assert len(again) == len(fresh) > 3 and _equal(again, fresh)
  assert _equal(list(it.rewind()), fresh)  # from the end of a pass


def test_every_stream_feeds_an_equal_block_or_the_config_is_refused():
  """A batch of fewer rows than streams would leave some streams' part of the corpus
  unread; an uneven split would read some parts faster: both are config errors."""
  cfg = data_config(objective='text_to_text', inputs_length=64, targets_length=8,
                    validation_source='jsonl:data/tasks/speaker/validation.jsonl', pack=False)
  for rows in (2, 6):
    cfg.train.batch_size = 8
    with pytest.raises(DataError, match=f'config.train.batch_size={rows} is not a multiple of '
                                        'data.num_virtual_shards=4'):
      pipeline.get_dataset(cfg, 'validation', batch_size=rows)
    cfg.train.batch_size = rows
    with pytest.raises(DataError, match=f'batch_size={rows} is not a multiple'):
      pipeline.validate(cfg)
  cfg.train.batch_size = 8
  n = sum(1 for line in open(os.path.join(ROOT, 'data/tasks/speaker/validation.jsonl')) if line.strip())
  it = pipeline.get_dataset(cfg, 'validation', batch_size=8)
  assert sum(int((b['decoder_loss_weights'].sum(1) > 0).sum()) for b in it) == n


def test_batch_size_defaults_to_global_over_shards_and_vocab_conflicts():
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29)
  cfg.train.batch_size = 8
  assert pipeline.get_dataset(cfg, 'train', num_shards=2).shapes['encoder_input_tokens'] == (4, 128)
  with pytest.raises(DataError, match='data.num_virtual_shards=4 is not divisible by the process count 8'):
    pipeline.get_dataset(cfg, 'train', num_shards=8)
  with pytest.raises(ValueError, match='train.batch_size=8 is not divisible by num_shards=3'):
    pipeline.get_dataset(cfg, 'train', num_shards=3)
  cfg.model.vocab_size = 1000
  with pytest.raises(DataError, match=r'model.vocab_size=1000 is smaller than the vocabulary size 1100 '
                                      r'of data.vocab=.*\(1000 pieces \+ data.extra_ids=100\)'):
    pipeline.get_dataset(cfg, 'train')
  cfg.model.vocab_size = 1152
  cfg.data.extra_ids = 5       # 128 inputs -> raw chunks of 141 with up to 7 noise spans
  with pytest.raises(DataError, match='more than the 5 sentinels of data.extra_ids'):
    pipeline.get_dataset(cfg, 'train')
  cfg.data.extra_ids = 100
  cfg.model.family = 'encoder'
  with pytest.raises(DataError, match="data.objective='span_corruption' does not fit config.model.family='encoder'"):
    pipeline.get_dataset(cfg, 'train')


def test_skip_counts_are_saved_with_the_position_and_resume_on_any_process_count(tmp_path):
  """A stream's skipped-input counts travel with its saved position: a pass interrupted,
  saved and resumed (by one process or by two) reports every bad line of the files once,
  exactly what the test counts in them itself and what an uninterrupted pass reports."""
  bad = collections.Counter()
  for f in range(4):
    lines = []
    for n in range(700):  # several 256-line reads per file, beyond the read-ahead
      if n % 7 == 2:
        lines.append('{"inputs": "cut'); bad['invalid JSON'] += 1
      elif n % 11 == 5:
        lines.append(json.dumps({'inputs': f'file {f} line {n}'})); bad["missing field 'targets'"] += 1
      else:
        lines.append(json.dumps({'inputs': f'file {f} line {n} to be', 'targets': f'or not {n}'}))
    (tmp_path / f'part-{f}.jsonl').write_text('\n'.join(lines) + '\n')
  cfg = data_config(objective='text_to_text', inputs_length=16, targets_length=8, pack=False,
                    validation_source=f'jsonl:{tmp_path}/part-*.jsonl', num_virtual_shards=4)
  cfg.train.batch_size = 32

  whole = pipeline.get_dataset(cfg, 'validation')
  list(whole)
  assert whole.skips.counts == bad                 # the files' own count, one pass

  first = pipeline.get_dataset(cfg, 'validation')
  _take(first, 2)
  first.save(str(tmp_path / 'state'))
  saved = sum((collections.Counter(json.load(open(p))['skipped']['counts'])
               for p in sorted((tmp_path / 'state').glob('stream-*.json'))), collections.Counter())
  assert 0 < sum(saved.values()) < sum(bad.values())    # some bad lines before the save
  for procs in (1, 2):
    resumed = [pipeline.get_dataset(cfg, 'validation', shard_index=p, num_shards=procs)
               for p in range(procs)]
    total = collections.Counter()
    for it in resumed:
      it.restore(str(tmp_path / 'state'))
      list(it)
      total += it.skips.counts
    assert total == bad, procs


def test_a_script_that_read_batches_exits(tmp_path):
  """Python finalization hung (2 of 6 runs reading 120 batches, 3 of 5 reading 2) when a
  prefetch thread was inside one of the pipeline's Python callbacks (here the JSONL parser of
  a mixture): the iterators are now dropped by an atexit hook, before finalization. Four
  processes, each on one core: without the hook, this failed in 4 of 4 tries."""
  for name, word, n in (('ra', 'alpha', 100), ('rb', 'beta', 7)):
    (tmp_path / f'{name}.jsonl').write_text(''.join(
        json.dumps({'inputs': f'{word} {i}', 'targets': word}) + '\n' for i in range(n)))
  script = textwrap.dedent(f'''
      import os, sys
      cores = sorted(os.sched_getaffinity(0))  # one core each: they hung most often so
      os.sched_setaffinity(0, {{cores[int(sys.argv[1]) % len(cores)]}})
      sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      from tiny_run import tiny_config
      from t5x_lite.data import iterator, pipeline
      c = tiny_config('t5', data=dict(objective='text_to_text', inputs_length=16,
          targets_length=8, train_source='jsonl:{tmp_path}/ra.jsonl;rate=3,'
                                         'jsonl:{tmp_path}/rb.jsonl;rate=1'),
          train=dict(batch_size=8))
      it = pipeline.get_dataset(c, 'train')
      next(it), next(it)
      assert it in iterator._LIVE
  ''')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  children = [subprocess.Popen([sys.executable, '-c', script, str(i)], cwd=ROOT, env=env)
              for i in range(4)]
  deadline, hung = time.monotonic() + 150, 0  # each exits in ~10-40 s on 2 loaded cores
  for child in children:
    try:
      assert child.wait(timeout=max(deadline - time.monotonic(), 1)) == 0
    except subprocess.TimeoutExpired:
      child.kill()
      hung += 1
  assert hung == 0, f'{hung} of 4 processes hung at exit'
