"""Sources and bad input: text/JSONL/TSV/TFDS, document boundaries, mixtures, clear errors."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data_helpers import ROOT, blank_line_documents, data_config

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from t5x_lite.data import files, pipeline, sources  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402


def _records(spec, fields=('text',), boundary='blank_line', on_bad_input='skip', shard_index=0,
             num_shards=1):
  """Records of one stream's ordered pass, read by the streaming reader, and its skips."""
  skips = sources.SkipCounter()
  src = sources.parse_sources(spec)[0]
  ds = files.documents(src, sources.expand_glob(src.target, 'test'), fields, stream=shard_index,
                       num_streams=num_shards, train=False, seed=0, boundary=boundary,
                       on_bad_input=on_bad_input, skips=skips)
  try:
    recs = [tuple(x.decode() for x in r) for r in ds.as_numpy_iterator()]
  except tf.errors.OpError as e:
    raise sources.as_data_error(e, skips, spec) from None
  return recs, skips


def test_document_boundaries(tmp_path):
  (tmp_path / 'a.txt').write_text('one\ntwo\n\n\nthree\n  \nfour\n')
  (tmp_path / 'b.txt').write_text('five\n')
  spec = f'text:{tmp_path}/*.txt'
  recs, skips = _records(spec, boundary='line')
  assert [r[0] for r in recs] == ['one', 'two', 'three', 'four', 'five']
  assert skips.counts == {'empty line': 3} and skips.first['empty line'] == f'{tmp_path}/a.txt:3'
  recs, skips = _records(spec, boundary='blank_line')
  assert [r[0] for r in recs] == ['one\ntwo', 'three', 'four', 'five'] and not skips.counts
  recs, _ = _records(spec, boundary='file')
  assert [r[0] for r in recs] == ['one\ntwo\n\n\nthree\n  \nfour', 'five']
  recs, _ = _records(spec + ';boundary=line', boundary='file')   # per-source option wins
  assert len(recs) == 5


def test_non_utf8_bytes_are_counted_or_a_clear_error(tmp_path):
  (tmp_path / 'bad.txt').write_bytes(b'good line\nbad \xff\xfe line\nanother good line\n')
  recs, skips = _records(f'text:{tmp_path}/bad.txt', boundary='line')
  assert [r[0] for r in recs] == ['good line', 'another good line']
  assert skips.counts == {'invalid UTF-8': 1} and skips.first['invalid UTF-8'] == f'{tmp_path}/bad.txt:2'
  with pytest.raises(DataError, match=r'bad.txt:2: invalid UTF-8: byte 0xff at column 5'):
    _records(f'text:{tmp_path}/bad.txt', boundary='line', on_bad_input='error')


def test_after_a_bad_input_error_nothing_more_is_counted(tmp_path):
  """data.on_bad_input='error' stops the stream at the bad line, but its prefetching reads on:
  the file's end, after a line that never became text, was counted as 'empty file' and
  reported beside the error."""
  (tmp_path / 'bad.txt').write_bytes(b'good line\n\xff\xfe bad\nmore\n')
  cfg = data_config(train_source=f'text:{tmp_path}/bad.txt', on_bad_input='error',
                    num_virtual_shards=1)
  it = pipeline.get_dataset(cfg, 'train')
  with pytest.raises(DataError, match=r'bad.txt:2: invalid UTF-8: byte 0xff at column 1'):
    next(it)
  assert it.skips.counts == {} and it.skips.summary() == 'no input skipped'


def test_empty_files_and_globs_matching_nothing(tmp_path):
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'blank.txt').write_text('\n\n  \n')
  (tmp_path / 'ok.txt').write_text('text\n')
  recs, skips = _records(f'text:{tmp_path}/*.txt')  # blank.txt: no paragraph, counted too
  assert recs == [('text',)] and skips.counts == {'empty file': 2}
  with pytest.raises(DataError, match=r'no usable records in 1 file\(s\); skipped 1 x empty file'):
    _records(f'text:{tmp_path}/e*.txt')
  # Stream 0 of 2 fails for both streams: it counts both files (it said 1 of 2).
  (tmp_path / 'empty2.txt').write_text('')
  with pytest.raises(DataError, match=r'no usable records in 2 file\(s\); skipped 2 x empty file'):
    _records(f'text:{tmp_path}/e*.txt', num_shards=2)
  with pytest.raises(DataError, match=r"'.*/nothing-\*.txt' matches no files"):
    _records(f'text:{tmp_path}/nothing-*.txt')
  with pytest.raises(DataError, match=r"is a directory; name its files with a glob, e.g. '.*/\*.txt'"):
    _records(f'text:{tmp_path}')
  # A file whose name holds glob characters: said so, with the escaped name (which reads it).
  (tmp_path / 'a[1].txt').write_text('in brackets\n')
  with pytest.raises(DataError, match=r"'.*/a\[1\].txt' matches no files, though a file of that "
                                      r"name exists: \[, \], \* and \? are glob characters; "
                                      r"escape them: '.*/a\[\[\]1\].txt'"):
    _records(f'text:{tmp_path}/a[1].txt')
  assert _records(f'text:{tmp_path}/a[[]1].txt')[0] == [('in brackets',)]
  # A .gz of nothing is an empty file too, for every format (JSONL and TSV files were read
  # as holding no line: not counted, 'no input skipped'); a gzip of one newline is not.
  import gzip
  for ext in ('jsonl', 'tsv'):
    with gzip.open(tmp_path / f'empty.{ext}.gz', 'wb'):
      pass
  with gzip.open(tmp_path / 'ok.jsonl.gz', 'wb') as f:
    f.write(b'{"text": "text"}\n')
  recs, skips = _records(f'jsonl:{tmp_path}/*.jsonl.gz')
  assert recs == [('text',)] and skips.counts == {'empty file': 1}
  assert skips.first['empty file'].endswith('empty.jsonl.gz'), skips.first
  with pytest.raises(DataError, match=r'no usable records in 1 file\(s\); skipped 1 x empty file '
                                      r'\(first at .*empty.tsv.gz\)'):
    _records(f'tsv:{tmp_path}/empty.tsv.gz')


def test_jsonl_missing_field_and_tsv_columns(tmp_path):
  lines = [{'text': 'a b c'}, {'other': 1}, 'not json', {'text': ''}, {'text': 'd e'}]
  (tmp_path / 'x.jsonl').write_text('\n'.join(l if isinstance(l, str) else json.dumps(l) for l in lines) + '\n')
  recs, skips = _records(f'jsonl:{tmp_path}/x.jsonl')
  assert recs == [('a b c',), ('d e',)]
  assert skips.as_dict() == {
      "empty field 'text'": dict(count=1, first=f'{tmp_path}/x.jsonl:4'),
      'invalid JSON': dict(count=1, first=f'{tmp_path}/x.jsonl:3'),
      "missing field 'text'": dict(count=1, first=f'{tmp_path}/x.jsonl:2')}
  with pytest.raises(DataError, match=r"x.jsonl:2: missing field 'text': fields are \['other'\]"):
    _records(f'jsonl:{tmp_path}/x.jsonl', on_bad_input='error')
  (tmp_path / 'x.tsv').write_text('inputs\ttargets\nq1\ta1\nbroken row\nq2\ta2\n')
  recs, skips = _records(f'tsv:{tmp_path}/x.tsv', ('inputs', 'targets'))
  assert recs == [('q1', 'a1'), ('q2', 'a2')] and skips.first == {
      'TSV row with wrong number of columns': f'{tmp_path}/x.tsv:3'}
  with pytest.raises(DataError) as e:  # the reader's own line, not tf.data's wrapping of it
    _records(f'tsv:{tmp_path}/x.tsv', ('inputs', 'answer'))
  assert str(e.value) == (f"{tmp_path}/x.tsv:1: TSV header ['inputs', 'targets'] has no field "
                          "'answer' (the first line of a TSV source names its columns).")
  (tmp_path / 'y.tsv').write_text('inputs\ttargets\tinputs\nq1\ta1\tq2\n')
  with pytest.raises(DataError) as e:  # it read the first 'inputs' column silently
    _records(f'tsv:{tmp_path}/y.tsv', ('inputs', 'targets'))
  assert str(e.value) == (f"{tmp_path}/y.tsv:1: TSV header ['inputs', 'targets', 'inputs'] "
                          "names the column 'inputs' twice.")


def test_jsonl_fields_must_be_text_or_numbers(tmp_path):
  """Numbers are their JSON text; objects, lists, booleans, null and strings with a lone
  surrogate escape (which no UTF-8 text holds) are counted skips, never silently turned
  into text or a crash of the pipeline."""
  lines = ['{"text": "good one"}', '{"text": {"nested": "x"}}', '{"text": ["a", "b"]}',
           '{"text": null}', '{"text": true}', '{"text": "lone \\ud800 surrogate"}',
           '{"text": 3.5}', '{"text": "good two"}', '{"text": 1.50}', '{"text": 1e5}',
           '{"text": -0}', '{"text": NaN}', '{"text": -Infinity}',
           '{"text": "x", "deep": ' + '[' * 100_000 + ']' * 100_000 + '}']  # RecursionError
  (tmp_path / 'x.jsonl').write_text('\n'.join(lines) + '\n')
  recs, skips = _records(f'jsonl:{tmp_path}/x.jsonl')
  # Numbers exactly as written (Python's float would make 1.50 '1.5', 1e5 '100000.0').
  assert recs == [('good one',), ('3.5',), ('good two',), ('1.50',), ('1e5',), ('-0',)]
  assert skips.as_dict() == {
      "field 'text' is not a string or number": dict(count=4, first=f'{tmp_path}/x.jsonl:2'),
      "field 'text' is not valid Unicode": dict(count=1, first=f'{tmp_path}/x.jsonl:6'),
      'invalid JSON': dict(count=3, first=f'{tmp_path}/x.jsonl:12')}
  (tmp_path / 'y.jsonl').write_text(lines[-1] + '\n')
  with pytest.raises(DataError, match=r"y.jsonl:1: invalid JSON: nested too deeply to parse"):
    _records(f'jsonl:{tmp_path}/y.jsonl', on_bad_input='error')
  (tmp_path / 'y.jsonl').write_text(lines[3] + '\n')
  with pytest.raises(DataError, match=r"y.jsonl:1: field 'text' is not a string or number: null"):
    _records(f'jsonl:{tmp_path}/y.jsonl', on_bad_input='error')
  (tmp_path / 'y.jsonl').write_text(lines[5] + '\n')
  with pytest.raises(DataError, match=r"y.jsonl:1: field 'text' is not valid Unicode: surrogates"):
    _records(f'jsonl:{tmp_path}/y.jsonl', on_bad_input='error')


@pytest.mark.parametrize('kind', ['text', 'jsonl', 'tsv'])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(tmp_path, kind):
  # Windows editors and spreadsheet exports start files with one (EF BB BF); with it, a TSV
  # header 'inputs' read as '\ufeffinputs', a JSONL file's first line as invalid JSON, and a
  # text file's first document began with an invisible character.
  body, fields = {
      'text': ('first line\r\nsecond\r\n\r\nnext paragraph\r\n', ('text',)),
      'jsonl': ('{"text": "first"}\r\n{"text": "second"}\r\n', ('text',)),
      'tsv': ('inputs\ttargets\r\nq1\ta1\r\nq2\ta2\r\n', ('inputs', 'targets'))}[kind]
  plain, marked = tmp_path / f'plain.{kind}', tmp_path / f'marked.{kind}'
  plain.write_bytes(body.encode())
  marked.write_bytes(b'\xef\xbb\xbf' + body.encode())
  want, want_skips = _records(f'{kind}:{plain}', fields)
  got, skips = _records(f'{kind}:{marked}', fields)
  assert got == want and len(want) == 2 and skips.as_dict() == want_skips.as_dict() == {}
  assert not any('\ufeff' in field for rec in got for field in rec)


def test_skips_are_reported_by_the_iterator(tmp_path, caplog):
  (tmp_path / 'x.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in [
      {'inputs': 'to be or not', 'targets': 'ham'}, {'inputs': 'x'}, {'inputs': 'now is', 'targets': 'rich'}]))
  cfg = data_config(objective='text_to_text', inputs_length=16, targets_length=8, pack=False,
                    validation_source=f'jsonl:{tmp_path}/x.jsonl')
  cfg.data.num_virtual_shards = 1
  it = pipeline.get_dataset(cfg, 'validation', batch_size=2)
  b = next(it)                                   # counted as the stream reads the line
  assert it.skips.counts == {"missing field 'targets'": 1}
  assert "skipping missing field 'targets' at" in caplog.text
  assert it.vocab.decode(b['decoder_target_tokens'][1]) == 'rich'


def test_bad_source_specs():
  with pytest.raises(DataError, match='is not KIND:TARGET'):
    sources.parse_sources('csv:x.csv')
  for rate in ('-1', 'inf', 'nan', 'x'):
    with pytest.raises(DataError, match='rate in .* must be a positive finite number'):
      sources.parse_sources(f'text:a.txt;rate={rate}')
  with pytest.raises(DataError, match="option 'colour=red'"):
    sources.parse_sources('text:a.txt;colour=red')
  cfg = data_config(objective='text_to_text', train_source='text:data/corpus/train.txt')
  with pytest.raises(DataError, match='text_to_text objective needs a jsonl, tsv or tfds source'):
    pipeline.get_dataset(cfg, 'train')


def test_mixture_rates():
  """A 4:1 mixture gives 80% speaker examples over 5,000 draws (5 sigma = 0.028: a 2:1
  mixture, 67%, fails)."""
  cfg = data_config(objective='text_to_text', inputs_length=32, targets_length=16, pack=False,
                    train_source='jsonl:data/tasks/speaker/train.jsonl;rate=4,'
                                 'tsv:data/tasks/next_line/train.tsv;rate=1')
  n = 5000
  it = pipeline.get_dataset(cfg, 'train', batch_size=n, seed=1)
  b = next(it)
  speaker = sum(it.vocab.decode(x).startswith('speaker:') for x in b['encoder_input_tokens'])
  assert abs(speaker / n - 0.8) < 5 * np.sqrt(0.8 * 0.2 / n), speaker / n


def test_mixture_rates_weight_examples_not_documents(tmp_path):
  """As seqio's: a 1:1 mixture of a source of long documents and one of short documents
  gives half its examples from each (drawn as documents, the long source gave ~99% of the
  tokens and so nearly every example). Each example is one piece of one source's text."""
  (tmp_path / 'long.txt').write_text('\n\n'.join(['alpha ' * 300] * 200))
  (tmp_path / 'short.txt').write_text('\n\n'.join(['beta gamma delta'] * 4000))
  cfg = data_config(objective='span_corruption', inputs_length=64, targets_length=16,
                    pack=False, train_source=f'text:{tmp_path}/long.txt;rate=1,'
                                             f'text:{tmp_path}/short.txt;rate=1')
  n = 2000
  it = pipeline.get_dataset(cfg, 'train', batch_size=n, seed=1)
  texts = [it.vocab.decode(x) for x in next(it)['encoder_input_tokens']]
  long = sum('alpha' in t for t in texts)
  assert sum('beta' in t or 'gamma' in t for t in texts) == n - long   # no piece mixes them
  assert abs(long / n - 0.5) < 5 * np.sqrt(0.25 / n), long / n


@pytest.fixture
def mock_c4():
  with tfds.testing.mock_data(num_examples=24):
    yield


def test_tfds_source_with_mock_data(mock_c4, monkeypatch, tmp_path):
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29,
                    train_source='tfds:c4/en', validation_source='tfds:c4/en')
  it = pipeline.get_dataset(cfg, 'train', batch_size=4)
  b = next(it)
  assert b['encoder_input_tokens'].shape == (4, 128) and (b['encoder_input_tokens'] > 0).any()
  # Mock TFDS data are Python generators, which tf.data cannot checkpoint (real TFDS reads
  # TFRecords, which it can): saving says so in one line (while a generator is mid-epoch:
  # more examples than one tokenize batch of 64 and a small shuffle buffer).
  with tfds.testing.mock_data(num_examples=1000):
    cfg.data.shuffle_buffer_size = 8
    live = pipeline.get_dataset(cfg, 'train', batch_size=4)
    next(live)
    with pytest.raises(DataError, match='cannot be checkpointed: GeneratorDataset does not '
                                        'support checkpointing'):
      live.save(str(tmp_path))
    cfg.data.shuffle_buffer_size = 1000
  # Each virtual shard asks TFDS for only its even part of the split, whichever process runs
  # it (mock data ignore slicing, so the test checks what is asked for; disjointness is then
  # TFDS's even_splits contract).
  asked, load = [], tfds.load

  def spy(name, split, **kw):
    asked.append(split)
    return load(name, split=split, **kw)

  monkeypatch.setattr(tfds, 'load', spy)
  assert cfg.data.num_virtual_shards == 4
  for k in range(2):
    next(pipeline.get_dataset(cfg, 'validation', shard_index=k, num_shards=2, batch_size=2))
  assert [str(a) for a in asked] == [str(a) for a in tfds.even_splits('validation', n=4)]


def test_streamed_tfds_tokenization_saves_and_restores(monkeypatch, tmp_path):
  # TFDS mocks are Python generators, which tf.data cannot checkpoint (real TFDS reads
  # TFRecords, which it can): stand in a checkpointable split of real text, so that the
  # streaming path (tokenized in a py_function) is what gets saved and restored.
  docs = [l for l in open(os.path.join(ROOT, 'data/corpus/validation.txt')).read().split('\n\n')][:400]
  monkeypatch.setattr(sources, '_tfds_dataset', lambda *a, **k: tf.data.Dataset.from_tensor_slices((docs,)))
  cfg = data_config(objective='causal_lm', inputs_length=32, targets_length=32, train_source='tfds:anything')
  cfg.model.family = 'decoder'
  it = pipeline.get_dataset(cfg, 'train', batch_size=4)
  [next(it) for _ in range(3)]
  it.save(str(tmp_path))
  expected = [next(it) for _ in range(3)]
  it2 = pipeline.get_dataset(cfg, 'train', batch_size=4)
  it2.restore(str(tmp_path))
  for e in expected:
    np.testing.assert_array_equal(next(it2)['decoder_target_tokens'], e['decoder_target_tokens'])


def _get(**kw):
  cfg = data_config(objective='span_corruption', inputs_length=128, targets_length=29, **kw)
  return pipeline.get_dataset(cfg, 'train')


def test_tfds_bad_name_and_field(mock_c4):
  with pytest.raises(DataError, match=r"source tfds:no_such_dataset_xyz .*no such TFDS dataset"):
    _get(train_source='tfds:no_such_dataset_xyz')
  with pytest.raises(DataError, match=r"no feature 'body'; it has \[.*'text'"):
    _get(train_source='tfds:c4/en;field=body')


def test_tfds_unknown_split_and_unprepared_data(monkeypatch, tmp_path):
  # Not prepared in data_dir: one line naming the source and the data_dir.
  with pytest.raises(DataError, match=rf"source tfds:c4/en \(split 'train', data_dir '{tmp_path}'\): cannot load"):
    _get(train_source=f'tfds:c4/en;data_dir={tmp_path}')
  # A split the dataset does not have (prepared datasets list their splits in their info).
  real = tfds.builder('c4/en', data_dir=str(tmp_path))

  class Info:
    features = real.info.features
    splits = {'train': None, 'validation': None}

  monkeypatch.setattr(tfds, 'builder', lambda *a, **k: type('B', (), {'info': Info})())
  with pytest.raises(DataError, match=r"no split 'nope'; it has \['train', 'validation'\]"):
    _get(train_source='tfds:c4/en;split=nope')


def test_many_files_are_dealt_to_streams_whole(tmp_path):
  for i in range(5):
    (tmp_path / f'part-{i}.txt').write_text(''.join(f'doc {i} {j}\n' for j in range(3)))
  shards = [_records(f'text:{tmp_path}/*.txt', boundary='line', shard_index=k, num_shards=2)[0]
            for k in range(2)]
  assert [r[0] for r in shards[0]] == [f'doc {i} {j}' for i in (0, 2, 4) for j in range(3)]
  assert [r[0] for r in shards[1]] == [f'doc {i} {j}' for i in (1, 3) for j in range(3)]


def test_gzip_files_stream(tmp_path):
  import gzip
  with gzip.open(tmp_path / 'a.txt.gz', 'wt') as f:
    f.write('first doc\n\nsecond doc\n')
  assert _records(f'text:{tmp_path}/a.txt.gz')[0] == [('first doc',), ('second doc',)]


def test_non_gzip_file_is_a_counted_skip_or_an_error_naming_it(tmp_path):
  import gzip
  with gzip.open(tmp_path / 'a.txt.gz', 'wt') as f:
    f.write('first doc\n\nsecond doc\n')
  (tmp_path / 'b.txt.gz').write_text('plain text named .gz\n')
  recs, skips = _records(f'text:{tmp_path}/*.gz')
  assert recs == [('first doc',), ('second doc',)]
  assert skips.counts == {'not a gzip file': 1} and skips.first['not a gzip file'] == f'{tmp_path}/b.txt.gz'
  with pytest.raises(DataError, match=r'b.txt.gz: not a gzip file: starts with b.pl., not 0x1f 0x8b'):
    _records(f'text:{tmp_path}/*.gz', on_bad_input='error')


def _gzip_lines(n, start=0, newline='\n'):
  import gzip
  return gzip.compress(''.join(f'line {i} of a gzipped file{newline}' for i in range(start, start + n)).encode())


@pytest.mark.parametrize('kind', ['text', 'jsonl'])
def test_truncated_gz_is_a_counted_skip_or_an_error_naming_it(tmp_path, kind):
  """tf.data's gzip reader ends quietly at a cut; the reader checks each .gz file's end."""
  lines = [f'{{"text": "record {i} of a gzipped jsonl file"}}' if kind == 'jsonl'
           else f'line {i} of a gzipped text file' for i in range(3000)]
  import gzip
  whole = gzip.compress(('\n'.join(lines) + '\n').encode())
  (tmp_path / 'a.gz').write_bytes(whole[:len(whole) // 2])   # cut mid-stream
  (tmp_path / 'b.gz').write_bytes(whole)                     # intact
  (tmp_path / 'c.gz').write_bytes(whole + whole[:-9])        # its second member cut short
  spec = f'{kind}:{tmp_path}/*.gz'
  recs, skips = _records(spec, boundary='line')
  reason = 'truncated or corrupt .gz file'
  assert skips.counts[reason] == 2 and skips.first[reason] == f'{tmp_path}/a.gz'
  assert set(skips.counts) <= {reason, 'invalid JSON'}   # a JSON line cut in half is counted too
  # b is read whole, a and c up to their cuts (the last line of each may be cut short).
  assert 2 * len(lines) < len(recs) < 4 * len(lines)
  with pytest.raises(DataError, match=r'a.gz: truncated or corrupt .gz file: cut short: its \d+ '
                                      r'bytes end before gzip.s end-of-stream marker; \d+ lines read'):
    _records(spec, boundary='line', on_bad_input='error')


@pytest.mark.parametrize('policy', ['skip', 'error'])
def test_corrupt_gzip_data_inside_a_file_stops_the_run_naming_the_file(tmp_path, policy):
  """Bytes that do not decompress in the middle of a .gz file: tf.data's reader stops with a
  DataLossError naming no file ('data train stream 0: cannot read input (DataLossError:
  inflate() failed ...)'), and cannot read on past them; the error names the file."""
  import gzip
  body = b''.join(b'line %d of a gzipped text file\n' % i for i in range(20000))
  data = bytearray(gzip.compress(body))
  data[len(data) // 2:len(data) // 2 + 64] = b'\xff' * 64
  (tmp_path / 'a.txt.gz').write_bytes(gzip.compress(body))
  (tmp_path / 'b.txt.gz').write_bytes(bytes(data))
  (tmp_path / 'c.txt').write_text('plain text\n')
  cfg = data_config(train_source=f'text:{tmp_path}/*', num_virtual_shards=1,
                    on_bad_input=policy, doc_boundary='line')
  it = pipeline.get_dataset(cfg, 'train')
  with pytest.raises(DataError, match=rf'^data train stream 0: {tmp_path}/b.txt.gz: corrupt '
                                      r'gzip data \(.*\) before byte \d+: tf.data.s gzip '
                                      r'reader cannot read on past it'):
    for _ in range(10000):
      next(it)


def test_intact_gz_files_are_not_reported_whatever_their_layout(tmp_path):
  """The O(1) check (the size in gzip's trailer) fails for CRLF lines (the reader drops CRs),
  several members and a missing last newline: those take the full check, which passes."""
  (tmp_path / 'crlf.gz').write_bytes(_gzip_lines(300, newline='\r\n'))
  (tmp_path / 'members.gz').write_bytes(_gzip_lines(200) + _gzip_lines(200, start=200))
  import gzip
  (tmp_path / 'no_last_newline.gz').write_bytes(gzip.compress(b'first\nsecond'))
  (tmp_path / 'empty_member.gz').write_bytes(gzip.compress(b''))
  recs, skips = _records(f'text:{tmp_path}/*.gz', boundary='line')
  assert skips.counts == {'empty file': 1}  # the gzip of nothing, as any empty file; not cut
  assert skips.first['empty file'].endswith('empty_member.gz')
  assert len(recs) == 300 + 400 + 2
  assert recs[:2] == [('line 0 of a gzipped file',), ('line 1 of a gzipped file',)]


def test_fewer_files_than_streams_split_documents_and_say_so(tmp_path, caplog):
  (tmp_path / 'a.txt').write_text(''.join(f'doc {i}\n\n' for i in range(10)))
  caplog.set_level('INFO')
  parts = [[r[0] for r in _records(f'text:{tmp_path}/a.txt', shard_index=v, num_shards=3)[0]]
           for v in range(3)]
  assert parts == [[f'doc {i}' for i in range(v, 10, 3)] for v in range(3)]
  said = [r.getMessage() for r in caplog.records if 'every stream reads every file' in r.getMessage()]
  assert said == [f'source text:{tmp_path}/a.txt: 1 file(s) for 3 streams: every stream reads every '
                  f'file and keeps every 3-th document']


def _reference_documents(raw: bytes, boundary: str):
  """Independent reference: the documents of one file, read whole in Python."""
  lines = [l.decode('utf-8').rstrip('\r') for l in raw.split(b'\n')[:-1] if _utf8(l)]
  if boundary == 'line':
    return [l.strip() for l in lines if l.strip()]
  if boundary == 'file':
    return ['\n'.join(lines).strip()] if '\n'.join(lines).strip() else []
  docs, cur = [], []
  for l in lines + ['']:
    if l.strip():
      cur.append(l.strip())
    elif cur:
      docs.append('\n'.join(cur))
      cur = []
  return docs


def _utf8(b):
  try:
    b.decode('utf-8')
    return True
  except UnicodeDecodeError:
    return False


@pytest.mark.parametrize('lines_per_call', [1, 3, 7, 256])
def test_batched_reader_matches_a_whole_file_reference(tmp_path, monkeypatch, lines_per_call):
  """Documents are split a batch of lines at a time; a paragraph, a run of blank lines or a
  bad line can straddle any batch boundary (small batches put one everywhere)."""
  monkeypatch.setattr(files, 'LINES_PER_CALL', lines_per_call)
  rng = np.random.default_rng(lines_per_call)
  words = ['alpha', 'béta', '  spaced  ', '', '   ', 'x\r', 'tab\tbed', '\xff bad'.encode('latin-1')]
  raw = b''
  for _ in range(120):
    w = words[rng.integers(len(words))]
    raw += (w if isinstance(w, bytes) else w.encode()) + b'\n'
  (tmp_path / 'a.txt').write_bytes(raw)
  for boundary in ('blank_line', 'line', 'file'):
    recs, skips = _records(f'text:{tmp_path}/a.txt', boundary=boundary)
    assert [r[0] for r in recs] == _reference_documents(raw, boundary), boundary
    assert skips.counts['invalid UTF-8'] == raw.count(b'\xff')


def test_blank_lines_in_jsonl_and_tsv_are_counted_never_errors(tmp_path):
  """A trailing blank line in a JSONL / TSV shard is common: counted as 'empty line', also
  with on_bad_input=error (it is not bad JSON or a bad row)."""
  (tmp_path / 'x.jsonl').write_text('{"text": "a"}\n\n{"text": "b"}\n  \n')
  (tmp_path / 'x.tsv').write_text('inputs\ttargets\nq1\ta1\n\nq2\ta2\n')
  for spec, fields, want in ((f'jsonl:{tmp_path}/x.jsonl', ('text',), [('a',), ('b',)]),
                             (f'tsv:{tmp_path}/x.tsv', ('inputs', 'targets'),
                              [('q1', 'a1'), ('q2', 'a2')])):
    for policy in ('skip', 'error'):
      recs, skips = _records(spec, fields, on_bad_input=policy)
      assert recs == want and set(skips.counts) == {'empty line'}, (spec, policy, skips.counts)


# A text-to-text task with known bad and over-long examples (inputs_length=16, targets_length=8).
_LONG = ' '.join(['to be or not to be that is the question'] * 5)  # far over 15 tokens
_TASK = ([{'inputs': f'now is the winter {i}', 'targets': 'rich'} for i in range(11)] +
         [{'inputs': _LONG, 'targets': 'ham'}] * 3 +           # 3 inputs over-long
         [{'inputs': 'a', 'targets': _LONG}] * 2 +             # 2 targets over-long
         [{'inputs': _LONG, 'targets': _LONG}] +               # 1 both
         [{'inputs': '', 'targets': 'z'}, {'inputs': '  ', 'targets': 'z'}] +  # 2 empty inputs
         [{'inputs': '\u200b', 'targets': 'z'}] * 2 +          # 2 tokenize to nothing
         [{'inputs': 'b', 'targets': '\u200b\u200b'}] +        # 1 target without tokens
         ['', 'not json'])                                     # 1 empty line, 1 invalid JSON
_TASK_FIGURES = {'examples_read': 17, 'truncated_inputs': 4, 'truncated_targets': 3,
                 'skipped_input': {"empty field 'inputs'": 2, 'empty line': 1, 'invalid JSON': 1,
                                   "field 'inputs' without tokens": 2,
                                   "field 'targets' without tokens": 1}}


@pytest.mark.parametrize('num_files,streams', [(1, 1), (1, 3), (2, 4), (5, 2)])
def test_text_to_text_counts_empty_and_truncated_examples_over_all_streams(tmp_path, num_files,
                                                                          streams):
  """Every empty or token-less example is a counted skip and every over-long one is counted
  as truncated, exactly, summed over the streams: one file read by every stream (each line
  counted by one of them), or files dealt to the streams."""
  lines = [l if isinstance(l, str) else json.dumps(l) for l in _TASK]
  for f in range(num_files):
    (tmp_path / f'x{f}.jsonl').write_text(''.join(l + '\n' for l in lines[f::num_files]))
  cfg = data_config(objective='text_to_text', inputs_length=16, targets_length=8, pack=False,
                    validation_source=f'jsonl:{tmp_path}/x*.jsonl', num_virtual_shards=streams)
  it = pipeline.get_dataset(cfg, 'validation')
  rows = [r for b in it for r, w in zip(b['decoder_target_tokens'], b['decoder_loss_weights'])
          if w.sum()]
  assert len(rows) == 17
  assert it.skips.figures() == _TASK_FIGURES
  assert it.skips.truncation_summary() == (
      '4 of 17 examples had inputs longer than data.inputs_length=16 tokens (EOS included) and '
      'were truncated; 3 of 17 examples had targets longer than data.targets_length=8 tokens '
      '(EOS included) and were truncated')
  assert it.skips.report().startswith("skipped 2 x empty field 'inputs' (first at ")


def _epochs(spec, fields, boundary, streams, epochs=3):
  """Documents of `epochs` training epochs of every stream, and the skips of them all."""
  skips = sources.SkipCounter()
  src = sources.parse_sources(spec)[0]
  docs = []
  for v in range(streams):
    docs += [r for r in files.documents(
        src, sources.expand_glob(src.target, 'test'), fields, stream=v, num_streams=streams,
        train=True, seed=0, boundary=boundary, on_bad_input='skip',
        skips=skips.stream_counter()).repeat(epochs).as_numpy_iterator()]
  return docs, skips


def test_a_tsv_file_of_only_its_header_is_a_counted_skip_naming_it(tmp_path):
  """A TSV file with a header and no row holds no record: counted once per file (also over
  epochs, and by one stream when every stream reads it), not an error under either policy,
  and named when no file has a row (it said 'no usable record ... no input skipped')."""
  import gzip
  (tmp_path / 'a.tsv').write_text('inputs\ttargets\n')
  (tmp_path / 'b.tsv.gz').write_bytes(gzip.compress(b'inputs\ttargets\r\n'))
  reason = 'TSV file with only a header line'
  for policy in ('skip', 'error'):
    cfg = data_config(objective='text_to_text', inputs_length=16, targets_length=8,
                      train_source=f'tsv:{tmp_path}/*', num_virtual_shards=1,
                      on_bad_input=policy)
    with pytest.raises(DataError, match=rf'^data train: no usable record in the input \(data.'
                                        rf'train_source; skipped 2 x {reason} \(first at '
                                        rf'{tmp_path}/a.tsv\)\)\.$'):
      next(pipeline.get_dataset(cfg, 'train'))
  (tmp_path / 'c.tsv').write_text('inputs\ttargets\nq\ta\n')
  for streams in (1, 2, 5):
    docs, skips = _epochs(f'tsv:{tmp_path}/*', ('inputs', 'targets'), 'line', streams)
    assert docs == [(b'q', b'a')] * 3, streams
    assert skips.counts == {reason: 2}, streams
    assert skips.first[reason] == f'{tmp_path}/a.tsv'


def test_file_level_skips_are_counted_once_over_epochs_and_not_beside_bad_lines(tmp_path):
  """Training reads every file again each epoch: a whitespace-only file was counted as an
  empty file once per epoch (each bad line was counted once); and a file whose every line
  was invalid counted each line and then the file again as 'empty file'."""
  (tmp_path / 'a.txt').write_text('one\n\ntwo\n')
  (tmp_path / 'b.txt').write_text('\n  \n\t\n')
  (tmp_path / 'c.txt').write_bytes(b'bad \xff\n\nworse \xfe\n')
  for boundary in ('file', 'blank_line'):
    for streams in (1, 3):
      docs, skips = _epochs(f'text:{tmp_path}/*.txt', ('text',), boundary, streams)
      assert len(docs) == 3 * (1 if boundary == 'file' else 2), (boundary, streams)
      assert skips.counts == {'empty file': 1, 'invalid UTF-8': 2}, (boundary, streams)
      assert skips.first['empty file'] == f'{tmp_path}/b.txt'


def test_bad_lines_of_one_file_read_by_every_stream_are_counted_once(tmp_path):
  """Fewer files than streams: each stream reads every line; each bad line, and a .gz file
  cut short, counts once."""
  import gzip
  (tmp_path / 'a.txt').write_bytes(b'one\n\ntwo\nbad \xff\nthree\n\n\nfour\n')
  (tmp_path / 'b.txt').write_bytes(b'')
  whole = gzip.compress(b''.join(b'gz line %d\n' % i for i in range(400)))
  (tmp_path / 'c.txt.gz').write_bytes(whole[:len(whole) // 2])
  for streams in (1, 2, 4, 5):
    skips = sources.SkipCounter()
    src = sources.parse_sources(f'text:{tmp_path}/*.txt*')[0]
    docs = []
    for v in range(streams):
      docs += [r[0] for r in files.documents(
          src, sources.expand_glob(src.target, 'test'), ('text',), stream=v, num_streams=streams,
          train=False, seed=0, boundary='line', on_bad_input='skip',
          skips=skips.stream_counter()).as_numpy_iterator()]  # one per stream, as get_dataset
    assert sorted(d for d in docs if not d.startswith(b'gz')) == sorted(
        [b'one', b'two', b'three', b'four']), streams
    assert len(set(d for d in docs if d.startswith(b'gz'))) == len([
        d for d in docs if d.startswith(b'gz')]) > 0, streams   # every line read once
    assert skips.counts == {'empty line': 3, 'invalid UTF-8': 1, 'empty file': 1,
                            'truncated or corrupt .gz file': 1}, streams


def test_a_whitespace_only_file_is_one_counted_empty_file_for_any_stream_count(tmp_path):
  """Under boundary=file and blank_line, a file of blank lines gives no document: it is
  counted once as an empty file, by one stream, also when every stream reads it (it
  vanished without a count: the start-up check only sees zero-byte files)."""
  (tmp_path / 'a.txt').write_text('one\n\ntwo\n')
  (tmp_path / 'b.txt').write_text('\n  \n\t\n\n')
  for boundary in ('file', 'blank_line'):
    for streams in (1, 2, 3):
      skips = sources.SkipCounter()
      src = sources.parse_sources(f'text:{tmp_path}/*.txt')[0]
      docs = []
      for v in range(streams):
        docs += [r[0] for r in files.documents(
            src, sources.expand_glob(src.target, 'test'), ('text',), stream=v,
            num_streams=streams, train=False, seed=0, boundary=boundary, on_bad_input='skip',
            skips=skips.stream_counter()).as_numpy_iterator()]
      assert sorted(docs) == ([b'one\n\ntwo'] if boundary == 'file' else [b'one', b'two'])
      assert skips.counts == {'empty file': 1}, (boundary, streams)
      assert skips.first['empty file'] == f'{tmp_path}/b.txt'


def test_the_first_bad_line_reported_is_the_earliest_whichever_stream_met_it(tmp_path):
  """Streams read in parallel; the report's "first at" is the earliest line in file order,
  also when a stream that reached a later bad line counted first (stream 0 owns line 16 of a
  file every stream reads, stream 3 line 7: 'first at a.tsv:16' while 7 was the one to fix)."""
  rows = ['inputs\ttargets'] + [f'q{i}\ta{i}' for i in range(2, 20)]
  for bad in (7, 10, 16):
    rows[bad - 1] = f'only one column {bad}'
  (tmp_path / 'a.tsv').write_text('\n'.join(rows) + '\n')
  src = sources.parse_sources(f'tsv:{tmp_path}/a.tsv')[0]
  for streams in (1, 4):
    skips = sources.SkipCounter()
    for v in range(streams):  # stream 0 first: it counts line 16
      list(files.documents(src, [str(tmp_path / 'a.tsv')], ('inputs', 'targets'), stream=v,
                           num_streams=streams, train=False, seed=0, boundary='line',
                           on_bad_input='skip',
                           skips=skips.stream_counter()).as_numpy_iterator())
    reason = 'TSV row with wrong number of columns'
    assert skips.counts == {reason: 3}, streams
    assert skips.first[reason] == f'{tmp_path}/a.tsv:7', streams


def test_gz_stream_with_a_cut_file_saves_and_restores_across_epochs(tmp_path):
  """The end-of-file check carries the bytes read in the stream's state: restored in a new
  process (as a resumed run is), a training stream of documents continues with the same
  documents, and counts the cut file once, not again at every epoch end it passes."""
  import gzip
  docs = blank_line_documents(os.path.join(ROOT, 'data/corpus/validation.txt'))[:60]
  whole = [gzip.compress(''.join(f'{d}\n\n' for d in docs[i::3]).encode()) for i in range(3)]
  for i, data in enumerate(whole):
    (tmp_path / f'part-{i}.txt.gz').write_bytes(data if i else data[:len(data) // 2])
  build = textwrap.dedent(f'''
      import tensorflow as tf
      from t5x_lite.data import files, sources
      skips = sources.SkipCounter()
      src = sources.parse_sources('text:{tmp_path}/*.gz')[0]
      ds = files.documents(src, sources.expand_glob(src.target, 'test'), ('text',), stream=0,
                           num_streams=1, train=True, seed=3, boundary='blank_line',
                           on_bad_input='skip', skips=skips, shuffle_buffer_size=4).repeat()
      options = tf.data.Options()   # as the pipeline sets it: the hooks are py_functions
      options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
      it = iter(ds.with_options(options))
      state = tf.train.Checkpoint(iterator=it)
  ''')
  scope = {}
  exec(build, scope)  # pylint: disable=exec-used
  it, skips = scope['it'], scope['skips']
  for _ in range(30):
    next(it)
  scope['state'].write(str(tmp_path / 'state'))
  out = tmp_path / 'restored.json'
  script = build + textwrap.dedent(f'''
      import json
      state.read({str(tmp_path / 'state')!r})
      docs = [next(it)[0].numpy().decode() for _ in range(200)]
      json.dump(dict(docs=docs, cut=skips.counts['truncated or corrupt .gz file']),
                open({str(out)!r}, 'w'))
      # Freed here, not at interpreter shutdown, where a reader thread calling the py_function
      # hook can deadlock (1 run in 8 hung at exit without this; 0 in 12 with it).
      del state, it
  ''')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
  assert subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, timeout=120).returncode == 0
  got = json.load(open(out))
  assert got['docs'] == [next(it)[0].numpy().decode() for _ in range(200)]
  assert got['cut'] == 1      # 200 documents pass several ends of the ~50-document epoch
  assert skips.first['truncated or corrupt .gz file'] == f'{tmp_path}/part-0.txt.gz'


def test_a_bad_line_is_counted_once_however_many_epochs_read_it(tmp_path):
  """Training repeats its files every epoch: each bad line is counted once (per stream that
  owns it), not once per epoch; the counts are the file's own."""
  lines = [json.dumps({'inputs': f'question {i}', 'targets': f'answer {i}'}) for i in range(12)]
  lines[3], lines[7] = '{"inputs": "cut', json.dumps({'inputs': 'no targets'})
  lines[9] = ''
  (tmp_path / 'x.jsonl').write_text('\n'.join(lines) + '\n')
  cfg = data_config(objective='text_to_text', inputs_length=16, targets_length=8, pack=False,
                    train_source=f'jsonl:{tmp_path}/x.jsonl', num_virtual_shards=1)
  cfg.data.shuffle_buffer_size = 4
  it = pipeline.get_dataset(cfg, 'train', batch_size=4)
  for _ in range(12):                 # 48 rows: five epochs of the 9 good records
    next(it)
  assert it.skips.counts == {'invalid JSON': 1, "missing field 'targets'": 1, 'empty line': 1}
  assert it.skips.first['invalid JSON'] == f'{tmp_path}/x.jsonl:4'


def test_a_build_opens_each_file_once_whatever_the_stream_count(tmp_path, monkeypatch):
  """Every stream needs the same list of usable files; the streams of one build share one
  look at each file (V streams x N files opens was minutes at start-up on a network
  filesystem). The empty file is still counted once, by its owner."""
  import builtins
  for i in range(9):
    (tmp_path / f'{i}.txt').write_text(f'document {i}\n\nand {i} again\n' if i != 5 else '')
  opened, real_open = [], builtins.open
  def counting_open(path, *args, **kwargs):
    if str(path).startswith(str(tmp_path)):
      opened.append(os.path.basename(str(path)))
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr(builtins, 'open', counting_open)
  config = data_config(train_source=f'text:{tmp_path}/*.txt', num_virtual_shards=4)
  it = pipeline.get_dataset(config, 'train')
  assert sorted(opened) == sorted(f'{i}.txt' for i in range(9))
  next(iter(it))
  assert it.skips.counts == {'empty file': 1}


@pytest.mark.parametrize('num_files,num_streams', [(1, 1), (3, 1), (1, 2), (4, 2)])
def test_training_shows_every_document_once_per_epoch_in_a_new_order(tmp_path, num_files,
                                                                       num_streams):
  """A stream smaller than its shuffle buffer (a small fine-tuning set) must not mix epochs:
  each epoch of each stream is a permutation of that stream's documents, and the next epoch
  is another one."""
  n = 60
  for f in range(num_files):
    (tmp_path / f'part-{f}.jsonl').write_text(''.join(
        json.dumps({'text': f'document {i}'}) + '\n' for i in range(f, n, num_files)))
  src = sources.parse_sources(f'jsonl:{tmp_path}/*.jsonl')[0]
  paths = sources.expand_glob(src.target, 'test')
  seen = []
  for stream in range(num_streams):
    whole = {r[0] for r in _records(f'jsonl:{tmp_path}/*.jsonl', shard_index=stream,
                                    num_shards=num_streams)[0]}
    ds = files.documents(src, paths, ('text',), stream=stream, num_streams=num_streams,
                         train=True, seed=5, boundary='line', on_bad_input='skip',
                         skips=sources.SkipCounter(), shuffle_buffer_size=1000)
    it = ds.repeat().as_numpy_iterator()  # one epoch each; the caller repeats (token_dataset)
    epochs = [[next(it)[0].decode() for _ in whole] for _ in range(3)]
    for epoch in epochs:
      assert sorted(epoch) == sorted(whole)
    assert epochs[0] != epochs[1] != epochs[2]
    seen += sorted(whole)
  assert sorted(seen) == sorted(f'document {i}' for i in range(n))


def test_the_shuffle_buffer_is_split_over_streams_and_sources(monkeypatch):
  """data.shuffle_buffer_size bounds the documents buffered in all: a 2-source mixture read
  as 2 streams buffers a quarter of it per (stream, source)."""
  sizes = []
  real = sources.token_dataset

  def recording(*args, **kwargs):
    sizes.append(kwargs['shuffle_buffer_size'])
    return real(*args, **kwargs)
  monkeypatch.setattr(sources, 'token_dataset', recording)
  cfg = data_config(objective='text_to_text', inputs_length=32, targets_length=16, pack=False,
                    train_source='jsonl:data/tasks/speaker/train.jsonl;rate=4,'
                                 'tsv:data/tasks/next_line/train.tsv;rate=1',
                    num_virtual_shards=2)
  cfg.data.shuffle_buffer_size = 100
  next(pipeline.get_dataset(cfg, 'train', batch_size=4))
  assert sizes == [25] * 4
