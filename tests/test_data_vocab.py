"""Vocabulary: the T5 id layout, encode/decode, training CLI, bad vocabulary files."""
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

from data_helpers import ROOT, data_config

from t5x_lite.data import vocab as vocab_lib  # noqa: E402

SHIPPED = os.path.join(ROOT, 'data/vocab/shakespeare_1k.model')


@pytest.fixture(scope='module')
def vocab():
  return vocab_lib.Vocabulary(SHIPPED, extra_ids=100)


def test_t5_id_layout(vocab):
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.mask_id) == (0, 1, 2, 3)
  assert vocab.piece_size == 1000 and vocab.vocab_size == 1100
  assert vocab.sentinel(0) == 1099 and vocab.sentinel(99) == 1000
  with pytest.raises(vocab_lib.VocabError, match='sentinel 100 out of range'):
    vocab.sentinel(100)
  assert vocab.special_mask[[0, 1, 2, 3, 1000, 1099]].all() and not vocab.special_mask[4:1000].any()
  assert len(vocab.regular_ids) == 996 and vocab.regular_ids.min() == 4


def test_encode_decode(vocab):
  text = 'To be, or not to be, that is the question.'
  ids = vocab.encode(text)
  assert ids and 1 not in ids and 0 not in ids
  assert vocab.decode(ids) == text
  assert vocab.decode(ids + [1] + vocab.encode('never shown') + [0, 0]) == text   # stops at EOS
  assert vocab.decode([0] + ids + [0]) == text                                    # padding dropped
  assert vocab.decode([vocab.sentinel(0)] + vocab.encode('the') + [vocab.sentinel(1), 1]) == \
      '<extra_id_0> the <extra_id_1>'
  assert vocab.decode(vocab.encode('a') + [3] + vocab.encode('b')) == 'a [MASK] b'
  assert vocab.encode('to <extra_id_7> be') == vocab.encode('to') + [vocab.sentinel(7)] + vocab.encode('be')
  assert vocab.decode(vocab.encode('a') + [1] + vocab.encode('b'), stop_at_eos=False) == 'a </s> b'


def test_from_config_resolves_relative_to_the_repo(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  v = vocab_lib.from_config(data_config().data)
  assert v.vocab_size == 1100
  cfg = data_config(vocab='data/vocab/missing.model')
  with pytest.raises(vocab_lib.VocabError, match=r"data.vocab: SentencePiece model 'data/vocab/missing.model' does not exist"):
    vocab_lib.from_config(cfg.data)


def test_vocabulary_with_a_foreign_layout_is_rejected(tmp_path):
  lines = [l for l in open(os.path.join(ROOT, 'data/corpus/validation.txt')) if l.strip()][:3000]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / 'plain'),
                                 vocab_size=300, minloglevel=2)  # default layout: unk 0, bos 1, eos 2
  with pytest.raises(vocab_lib.VocabError, match=r"has pad/eos/unk ids -1/2/0; the T5 layout needs 0/1/2"):
    vocab_lib.Vocabulary(str(tmp_path / 'plain.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(vocab_lib.VocabError, match='is not a SentencePiece model'):
    vocab_lib.Vocabulary(str(tmp_path / 'junk.model'))


def test_vocab_cli_trains_bpe_and_reports_coverage(tmp_path):
  src = open(os.path.join(ROOT, 'data/corpus/validation.txt'), 'rb').read()[:150000]
  (tmp_path / 'a.txt').write_bytes(src + b'\nan invalid \xff line\n')
  out = tmp_path / 'v' / 'tiny.model'
  r = subprocess.run([sys.executable, '-m', 't5x_lite.vocab', f'--input={tmp_path}/*.txt', '--vocab_size=300',
                      '--model_type=bpe', f'--output={out}', f'--eval_input={tmp_path}/a.txt'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'wrote {out}: 300 pieces + 100 extra ids = vocab_size 400 (bpe); mask id 3' in r.stdout
  said = r.stdout.splitlines()
  assert any(l.startswith('input: skipped 1 x invalid UTF-8 (first at') for l in said)
  # --eval_input's bad lines are said too (they were dropped from its coverage unsaid)
  assert any(l.startswith(f'eval input: skipped 1 x invalid UTF-8 (first at {tmp_path}/a.txt:')
             for l in said), said
  assert 'train coverage:' in r.stdout and 'character coverage 100.0000%' in r.stdout
  v = vocab_lib.Vocabulary(str(out))
  assert (v.pad_id, v.eos_id, v.unk_id, v.mask_id, v.vocab_size) == (0, 1, 2, 3, 400)
  r = subprocess.run([sys.executable, '-m', 't5x_lite.vocab', f'--input={tmp_path}/none-*.txt',
                      f'--output={out}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and 'matches no files' in r.stderr.strip().splitlines()[-1]


def test_shipped_vocabulary_covers_the_corpus(vocab):
  lines = [l.strip() for l in open(os.path.join(ROOT, 'data/corpus/validation.txt')) if l.strip()]
  c = vocab_lib.coverage(vocab, lines)
  assert c['char_coverage'] == 1.0 and c['unk_tokens'] == 0
  assert 1.5 < c['tokens_per_word'] < 3.0


TRICKY = ['', ' ', '\t \n', 'To be, or not to be', '  leading and   inner  spaces  ',
          'héllo wörld ñ 日本語 🙂 \u00a0nbsp', 'line\r\nbreak', "don't [MASK] it",
          '<extra_id_0>', 'a<extra_id_0>b', ' <extra_id_1> ', '<extra_id_5><extra_id_6>',
          'x <extra_id_99> y <extra_id_100> z', '<extra_id_00> <extra_id_123456789012>',
          '<extra_id_x> <extra_id_-1>', 'end <extra_id_3>',
          # NUL: tensorflow-text's tokenizer stopped reading at it (the rest of a document
          # was lost, uncounted); sentencepiece makes it <unk>
          'Before nul\x00after nul.', '\x00leading', 'a \x00 b <extra_id_2>\x00c', '\x00',
          # Unicode (not ASCII) whitespace beside a sentinel: `encode` dropped the piece as
          # blank, the in-graph strip keeps it
          '\x85<extra_id_0>', '\u3000<extra_id_1> x', 'a\u2028<extra_id_2>\x85', '\xa0']
BLANK = ' \t\n\v\f\r'  # what tf.strings.strip removes: ASCII whitespace only


def test_tf_encode_matches_python_sentencepiece_on_tricky_strings(vocab):
  """tensorflow-text's in-graph tokenizer (what the streaming pipeline runs) against the
  Python sentencepiece processor: plain text compared to `encode` of the raw processor;
  text with sentinels to the raw processor's ids of each piece between sentinels."""
  import tensorflow as tf
  sp = spm.SentencePieceProcessor(model_file=SHIPPED)

  def reference(text, extra_ids):
    ids, pos = [], 0
    for m in vocab_lib._SENTINEL_RE.finditer(text):  # pylint: disable=protected-access
      k = int(m.group(1))
      if k >= extra_ids:
        continue
      if text[pos:m.start()].strip(BLANK):
        ids += sp.encode(text[pos:m.start()])
      ids.append(1100 - 1 - k)
      pos = m.end()
    if pos == 0:
      return sp.encode(text) if text.strip(BLANK) else []
    return ids + (sp.encode(text[pos:]) if text[pos:].strip(BLANK) else [])

  got = vocab.tf_encode(tf.constant(TRICKY)).to_list()
  for text, ids in zip(TRICKY, got):
    assert ids == reference(text, 100) == vocab.encode(text), text
  assert got[8] == [1099] and got[11] == [1094, 1093]
  no_sentinels = vocab_lib.Vocabulary(SHIPPED, extra_ids=0)
  for text, ids in zip(TRICKY, no_sentinels.tf_encode(tf.constant(TRICKY)).to_list()):
    assert ids == (sp.encode(text) if text.strip(BLANK) else []) == no_sentinels.encode(text), text


def vocab_cli(*args):
  return subprocess.run([sys.executable, '-m', 't5x_lite.vocab', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_vocab_cli_reads_gzip_files_like_the_pipeline(tmp_path):
  import gzip
  src = open(os.path.join(ROOT, 'data/corpus/validation.txt'), 'rb').read()[:30000]
  src = src[:src.rindex(b'\n') + 1]  # whole lines
  (tmp_path / 'a.txt.gz').write_bytes(gzip.compress(src))
  r = vocab_cli(f'--input={tmp_path}/*.gz', '--vocab_size=200', f'--output={tmp_path}/v')
  assert r.returncode == 0, r.stderr[-2000:]
  n = len([l for l in src.decode('utf-8').splitlines() if l.strip()])
  assert f'train coverage: {n} lines' in r.stdout and 'skipped' not in r.stdout


def test_vocab_cli_skips_compressed_files_the_pipeline_does_not_read(tmp_path):
  """A .bz2 file beside a text file was read as lines of invalid UTF-8 (counted as such);
  it is skipped and said as the pipeline says it; so is a UTF-16 file."""
  import bz2
  text = open(os.path.join(ROOT, 'data/corpus/validation.txt'), 'rb').read()[:20000]
  (tmp_path / 'a.txt').write_bytes(text)
  (tmp_path / 'b.txt.bz2').write_bytes(bz2.compress(text))
  r = vocab_cli(f'--input={tmp_path}/*', '--vocab_size=100', f'--output={tmp_path}/v')
  assert r.returncode == 0, r.stderr[-2000:]
  assert ('input: skipped 1 x compressed file not read (only gzip files named .gz are) '
          f'(first at {tmp_path}/b.txt.bz2)') in r.stdout.splitlines(), r.stdout
  (tmp_path / 'b.txt.bz2').unlink()
  (tmp_path / 'c.txt').write_bytes(text.decode('utf-8').encode('utf-16'))  # as the pipeline
  r = vocab_cli(f'--input={tmp_path}/*.txt', '--vocab_size=100', f'--output={tmp_path}/v')
  assert r.returncode == 0, r.stderr[-2000:]
  assert ('input: skipped 1 x UTF-16 / UTF-32 file not read (UTF-8 text only) '
          f'(first at {tmp_path}/c.txt)') in r.stdout.splitlines(), r.stdout


def test_split_long_keeps_every_word_in_pieces_under_the_limit():
  text = ' '.join(['alpha', 'ø' * 30, 'beta'] * 20) + ' ' + 'x' * 300
  pieces = vocab_lib.split_long(text, limit=100)
  assert len(pieces) > 1 and all(len(p.encode('utf-8')) <= 100 for p in pieces)
  assert ''.join(pieces).replace(' ', '') == text.replace(' ', '')
  assert vocab_lib.split_long('short line', limit=100) == ['short line']


def test_vocab_cli_trains_on_lines_over_sentencepieces_limit(tmp_path):
  """SentencePiece drops sentences over 64 KiB without a word: the long line (the only one
  with 'ø') is trained on in pieces, and the split is reported."""
  short = open(os.path.join(ROOT, 'data/corpus/validation.txt')).read(20000)
  long = ' '.join(short.split() * 4 + ['frøm'] * 200)
  assert len(long.encode('utf-8')) > vocab_lib.MAX_SENTENCE_BYTES
  (tmp_path / 'a.txt').write_text(short + '\n' + long + '\n')
  r = vocab_cli(f'--input={tmp_path}/a.txt', '--vocab_size=100', f'--output={tmp_path}/v')
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'input: split 1 line longer than 65536 bytes' in r.stdout
  v = vocab_lib.Vocabulary(str(tmp_path / 'v.model'))
  assert v.unk_id not in v.encode('frøm') and 'uncovered' not in r.stdout


@pytest.mark.parametrize('args,message', [
    (['--eval_input={d}/none-*.txt'], "--eval_input: '{d}/none-*.txt' matches no files"),
    (['--vocab_size=0'], '--vocab_size=0: must be at least 5'),
    (['--vocab_size=20000'], '--vocab_size=20000 is more pieces than this input holds '
                             '(SentencePiece: Vocabulary size too high (20000). Please set it to '
                             'a value <='),
    (['--input={d}/blank.txt'], "--input='{d}/blank.txt': no non-blank lines; skipped 1 x file "
                                'without non-blank lines'),
    (['--eval_input={d}/blank.txt'], "--eval_input='{d}/blank.txt': no non-blank lines"),
    (['--input=text:{d}/a.txt,text:{d}/blank.txt'],
     "no non-blank lines in source text:{d}/blank.txt; skipped 1 x file without"),
    (['--input=text:{d}/a.txt;rate=2'], 'option rate= of source text:{d}/a.txt is not read '
                                        'here: the vocabulary is trained on every line'),
    (['--output={d}/'], '--output={d}/ is a directory: give a file path in it, e.g. '
                        '--output={d}/spm.model'),  # (it wrote {d}/.model, hidden)
    (['--output={d}'], '--output={d} is a directory'),
    (['--output={d}/a.txt/v'], '--output={d}/a.txt/v: {d}/a.txt is a file, not a directory.'),
    (['--character_coverage=0.9'], '--character_coverage=0.9: must be in [0.98, 1.0].'),
])
def test_vocab_cli_bad_flags_fail_before_training_naming_the_flag(tmp_path, args, message):
  (tmp_path / 'a.txt').write_bytes(
      open(os.path.join(ROOT, 'data/corpus/validation.txt'), 'rb').read()[:20000])
  (tmp_path / 'blank.txt').write_text('  \n\t\n')
  r = vocab_cli(f'--input={tmp_path}/a.txt', '--vocab_size=100', f'--output={tmp_path}/v',
                *[a.format(d=tmp_path) for a in args])
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(lines) == 1 and message.format(d=tmp_path) in lines[0], r.stderr
  assert not (tmp_path / 'v.model').exists()  # failed before training


def test_vocab_cli_trains_on_a_mixture_as_on_its_sources_lines_in_turn(tmp_path):
  """--input takes several sources as data.train_source does (it failed with 'too many
  values to unpack'): the vocabulary is the one trained on one file of their lines."""
  lines = open(os.path.join(ROOT, 'data/corpus/validation.txt')).read(30000).splitlines()
  (tmp_path / 'a.txt').write_text('\n'.join(lines[:200]) + '\n')
  (tmp_path / 'b.txt').write_text('\n'.join(lines[200:]) + '\n')
  (tmp_path / 'all.txt').write_text('\n'.join(lines) + '\n')
  for name, given in (('mix', f'text:{tmp_path}/a.txt,text:{tmp_path}/b.txt'),
                      ('one', f'{tmp_path}/all.txt')):
    r = vocab_cli(f'--input={given}', '--vocab_size=150', f'--output={tmp_path}/{name}')
    assert r.returncode == 0, r.stderr[-2000:]
    n = len([l for l in lines if l.strip()])
    assert f'train coverage: {n} lines' in r.stdout
  assert (tmp_path / 'mix.vocab').read_text() == (tmp_path / 'one.vocab').read_text()


def test_vocab_cli_trains_on_a_jsonl_field_and_refuses_a_bare_jsonl_glob(tmp_path):
  """A JSONL corpus given as a bare glob trained on its JSON syntax (pieces like '"}' and
  '{'); it is an error naming the fix, and `jsonl:GLOB;field=F` trains on the field's text
  only (a record's lines each), read as the pipeline reads it: a number as the line writes
  it, bad records counted under the pipeline's reasons."""
  import json
  lines = open(os.path.join(ROOT, 'data/corpus/validation.txt')).read(40000).splitlines()
  records = [json.dumps({'text': '\n'.join(lines[i:i + 3]), 'id': i})
             for i in range(0, len(lines) - 3, 3)]
  (tmp_path / 'a.jsonl').write_text('\n'.join(records + [
      '{"text": 5.250}', 'not json', '{"text": ["a list"]}', '{"id": 1}',
      '{"text": "lone \\ud800"}']) + '\n')
  r = vocab_cli(f'--input={tmp_path}/*.jsonl', '--vocab_size=200', f'--output={tmp_path}/v')
  assert r.returncode == 1 and "matches JSONL files: say which field to train on, e.g. " \
      f"--input='jsonl:{tmp_path}/*.jsonl;field=text'" in r.stderr.strip().splitlines()[-1]
  r = vocab_cli(f'--input=jsonl:{tmp_path}/*.jsonl;field=text', '--vocab_size=200',
                f'--output={tmp_path}/v')
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'input: skipped ' in r.stdout
  k = len(records)  # the bad lines' numbers: k + 2 ...
  skipped = [l for l in r.stdout.splitlines() if l.startswith('input: skipped ')]
  assert len(skipped) == 1 and skipped[0].count(' x ') == 4, r.stdout
  for reason, line in [('invalid JSON', k + 2), ("field 'text' is not a string or number", k + 3),
                       ("missing field 'text'", k + 4),
                       ("field 'text' is not valid Unicode", k + 5)]:  # (the surrogate crashed once)
    assert f'1 x {reason} (first at {tmp_path}/a.jsonl:{line})' in skipped[0]
  n = len([l for l in lines[:len(records) * 3] if l.strip()]) + 1  # + the number's line
  assert f'train coverage: {n} lines' in r.stdout
  pieces = [l.split('\t')[0] for l in open(tmp_path / 'v.vocab', encoding='utf-8')]
  assert not [p for p in pieces if '{' in p or '}' in p or '":' in p]  # (the text has quotes)


def test_vocab_cli_samples_at_most_max_sentences_and_caps_coverage(tmp_path):
  """Nothing of the corpus is held in a Python list: SentencePiece draws --max_sentences
  lines from the stream (with fewer, a vocabulary this large cannot be built: its own
  error), and coverage reads the first --coverage_lines."""
  src = open(os.path.join(ROOT, 'data/corpus/validation.txt'), 'rb').read()[:60000]
  (tmp_path / 'a.txt').write_bytes(src)
  n = len([l for l in src.decode('utf-8', 'ignore').splitlines() if l.strip()])
  r = vocab_cli(f'--input={tmp_path}/a.txt', '--vocab_size=150', f'--output={tmp_path}/v',
                '--max_sentences=300', '--coverage_lines=50')
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'input: {n} lines; SentencePiece trained on 300 of them drawn at random' in r.stdout
  assert 'train coverage (the first 50): 50 lines' in r.stdout
  r = vocab_cli(f'--input={tmp_path}/a.txt', '--vocab_size=800', f'--output={tmp_path}/w',
                '--max_sentences=101')
  assert r.returncode == 1 and 'Vocabulary size too high' in r.stderr
  r = vocab_cli(f'--input={tmp_path}/a.txt', '--vocab_size=800', f'--output={tmp_path}/w')
  assert r.returncode == 0, r.stderr[-2000:]  # all of it: enough for 800 pieces
