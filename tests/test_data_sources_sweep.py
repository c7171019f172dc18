"""Sources, mixtures and resumability, swept as a user feeding real corpora would: a TFDS
dataset prepared in a temporary data_dir (TFRecords, as real TFDS data are), sliced and
combined splits, mixtures whose sources run dry in some streams, recursive globs."""
import glob
import json
import os
import re

import numpy as np
import pytest

from data_helpers import data_config

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from t5x_lite.data import pipeline, sources  # noqa: E402
from t5x_lite.data.sources import DataError  # noqa: E402

WORDS = ['king', 'queen', 'lord', 'lady', 'night', 'day', 'good', 'sweet', 'love', 'death']


class SweepTinyText(tfds.core.GeneratorBasedBuilder):
  """120 train and 40 validation examples with text fields and two that are not text."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'text': tfds.features.Text(), 'inputs': tfds.features.Text(),
        'targets': tfds.features.Text(), 'label': tf.int64,
        'answers': tfds.features.Sequence(tfds.features.Text())}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(120, 'the'),
            'validation': self._generate_examples(40, 'a')}

  def _generate_examples(self, n, article):
    for i in range(n):
      words = f'{WORDS[i % 10]} {WORDS[i // 10 % 10]}'
      yield i, {'text': f'{article} {words} and the {words} of the night', 'inputs': f'who is {words}',
                'targets': words, 'label': i, 'answers': [words]}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  SweepTinyText(data_dir=data_dir).download_and_prepare()
  return data_dir


def _t2t(data_dir, spec, **kw):
  return data_config(objective='text_to_text', inputs_length=16, targets_length=8, pack=False,
                     train_source=spec, validation_source=spec, tfds_data_dir=data_dir, **kw)


def _examples_read(cfg, split='validation'):
  it = pipeline.get_dataset(cfg, split)
  for _ in it:
    pass
  return it.skips.examples


def test_tfds_sliced_and_combined_splits_are_read(tfds_dir):
  """TFDS split syntax (a slice, a sum of splits) is a split the dataset has: each stream reads
  its even part of it (was refused: "no split 'validation[:25%]'")."""
  name = 'tfds:sweep_tiny_text'
  assert _examples_read(_t2t(tfds_dir, name)) == 40
  assert _examples_read(_t2t(tfds_dir, f'{name};split=validation[:25%]')) == 10
  assert _examples_read(_t2t(tfds_dir, f'{name}:1.0.0;split=train[:10]+validation',
                             num_virtual_shards=2)) == 50
  with pytest.raises(DataError, match=r"no split 'test'; it has \['train', 'validation'\]"):
    pipeline.get_dataset(_t2t(tfds_dir, f'{name};split=train+test[:5]'), 'validation')


@pytest.mark.parametrize('field,kind', [('label', 'int64'), ('answers', 'a sequence')])
def test_tfds_feature_that_is_not_text_is_a_one_line_error(tfds_dir, field, kind):
  """A TFDS feature that is not a text scalar: one line naming the source and the feature
  (was a TypeError from tf.strings ops or a tf.function signature)."""
  cfg = data_config(objective='span_corruption', inputs_length=32, targets_length=16,
                    train_source=f'tfds:sweep_tiny_text;field={field}', tfds_data_dir=tfds_dir)
  with pytest.raises(DataError, match=rf"tfds:sweep_tiny_text .*feature '{field}' is {kind}, not text"):
    pipeline.get_dataset(cfg, 'train')


def test_tfds_train_stream_resumes_exactly_across_epochs(tfds_dir, tmp_path):
  """A TFDS-backed (TFRecord) training stream: same seed same batches, and a save after k
  batches continues exactly, past several epochs of each stream's 30 examples."""
  cfg = _t2t(tfds_dir, 'tfds:sweep_tiny_text', shuffle_buffer_size=8)
  ref = pipeline.get_dataset(cfg, 'train')
  expected = [next(ref) for _ in range(24)]
  it = pipeline.get_dataset(cfg, 'train')
  for e in expected[:9]:
    np.testing.assert_array_equal(next(it)['encoder_input_tokens'], e['encoder_input_tokens'])
  it.save(str(tmp_path))
  again = pipeline.get_dataset(cfg, 'train')
  again.restore(str(tmp_path))
  for e in expected[9:]:
    b = next(again)
    for k in e:
      np.testing.assert_array_equal(b[k], e[k])


def test_a_mixture_source_without_documents_in_a_stream_is_an_error(tmp_path):
  """A mixture source that holds no document for some stream (2 documents, 4 streams: rates
  1:1 gave 85:21) used to drop out of those streams' mixtures silently; it is a one-line
  error naming the source and the stream, as a lone source's is."""
  (tmp_path / 'big.txt').write_text(''.join(f'the king {WORDS[i % 10]}\n' for i in range(50)))
  (tmp_path / 'small.txt').write_text('a queen\n')
  cfg = data_config(objective='causal_lm', inputs_length=16, targets_length=16, num_virtual_shards=2,
                    doc_boundary='line', shuffle_buffer_size=4,
                    train_source=f'text:{tmp_path}/big.txt,text:{tmp_path}/small.txt')
  cfg.model.family = 'decoder'
  it = pipeline.get_dataset(cfg, 'train')
  with pytest.raises(DataError, match=rf'stream 1 of 2 \(data.num_virtual_shards\) has no usable '
                                      rf'records of source text:{re.escape(str(tmp_path))}/small.txt'):
    for _ in range(40):
      next(it)


def _lm_config(train_source, num_streams, **data):
  """A tiny decoder-only causal-LM config reading `train_source` in `num_streams` streams."""
  cfg = data_config(objective='causal_lm', inputs_length=16, targets_length=16,
                    num_virtual_shards=num_streams, shuffle_buffer_size=4,
                    train_source=train_source, **data)
  cfg.model.family = 'decoder'
  return cfg


def test_a_lone_source_stream_without_documents_names_its_own_skips(tmp_path):
  """One file of two lines, two streams, one line invalid UTF-8: the streams deal the one
  usable document, so stream 1 has nothing. The error says why and what to change (it
  said only 'no input skipped', which misled when the input's bad lines were the cause)."""
  (tmp_path / 'a.txt').write_bytes(b'the king is here\n\xff\xfe bad\n')
  cfg = _lm_config(f'text:{tmp_path}/a.txt', 2, doc_boundary='line')
  it = pipeline.get_dataset(cfg, 'train')
  with pytest.raises(DataError, match=r'stream 1 of 2 \(data.num_virtual_shards\) has no usable '
                                      r'records: .* or a lower data.num_virtual_shards \(input '
                                      r'read so far: skipped 1 x invalid UTF-8 .*a.txt:2'):
    next(it)


@pytest.mark.parametrize('num_streams', [1, 4])
def test_an_input_without_a_usable_record_is_named_as_such(tmp_path, num_streams):
  """A JSONL field no record has: the error leads with the skips, not with advice to lower
  data.num_virtual_shards (given even with one file and one stream)."""
  (tmp_path / 'a.jsonl').write_text(''.join(f'{{"body": "the king {i}"}}\n' for i in range(20)))
  cfg = _lm_config(f'jsonl:{tmp_path}/a.jsonl;field=nope', num_streams)
  it = pipeline.get_dataset(cfg, 'train')
  with pytest.raises(DataError, match=r"^data train: no usable record in the input \(data."
                                      r"train_source; skipped 20 x missing field 'nope' "
                                      r"\(first at .*a.jsonl:\d+\)\)\.$"):
    next(it)
  if num_streams == 4:  # a host whose own streams are empty cannot tell for the others': two
    # documents for four streams, process 1 of 2 (streams 2 and 3) keeps the shard advice
    (tmp_path / 'b.txt').write_text('the king is here\nthe queen is there\n')
    cfg.data.update(dict(train_source=f'text:{tmp_path}/b.txt', doc_boundary='line'))
    it = pipeline.get_dataset(cfg, 'train', shard_index=1, num_shards=2)
    with pytest.raises(DataError, match=r'stream 2 of 4 \(data.num_virtual_shards\) has no '
                                        r'usable records: .* or a lower data.num_virtual_shards'):
      next(it)


def _first_batch_within(it, seconds=120):
  """next(it) in a thread: the error it raises, or a failure if it has not returned in time
  (a pipeline spinning without a record would hang the suite)."""
  import threading
  got = {}
  thread = threading.Thread(target=lambda: got.update(result=_call(lambda: next(it))),
                            daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f'no batch and no error after {seconds} s: the pipeline spins'
  return got['result']


def _call(fn):
  try:
    return fn()
  except Exception as e:  # noqa: BLE001 - returned for the test to check
    return e


def test_an_input_whose_records_all_tokenize_to_nothing_is_an_error_not_a_hang(tmp_path):
  """Every line non-empty text that SentencePiece reads as no token (zero-width spaces): the
  endless stream repeated its documents forever, each dropped after tokenizing (training and
  inspect hung, spinning a core). Now an epoch without a usable record ends the stream."""
  (tmp_path / 'zw.txt').write_text('\u200b\u200b\n' * 6)
  (tmp_path / 'good.txt').write_text(''.join(f'the king {i}\n' for i in range(20)))
  for num_streams in (1, 4):
    cfg = _lm_config(f'text:{tmp_path}/zw.txt', num_streams, doc_boundary='line')
    error = _first_batch_within(pipeline.get_dataset(cfg, 'train'))
    assert isinstance(error, DataError) and re.match(
        r'data train: no usable record in the input \(data.train_source; skipped \d+ x record '
        r'without tokens', str(error)), error
  cfg = _lm_config(f'text:{tmp_path}/good.txt,text:{tmp_path}/zw.txt', 1, doc_boundary='line')
  error = _first_batch_within(pipeline.get_dataset(cfg, 'train'))
  assert isinstance(error, DataError) and 'has no usable records of source text:' in str(error)
  assert 'zw.txt' in str(error), error


def test_double_star_globs_are_recursive(tmp_path):
  """`dir/**/*.txt` reads every level below dir (was Python's non-recursive glob: '**' as
  '*', exactly one level, and the other files silently left out)."""
  for rel in ('a.txt', 'sub/b.txt', 'sub/deeper/c.txt', 'sub/deeper/d.json'):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_text('x\n')
  got = sources.expand_glob(f'{tmp_path}/**/*.txt', 'test')
  assert got == [f'{tmp_path}/{r}' for r in ('a.txt', 'sub/b.txt', 'sub/deeper/c.txt')]


@pytest.mark.parametrize('entry,message', [
    ('jsonl:x.jsonl;split=validation', r"option 'split' in 'jsonl:x.jsonl;split=validation' applies "
                                       r"to tfds sources only; a jsonl source takes rate, field"),
    ('text:x.txt;field=body', r"option 'field' .* applies to jsonl and tsv and tfds sources only"),
    ('tsv:x.tsv;boundary=line', r"option 'boundary' .* applies to text sources only"),
    ('tfds:c4/en;data_dir=/a;data_dir=/b', r"option 'data_dir' is given twice"),
])
def test_source_options_a_kind_does_not_use_are_refused(entry, message):
  """An option the source's kind ignores (a split for a JSONL file, a field for plain text) or
  one given twice was silently dropped; it is a one-line error naming the entry."""
  with pytest.raises(DataError, match=rf'data.train_source: {message}'):
    sources.parse_sources(entry)
  sources.parse_sources('jsonl:x.jsonl;field=body;rate=2,text:y.txt;boundary=line,tfds:c4/en;split=train[:5%]')


def test_resume_after_the_sources_files_changed_is_a_resume_mismatch(tmp_path):
  """The files a source's glob matches (or which of them are usable) changed since the save:
  a ResumeMismatch naming the source and the numbers, which train reports and leaves every
  checkpoint where it was. Was tf.data's multi-line FailedPreconditionError (train then set
  every checkpoint aside as unreadable), or, with the same interleave cycle length, a
  silent resume onto other files."""
  def write(i, text=None):
    (tmp_path / f'p{i}.txt').write_text(
        ''.join(f'{WORDS[i]} {WORDS[j % 10]}\n\n' for j in range(20)) if text is None else text)
  for i in range(4):
    write(i)
  write(4, '')   # empty: skipped at start-up
  cfg = data_config(objective='causal_lm', inputs_length=16, targets_length=16, shuffle_buffer_size=4,
                    num_virtual_shards=2, train_source=f'text:{tmp_path}/*.txt')
  cfg.model.family = 'decoder'
  it = pipeline.get_dataset(cfg, 'train')
  next(it), next(it)
  it.save(str(tmp_path / 'ckpt'))
  write(4)       # now usable: stream 0 reads 3 files, not 2 (its size is what names it)
  with pytest.raises(sources.ResumeMismatch, match=r"was saved with data.train_source file "
                                                   r"sizes='text:.*: 924 bytes, .*this config has "
                                                   r".*: 1170 bytes.* \(files changed since: "
                                                   r"p4.txt 0 -> 246 bytes\)\.$"):
    pipeline.get_dataset(cfg, 'train').restore(str(tmp_path / 'ckpt'))
  write(5), write(6)
  os.remove(tmp_path / 'p1.txt')
  with pytest.raises(sources.ResumeMismatch, match=r"was saved with data.train_source files="
                                                   r"'text:.*: 5 files.*this config has .*: 6 files"
                                                   r".* \(files changed since: p1.txt gone; p4.txt "
                                                   r"0 -> 246 bytes; p5.txt new and 1 more\)\.$"):
    pipeline.get_dataset(cfg, 'train').restore(str(tmp_path / 'ckpt'))


def test_resume_onto_files_of_other_content_under_the_same_names_is_a_resume_mismatch(tmp_path):
  """The same file names with other content (the glob re-resolved from another cwd onto
  another copy of the corpus, or a file edited or appended to): tf.data would resume at its
  saved byte offset into other text, silently. Positions saved before file sizes were
  recorded still resume."""
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  for i in range(3):
    (corpus / f'p{i}.txt').write_text(''.join(f'{WORDS[i]} {WORDS[j % 10]}\n\n' for j in range(20)))
  cfg = data_config(objective='causal_lm', inputs_length=16, targets_length=16, shuffle_buffer_size=4,
                    num_virtual_shards=2, train_source=f'text:{corpus}/*.txt')
  cfg.model.family = 'decoder'
  it = pipeline.get_dataset(cfg, 'train')
  next(it), next(it)
  it.save(str(tmp_path / 'ckpt'))
  with open(corpus / 'p1.txt', 'a') as f:
    f.write('an appended line\n')
  with pytest.raises(sources.ResumeMismatch, match=r"was saved with data.train_source file sizes="
                                                   r"'text:.*: \d+ bytes, sizes crc32 \d+'; this "
                                                   r"config has .* bytes"):
    pipeline.get_dataset(cfg, 'train').restore(str(tmp_path / 'ckpt'))
  _as_saved_before_file_sizes(tmp_path / 'ckpt')
  pipeline.get_dataset(cfg, 'train').restore(str(tmp_path / 'ckpt'))


def _as_saved_before_file_sizes(ckpt):
  """Rewrites a saved data position as versions that did not record file sizes (nor write a
  file listing) saved it."""
  os.remove(ckpt / 'files.json')
  for meta in glob.glob(str(ckpt / 'stream-*.json')):
    with open(meta) as f:
      saved = json.load(f)
    del saved['settings']['data.train_source file sizes']
    with open(meta, 'w') as f:
      json.dump(saved, f)


def test_resume_with_another_batch_size_or_length_names_the_config_field(tmp_path):
  """It printed both feature-shape dicts (880 characters) without naming the field."""
  (tmp_path / 'a.txt').write_text(''.join(f'{WORDS[j % 10]} {WORDS[j % 7]}\n\n' for j in range(40)))
  cfg = data_config(objective='causal_lm', inputs_length=16, targets_length=16, shuffle_buffer_size=4,
                    num_virtual_shards=2, train_source=f'text:{tmp_path}/a.txt')
  cfg.model.family = 'decoder'
  it = pipeline.get_dataset(cfg, 'train', batch_size=4)
  next(it)
  it.save(str(tmp_path / 'ckpt'))
  with pytest.raises(sources.ResumeMismatch, match=r'was saved with train.batch_size=4 \(2 rows '
                                                   r'per stream\); this config has '
                                                   r'train.batch_size=8\.$'):
    pipeline.get_dataset(cfg, 'train', batch_size=8).restore(str(tmp_path / 'ckpt'))
  cfg.data.targets_length = 32
  with pytest.raises(sources.ResumeMismatch, match=r'was saved with other feature lengths '
                                                   r'\(data.inputs_length / data.targets_length\): '
                                                   r'decoder_input_tokens \[16\] then, \[32\] now'):
    pipeline.get_dataset(cfg, 'train', batch_size=4).restore(str(tmp_path / 'ckpt'))


def _read_lines_of(directory, policy):
  """(documents, skips) of one ordered pass over text:DIR/* with a document per line."""
  from t5x_lite.data import files
  src = sources.parse_sources(f'text:{directory}/*')[0]
  skips = sources.SkipCounter()
  ds = files.documents(src, sources.expand_glob(src.target, 'test'), ('text',), stream=0,
                       num_streams=1, train=False, seed=0, boundary='line',
                       on_bad_input=policy, skips=skips)
  return [r[0].decode() for r in ds.as_numpy_iterator()], skips


def test_compressed_files_other_than_gz_are_counted_as_such(tmp_path):
  """bzip2 / xz / zstd / zip files, and gzip data in a file not named .gz, were read as text:
  their lines counted as 'invalid UTF-8' (a misleading reason, one per line). Each is one
  counted skip naming the file, or with on_bad_input=error a one-line error."""
  import bz2
  import gzip
  import lzma
  body = b''.join(b'the king and the queen %d\n\n' % i for i in range(50))
  (tmp_path / 'a.txt.bz2').write_bytes(bz2.compress(body))
  (tmp_path / 'b.txt.xz').write_bytes(lzma.compress(body))
  (tmp_path / 'c.txt.zst').write_bytes(b'\x28\xb5\x2f\xfd' + body)   # zstd's frame magic
  (tmp_path / 'd.txt').write_bytes(gzip.compress(body))
  (tmp_path / 'e.txt').write_bytes(b'BZh is how this plain line starts\n')
  read = lambda policy: _read_lines_of(tmp_path, policy)

  docs, skips = read('skip')
  assert docs == ['BZh is how this plain line starts']
  reason = 'compressed file not read (only gzip files named .gz are)'
  assert dict(skips.counts) == {reason: 4} and skips.first[reason] == f'{tmp_path}/a.txt.bz2'
  with pytest.raises(DataError, match=rf'a.txt.bz2: {re.escape(reason)}: bzip2 data'):
    read('error')



def test_utf16_and_utf32_files_are_counted_not_read_as_text(tmp_path):
  """UTF-16 text (Notepad's "Unicode", PowerShell 5's `>`) is valid UTF-8 with a NUL
  between characters after its byte-order mark: its lines were trained on as <unk>-strewn
  text, with one 'invalid UTF-8' skip (the mark's line) to show for a whole garbage file.
  Now each such file, with or without a mark, plain or .gz, is one counted skip, or an
  error naming it."""
  import gzip
  body = 'the king is dead\nlong live the king\n'
  (tmp_path / 'a.txt').write_bytes(body.encode('utf-16'))          # with a byte-order mark
  (tmp_path / 'b.txt').write_bytes(body.encode('utf-16-be'))       # without one
  (tmp_path / 'c.txt').write_bytes(body.encode('utf-32'))
  (tmp_path / 'd.txt.gz').write_bytes(gzip.compress(body.encode('utf-16')))
  (tmp_path / 'e.txt').write_bytes(('\ufeff' + body).encode('utf-8'))  # UTF-8, its mark dropped
  read = lambda policy: _read_lines_of(tmp_path, policy)

  docs, skips = read('skip')
  assert docs == ['the king is dead', 'long live the king']
  reason = 'UTF-16 / UTF-32 file not read (UTF-8 text only)'
  assert dict(skips.counts) == {reason: 4} and skips.first[reason] == f'{tmp_path}/a.txt'
  with pytest.raises(DataError, match=rf'a.txt: {re.escape(reason)}: UTF-16LE text; convert '
                                      r'it, e\.g\. `iconv -f UTF-16 -t UTF-8`'):
    read('error')


def test_a_gzip_file_padded_with_zeros_is_counted_not_a_crash_naming_no_file(tmp_path):
  """Zero bytes after a .gz file's data (block-padding writers; `gzip -t` accepts them)
  stopped the run inside tf.data's reader ('incorrect header check', naming only the
  stream). Such a file is one counted skip, or an error naming it; a file whose last member
  is empty (its last 8 bytes zeros too, no padding) is read whole."""
  import gzip
  (tmp_path / 'a.txt.gz').write_bytes(gzip.compress(b'first line\nsecond line\n') + bytes(512))
  (tmp_path / 'b.txt.gz').write_bytes(gzip.compress(b'third line\n') + gzip.compress(b''))
  docs, skips = _read_lines_of(tmp_path, 'skip')
  assert docs == ['third line']
  reason = "gzip file with zero padding after its data not read (tf.data's reader stops there)"
  assert dict(skips.counts) == {reason: 1} and skips.first[reason] == f'{tmp_path}/a.txt.gz'
  with pytest.raises(DataError, match=rf'a.txt.gz: {re.escape(reason)}: rewrite it without: '
                                      r'gzip -dc FILE \| gzip > NEW'):
    _read_lines_of(tmp_path, 'error')

@pytest.mark.parametrize('objective,option', [('prefix_lm', 'inputs=question'),
                                              ('span_corruption', 'targets=answer'),
                                              ('text_to_text', 'field=question')])
def test_a_source_option_the_objective_does_not_read_is_an_error(tmp_path, objective, option):
  """`inputs=` / `targets=` are text_to_text's, `field=` the other objectives': given to the
  wrong one they would be silently ignored (and another field read)."""
  (tmp_path / 'x.jsonl').write_text('{"question": "to be", "answer": "or not", "text": "t"}\n')
  cfg = data_config(objective=objective, inputs_length=16, targets_length=8,
                    train_source=f'jsonl:{tmp_path}/x.jsonl;{option}')
  with pytest.raises(DataError, match=f'option {option.split("=")[0]}= of source .* is not read '
                                      f'by data.objective=.{objective}.'):
    pipeline.get_dataset(cfg, 'train')


@pytest.mark.parametrize('boundary', ['blank_line', 'file'])
def test_a_paragraph_no_blank_line_ends_is_closed_at_a_bounded_size(tmp_path, boundary):
  """A file without blank lines (one sentence per line) under blank_line or file: its one
  open document was re-copied at every batch of lines, time quadratic in the file's length
  (2.4 MB: 129 s and 3.4 GB to the first batch). It is closed at a batch end once over
  MAX_OPEN_DOCUMENT_BYTES: bounded documents, the text whole and in order."""
  from t5x_lite.data import files
  lines = [f'line {i} of the king and the queen' for i in range(40000)]  # ~1.3 MB
  (tmp_path / 'a.txt').write_text('\n'.join(lines) + '\n')
  src = sources.parse_sources(f'text:{tmp_path}/a.txt')[0]
  ds = files.documents(src, [str(tmp_path / 'a.txt')], ('text',), train=False,
                       skips=sources.SkipCounter(), stream=0, num_streams=1, seed=0,
                       boundary=boundary, on_bad_input='skip', shuffle_buffer_size=4)
  docs = [d[0].decode() for d in ds.as_numpy_iterator()]
  limit = files.MAX_OPEN_DOCUMENT_BYTES
  assert len(docs) >= len('\n'.join(lines)) // (2 * limit)
  assert all(len(d.encode()) <= 2 * limit for d in docs)
  assert '\n'.join(docs) == '\n'.join(lines)


def test_files_dealt_unevenly_over_the_streams_are_a_warning(tmp_path, caplog):
  """5 equal files over 4 streams: stream 0 reads 2, the others 1, and each stream fills a
  quarter of every batch, so files 1-3 were read twice as often as files 0 and 4, unsaid."""
  for i in range(5):
    (tmp_path / f'{i}.txt').write_text(''.join(f'the king {i} {j}\n' for j in range(8)))
  cfg = _lm_config(f'text:{tmp_path}/*.txt', 4, doc_boundary='line')
  with caplog.at_level('WARNING', logger='t5x_lite.data.files'):
    pipeline.get_dataset(cfg, 'train')
  said = [r.getMessage() for r in caplog.records if 'unevenly' in r.getMessage()]
  assert len(said) == 1 and 'deals 5 file(s) unevenly over data.num_virtual_shards=4 streams ' \
      '(1-2 files' in said[0] and '~2.0x as often' in said[0], said
  caplog.clear()
  for name in (f'text:{tmp_path}/[0-3].txt', f'text:{tmp_path}/[0-2].txt'):  # 4 / 4; 3 < 4
    cfg.data.train_source = name
    with caplog.at_level('WARNING', logger='t5x_lite.data.files'):
      pipeline.get_dataset(cfg, 'train')
    assert not [r for r in caplog.records if 'unevenly' in r.getMessage()], name


def test_a_text_source_matching_jsonl_files_is_a_warning(tmp_path, caplog):
  """`text:dir/*` over JSONL files trained on '{"text": ...' lines, unsaid (the vocab command
  refuses such a glob)."""
  (tmp_path / 'a.jsonl').write_text(''.join(f'{{"text": "the king {i}"}}\n' for i in range(8)))
  (tmp_path / 'b.txt').write_text(''.join(f'the queen {i}\n' for i in range(8)))
  for source, said in ((f'text:{tmp_path}/*', 1), (f'text:{tmp_path}/*.txt', 0),
                       (f'jsonl:{tmp_path}/*.jsonl', 0)):
    caplog.clear()
    with caplog.at_level('WARNING', logger='t5x_lite.data.files'):
      pipeline.get_dataset(_lm_config(source, 1, doc_boundary='line'), 'train')
    warned = [r.getMessage() for r in caplog.records if 'JSONL / TSV' in r.getMessage()]
    assert len(warned) == said, (source, warned)
    assert all('matches 1 JSONL / TSV file(s) (' in w and 'a.jsonl' in w for w in warned)
