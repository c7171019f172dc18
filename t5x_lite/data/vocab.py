"""SentencePiece vocabulary with the T5 id layout; training and coverage.

Owns: the `Vocabulary` class (ids, encode/decode, special-token tables used by the
objectives), loading it from `config.data` (`from_config`), training a new SentencePiece
model (`train`) and measuring its coverage (`coverage`). The command line lives in
`t5x_lite/vocab.py`.

Id layout (T5): pad 0, eos 1, unk 2, then the SentencePiece pieces; `extra_ids` sentinels
are appended after the pieces and counted down from the top, so `<extra_id_0>` is
`vocab_size - 1` and `<extra_id_k>` is `vocab_size - 1 - k`. The BERT mask token is the
control piece `[MASK]` (id 3 in vocabularies trained by `train`); a SentencePiece model
without one (e.g. T5's public one) uses `<extra_id_0>` as its mask, like T5's BERT-style
objective does.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MASK_PIECE = '[MASK]'
WORD_START = '\u2581'  # SentencePiece's '▁'
MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece's trainer drops longer sentences, unreported
_SENTINEL_RE = re.compile(r'<extra_id_(\d+)>')
# A piece between sentinels that is only this is not tokenized: what tf.strings.strip
# removes in `tf_encode` (Python's str.strip also takes Unicode spaces such as U+0085).
ASCII_WHITESPACE = ' \t\n\v\f\r'


class VocabError(ValueError):
  """A vocabulary file or setting that cannot be used; the message names it."""


def resolve_path(path: str) -> str:
  """Returns `path` as given if it exists, else relative to the repository root."""
  if not path or os.path.isabs(path) or os.path.exists(path):
    return path
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  candidate = os.path.join(root, path)
  return candidate if os.path.exists(candidate) else path


class Vocabulary:
  """A SentencePiece model plus `extra_ids` sentinels, in the T5 id layout."""

  def __init__(self, model_path: str, extra_ids: int = 100):
    path = resolve_path(model_path)
    if not os.path.isfile(path):
      raise VocabError(f'data.vocab: SentencePiece model {model_path!r} does not exist '
                       f'(cwd {os.getcwd()!r}); train one with `python -m t5x_lite.vocab`.')
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with a long message
      raise VocabError(f'data.vocab: {path!r} is not a SentencePiece model ({e}).'.replace('\n', ' '))
    sp = self._sp
    if (sp.pad_id(), sp.eos_id(), sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise VocabError(
          f'data.vocab: {path!r} has pad/eos/unk ids {sp.pad_id()}/{sp.eos_id()}/{sp.unk_id()}; '
          f'the T5 layout needs 0/1/2 (train it with `python -m t5x_lite.vocab`).')
    if extra_ids < 0:
      raise VocabError(f'data.extra_ids must be >= 0, got {extra_ids}.')
    self.path = path
    self.piece_size = sp.get_piece_size()
    self.extra_ids = int(extra_ids)
    self.vocab_size = self.piece_size + self.extra_ids
    self.pad_id, self.eos_id, self.unk_id = PAD_ID, EOS_ID, UNK_ID
    mask = sp.piece_to_id(MASK_PIECE)
    if mask != self.unk_id and sp.is_control(mask):
      self.mask_id = int(mask)
    elif self.extra_ids > 0:
      self.mask_id = self.sentinel(0)
    else:
      self.mask_id = None
    pieces = [sp.id_to_piece(i) for i in range(self.piece_size)]
    special = np.array([sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                        for i in range(self.piece_size)] + [True] * self.extra_ids, dtype=bool)
    #: [vocab_size] bool: pad/eos/unk/[MASK]/other control pieces and all sentinels.
    self.special_mask = special
    #: int32 ids a random replacement may draw from (every non-special piece).
    self.regular_ids = np.nonzero(~special)[0].astype(np.int32)
    #: [vocab_size] bool: the token starts a word (its piece begins with '▁') or is special.
    self.word_start_mask = np.array(
        [p.startswith(WORD_START) for p in pieces] + [True] * self.extra_ids, dtype=bool) | special

  # ---- ids ----
  def sentinel(self, k: int) -> int:
    """Id of `<extra_id_k>` (= vocab_size - 1 - k)."""
    if not 0 <= k < self.extra_ids:
      raise VocabError(f'sentinel {k} out of range: the vocabulary has {self.extra_ids} extra ids.')
    return self.vocab_size - 1 - k

  def is_sentinel(self, token_id: int) -> bool:
    return self.piece_size <= token_id < self.vocab_size

  # ---- text ----
  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (no EOS). `<extra_id_k>` in the text becomes sentinel k."""
    if not _SENTINEL_RE.search(text) or not self.extra_ids:
      return self._sp.encode(text)
    ids: list[int] = []
    pos = 0
    for m in _SENTINEL_RE.finditer(text):
      if text[pos:m.start()].strip(ASCII_WHITESPACE):
        ids.extend(self._sp.encode(text[pos:m.start()]))
      k = int(m.group(1))
      ids.extend([self.sentinel(k)] if k < self.extra_ids else self._sp.encode(m.group(0)))
      pos = m.end()
    if text[pos:].strip(ASCII_WHITESPACE):
      ids.extend(self._sp.encode(text[pos:]))
    return ids

  def tf_encode(self, texts):
    """In-graph `encode` of a 1-D string tensor -> int32 RaggedTensor [n, None] (no EOS).

    tensorflow-text's SentencePiece op on the same .model gives the ids `encode` gives,
    `<extra_id_k>` included (split out, each text piece encoded on its own, like `encode`),
    so streaming pipelines tokenize inside tf.data with no Python call per document.
    One `tf.function`, traced once per vocabulary: every stream's pipeline calls the same
    graph function instead of rebuilding the tokenizer graph (most of a stream's build).
    """
    return self._tf_encode_fn()(texts)

  def _tf_encode_fn(self):
    if getattr(self, '_tf_encode', None) is None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top (the vocab CLI needs no TF)
      with tf.init_scope():
        self._tf_encode = tf.function(
            self._tf_encode_graph, autograph=False, reduce_retracing=True,
            input_signature=[tf.TensorSpec([None], tf.string)])
    return self._tf_encode

  def _tf_encode_graph(self, texts):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tokenizer = self._tf_tokenizer()
    # tensorflow-text's tokenizer stops reading a text at a NUL byte (the rest is lost);
    # sentencepiece makes NUL an unknown piece, as it does a private-use character: the
    # same ids as `encode` (a byte-fallback vocabulary would spell the two differently).
    texts = tf.strings.regex_replace(texts, '\\x00', '\ue000')
    if not self.extra_ids:
      return tokenizer.tokenize(texts)
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    pattern = _SENTINEL_RE.pattern
    pieces = tf_text.regex_split(texts, pattern, keep_delim_regex_pattern=pattern)
    flat = pieces.flat_values
    is_sentinel = tf.strings.regex_full_match(flat, pattern)
    digits = tf.where(is_sentinel, tf.strings.regex_replace(flat, pattern, r'\1'), '0')
    number = tf.strings.to_number(tf.strings.substr(digits, 0, 9), tf.int64)  # no overflow
    is_sentinel = tf.logical_and(is_sentinel, number < self.extra_ids)
    blank = tf.equal(tf.strings.strip(flat), '')
    text_ids = tokenizer.tokenize(tf.where(tf.logical_or(is_sentinel, blank), '', flat))
    sentinel = tf.RaggedTensor.from_row_lengths(
        tf.cast(self.vocab_size - 1 - tf.boolean_mask(number, is_sentinel), tf.int32),
        tf.cast(is_sentinel, tf.int64), validate=False)
    per_piece = tf.concat([text_ids, sentinel], axis=1)
    return tf.RaggedTensor.from_row_splits(per_piece, pieces.row_splits,
                                           validate=False).merge_dims(1, 2)

  def _tf_tokenizer(self):
    if getattr(self, '_tf_tok', None) is None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
      with open(self.path, 'rb') as f, tf.init_scope():  # eager, even when first met in a trace
        self._tf_tok = tf_text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32)
    return self._tf_tok

  def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
    """Token ids of many texts at once (SentencePiece's threaded encoder; no EOS)."""
    return self._sp.encode(list(texts), num_threads=num_threads or (os.cpu_count() or 1))

  def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
    """Text of `ids`: stops at the first EOS (or, with stop_at_eos=False, renders it as
    `</s>`), drops padding, renders sentinels as `<extra_id_k>` and the mask as `[MASK]`;
    out-of-range ids render as `<id_N>`."""
    out: list[str] = []
    run: list[int] = []

    def flush():
      if run:
        out.append(self._sp.decode(run))
        run.clear()

    for i in (int(t) for t in ids):
      if i == self.eos_id:
        if stop_at_eos:
          break
        flush()
        out.append('</s>')
        continue
      if i == self.pad_id:
        continue
      if self.piece_size <= i < self.vocab_size:
        flush()
        out.append(f'<extra_id_{self.vocab_size - 1 - i}>')
      elif i == self.mask_id:
        flush()
        out.append(MASK_PIECE)
      elif 0 <= i < self.piece_size:
        run.append(i)
      else:
        flush()
        out.append(f'<id_{i}>')
    flush()
    return ' '.join(s for s in out if s)

  def id_to_piece(self, i: int) -> str:
    if self.piece_size <= i < self.vocab_size:
      return f'<extra_id_{self.vocab_size - 1 - i}>'
    return self._sp.id_to_piece(int(i))

  def __repr__(self):
    return (f'Vocabulary({self.path!r}, pieces={self.piece_size}, extra_ids={self.extra_ids}, '
            f'vocab_size={self.vocab_size})')


@functools.lru_cache(maxsize=8)
def _load(path: str, extra_ids: int) -> Vocabulary:
  return Vocabulary(path, extra_ids)


def from_config(data_cfg) -> Vocabulary:
  """The vocabulary named by `config.data` (`data.vocab`, `data.extra_ids`); cached."""
  return _load(resolve_path(data_cfg.vocab), int(data_cfg.extra_ids))


def split_long(text: str, limit: int = MAX_SENTENCE_BYTES) -> list[str]:
  """`text`, or if longer than `limit` UTF-8 bytes its words in pieces of at most `limit`
  bytes (a word of more than limit // 4 characters is cut: 4 bytes is UTF-8's longest)."""
  if len(text.encode('utf-8')) <= limit:
    return [text]
  step = limit // 4
  pieces, words, size = [], [], -1
  for word in (w[i:i + step] for w in text.split() for i in range(0, len(w), step)):
    n = len(word.encode('utf-8')) + 1  # with the space before it
    if words and size + n > limit:
      pieces.append(' '.join(words))
      words, size = [], -1
    words.append(word)
    size += n
  return pieces + ([' '.join(words)] if words else [])


def model_prefix(output: str) -> str:
  """SentencePiece's model_prefix for --output: PATH.model -> PATH, else PATH itself; a
  directory (or a path ending in '/') is refused: the files would be DIR/.model and
  DIR/.vocab."""
  prefix = output[:-len('.model')] if output.endswith('.model') else output
  if os.path.isdir(output) or not os.path.basename(prefix):  # (also 'DIR/', 'DIR/.model')
    raise VocabError(f'--output={output} is a directory: give a file path in it, e.g. '
                     f'--output={os.path.join(output, "spm.model")}.')
  return prefix


def train(sentences: Iterable[str], output: str, vocab_size: int, model_type: str = 'unigram',
          character_coverage: float = 1.0, num_threads: int = 0,
          max_sentences: int = 0) -> str:
  """Trains a SentencePiece model in the T5 layout on `sentences`; returns the .model path.

  `vocab_size` counts SentencePiece pieces (pad, eos, unk and `[MASK]` included); the
  Vocabulary adds the sentinels on top. Sentences over MAX_SENTENCE_BYTES are trained on
  in pieces (`split_long`), not dropped. `max_sentences` > 0: SentencePiece keeps a uniform
  sample of that many (reservoir sampling as it reads; 0 keeps all).
  """
  if model_type not in ('unigram', 'bpe'):
    raise VocabError(f'--model_type must be unigram or bpe, got {model_type!r}.')
  if vocab_size < 5:  # SentencePiece's own errors below 5 name none of this
    raise VocabError(f'--vocab_size={vocab_size}: must be at least 5 (pad, eos, unk and '
                     f'[MASK] take 4 pieces).')
  prefix = model_prefix(output)
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=(p for s in sentences for p in split_long(s)), model_prefix=prefix,
      vocab_size=int(vocab_size), model_type=model_type, character_coverage=character_coverage,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, control_symbols=[MASK_PIECE],
      input_sentence_size=int(max_sentences), shuffle_input_sentence=True,
      max_sentence_length=MAX_SENTENCE_BYTES,
      num_threads=num_threads or (os.cpu_count() or 1), minloglevel=2)
  return prefix + '.model'


def coverage(vocab: Vocabulary, texts: Sequence[str]) -> dict:
  """Coverage statistics of `vocab` on `texts`: the fraction of (non-space) characters the
  vocabulary can represent without UNK, the UNK token rate, tokens per word and per char."""
  import collections
  ids = vocab.encode_batch(texts)
  n_tok = sum(len(x) for x in ids)
  n_unk = sum(x.count(vocab.unk_id) for x in ids)
  chars = collections.Counter()
  for t in texts:
    chars.update(''.join(t.split()))
  n_chars = sum(chars.values())
  uncovered = {c for c in chars if vocab.unk_id in vocab._sp.encode(c)}
  lost = sum(chars[c] for c in uncovered)
  n_words = sum(len(t.split()) for t in texts)
  return dict(tokens=n_tok, unk_tokens=n_unk, unk_rate=n_unk / max(1, n_tok),
              char_coverage=1.0 - lost / max(1, n_chars), uncovered_chars=''.join(sorted(uncovered)),
              tokens_per_word=n_tok / max(1, n_words), chars_per_token=n_chars / max(1, n_tok))
