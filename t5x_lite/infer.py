"""Generate with the latest checkpoint of a run, text or JSONL lines in, JSONL out:

    python -m t5x_lite.infer --config=CFG --workdir=DIR [--input=FILE|-] [--output=FILE|-]

Input detection, tokenization, batching, decoding options and the output: docs/cli.md.
"""
import copy
import gzip
import json
import math
import os
import sys
import zlib
from typing import Iterable, List, Optional, Tuple, Union

from absl import flags

from t5x_lite import checkpoints
from t5x_lite import cli
from t5x_lite import evaluation
from t5x_lite import families
from t5x_lite import run_config
from t5x_lite.data import records, sources

FLAGS = flags.FLAGS
_SHOW = 10  # line numbers listed per kind of report


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_string('input', '-', 'Input file (one example per line: text or JSONL with an '
                      '"inputs" field), or - for stdin.')
  flags.DEFINE_string('output', '-', 'Output JSONL file, or - for stdout.')
  flags.DEFINE_integer('max_length', 0, 'Tokens to generate (0 = data.targets_length).')
  flags.DEFINE_integer('beam_size', 1, 'Beams (1 = greedy); not with --temperature > 0.')
  flags.DEFINE_float('temperature', 0.0, 'Sampling temperature (0 = greedy).')
  flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens (0 = all); needs '
                       '--temperature > 0.')
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1 = off); needs --temperature > 0.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('step', None, 'The checkpoint step to decode with (default: the latest).')
  flags.DEFINE_integer('batch_size', 0, 'Lines per decoding batch (0 = config.train.batch_size).')


class Report:
  """Counts of what happened to the input lines; printed on stderr at the end."""

  def __init__(self):
    self.lines = 0
    self.predicted = 0
    self.empty: List[int] = []
    self.bad: List[Tuple[int, str]] = []
    self.invalid: List[int] = []  # invalid UTF-8, or a lone surrogate (JSON "\ud800")
    self.invalid_json: List[int] = []  # lines that start with '{' but are not JSON
    self.no_tokens: List[int] = []
    self.tokenized = 0  # inputs with tokens: what the truncated count is out of
    self.truncated: List[Tuple[int, int]] = []

  @staticmethod
  def _which(numbers) -> str:
    more = f', ... ({len(numbers) - _SHOW} more)' if len(numbers) > _SHOW else ''
    return ', '.join(str(n) for n in numbers[:_SHOW]) + more

  def summary(self, inputs_length: int, limit: str = '', included: str = 'EOS') -> str:
    """The one closing line; `limit` says why prompts were cut to `inputs_length` tokens
    when it is not data.inputs_length; `included`: the special token that count and each
    line's count include (EOS; BOS for causal-LM prompts, which end without EOS)."""
    s = lambda n: '' if n == 1 else 's'
    parts = [f'read {self.lines} line{s(self.lines)}',
             f'wrote {self.predicted} prediction{s(self.predicted)}',
             f'skipped {len(self.empty)} empty line{s(len(self.empty))}' +
             (f' (line{s(len(self.empty))} {self._which(self.empty)})' if self.empty else '')]
    if self.invalid:
      parts.append(f'skipped {len(self.invalid)} line{s(len(self.invalid))} of invalid UTF-8 '
                   f'or lone-surrogate text (line{s(len(self.invalid))} '
                   f'{self._which(self.invalid)})')
    if self.invalid_json:
      parts.append(f'skipped {len(self.invalid_json)} line{s(len(self.invalid_json))} of invalid '
                   f'JSON (line{s(len(self.invalid_json))} {self._which(self.invalid_json)})')
    if self.bad:
      parts.append(f'skipped {len(self.bad)} JSON line{s(len(self.bad))} without a non-empty '
                   f'string "inputs" (line{s(len(self.bad))} '
                   f'{self._which([n for n, _ in self.bad])})')
    if self.no_tokens:
      parts.append(f'skipped {len(self.no_tokens)} input{s(len(self.no_tokens))} that '
                   f'tokenize{"s" if len(self.no_tokens) == 1 else ""} to nothing '
                   f'(line{s(len(self.no_tokens))} {self._which(self.no_tokens)})')
    parts.append(f'truncated {len(self.truncated)} of {self.tokenized} '
                 f'input{s(self.tokenized)} to ' +
                 (f'{inputs_length} tokens, {included} included ({limit})' if limit else
                  f'data.inputs_length={inputs_length} tokens, {included} included') +
                 (f' (line{s(len(self.truncated))} '
                  f'{self._which([f"{n}: {k} tokens" for n, k in self.truncated])})'
                  if self.truncated else ''))
    return '[t5x_lite] infer: ' + '; '.join(parts) + '.'


def to_json(value) -> str:
  """json.dumps(value, ensure_ascii=False), with each number of an input line
  (records.NumberText) written as the line wrote it: 1.50 stays 1.50, not "1.50" or 1.5."""
  if isinstance(value, records.NumberText):
    return str(value)
  if isinstance(value, dict):
    return '{' + ', '.join(f'{to_json(k)}: {to_json(v)}' for k, v in value.items()) + '}'
  if isinstance(value, list):
    return '[' + ', '.join(to_json(v) for v in value) + ']'
  return json.dumps(value, ensure_ascii=False)


def parse_line(line: str) -> Tuple[Optional[str], dict, Optional[str]]:
  """(inputs text or None, JSON fields to copy, why skipped or None) of one input line."""
  text = line.rstrip('\n').replace('\r', '')  # every CR, as tf.data's line reader drops them
  if not text.strip():
    return None, {}, 'empty'
  if not text.lstrip().startswith('{'):
    return text, {}, None
  try:  # read as the data pipeline reads a JSONL line (records.jsonl_parser)
    obj = records.loads(text)
    written = to_json(obj)
  except (ValueError, RecursionError):  # not JSON, NaN / Infinity, or nested too deep
    return None, {}, 'json'
  try:  # a lone surrogate ("\ud800"): neither SentencePiece nor UTF-8 output takes it
    written.encode('utf-8')
  except UnicodeEncodeError:
    return None, {}, 'invalid'
  inputs = obj.get('inputs')
  if not isinstance(inputs, str) or not inputs.strip():  # (a number: its text, as written)
    return None, {}, 'bad'
  return inputs, obj, None


def read_examples(stream: Iterable[Union[bytes, str]],
                  report: Report) -> List[Tuple[int, str, dict]]:
  """[(line number, inputs text, fields)] of the usable lines; the rest go to `report`.
  Lines are bytes (decoded here, so one bad line is skipped, not the whole input) or str."""
  examples = []
  for number, line in enumerate(stream, start=1):
    report.lines += 1
    try:
      line = line.decode('utf-8') if isinstance(line, bytes) else line
      line.encode('utf-8')  # str lines: no lone surrogates either
    except UnicodeError:
      report.invalid.append(number)
      continue
    if number == 1:  # a UTF-8 byte-order mark (Windows editors) would hide a JSON line's '{'
      line = line.removeprefix('\ufeff')
    text, fields, skip = parse_line(line)
    if skip == 'empty':
      report.empty.append(number)
    elif skip == 'bad':
      report.bad.append((number, line))
    elif skip == 'invalid':
      report.invalid.append(number)
    elif skip == 'json':
      report.invalid_json.append(number)
    else:
      examples.append((number, text, fields))
  return examples


def tokenize(vocab, text: str, inputs_length: int, eos: bool) -> Tuple[List[int], int]:
  """(ids, original length): ids[:inputs_length - 1] + EOS like the text_to_text pipeline
  (without EOS: ids[:inputs_length - 1], leaving room for the decoder-only BOS). A decoder-
  only prompt, BOS in front, is thus inputs_length + 1 tokens with EOS, inputs_length
  without."""
  ids = vocab.encode(text)
  return ids[:inputs_length - 1] + ([vocab.eos_id] if eos else []), len(ids) + int(eos)


def _method(beam_size: int, temperature: float, top_k: int, top_p: float, seed: int) -> str:
  if temperature > 0:
    return f'sampling (T={temperature}, top_k={top_k}, top_p={top_p}, seed={seed})'
  return f'beam search ({beam_size} beams)' if beam_size > 1 else 'greedy'


def _decoding_only(config):
  """`config` with a training batch that fits every mesh and stream count: infer decodes
  batches of --batch_size rows, not split over the mesh, so whether train.batch_size (and
  grad_accum_steps) would fit it, which loading checks, does not apply."""
  import jax
  config = copy.deepcopy(config)
  config.train.batch_size = math.lcm(jax.device_count(), config.data.num_virtual_shards)
  config.train.grad_accum_steps = 1
  return config


def _check_paths(input_path: str, output_path: str) -> None:
  """One line naming the flag, before a checkpoint is loaded or stdin read; the output is
  not opened (truncated) until there is something to write. The input may be any path but a
  directory: a FIFO, a process substitution (/dev/fd/63), /dev/stdin."""
  if input_path != '-' and (os.path.isdir(input_path) or not os.path.exists(input_path)):
    raise ValueError(f'--input={input_path}: ' + (
        'a directory, not a file.' if os.path.isdir(input_path) else 'no such file.'))
  if output_path != '-':
    exists = os.path.exists(output_path)
    if input_path != '-' and exists and os.path.samefile(output_path, input_path):
      raise ValueError(f'--output={output_path} is the --input file: its inputs would be '
                       'replaced by the predictions; write them elsewhere.')  # or a hard link
    parent = os.path.dirname(os.path.abspath(output_path))
    if os.path.isdir(output_path):
      raise ValueError(f'--output={output_path}: a directory, not a file.')
    # An existing file is truncated in place: its own permission counts, not its directory's.
    if exists and not os.access(output_path, os.W_OK):
      raise ValueError(f'--output={output_path}: the file is not writable.')
    if not exists and not os.path.isdir(parent):
      raise ValueError(f'--output={output_path}: no directory {parent}.')
    if not exists and not os.access(parent, os.W_OK):
      raise ValueError(f'--output={output_path}: directory {parent} is not writable.')


def run_infer(config, workdir: str, input_path: str = '-', output_path: str = '-', *,
              max_length: int = 0, temperature: float = 0.0, top_k: int = 0,
              top_p: float = 1.0, seed: int = 0, batch_size: int = 0,
              beam_size: int = 1, step: Optional[int] = None) -> Report:
  """Everything `python -m t5x_lite.infer` does; returns its report."""
  from t5x_lite.data import vocab as vocab_lib
  family = config.model.family
  if families.get(family).generates is None:
    raise ValueError(f'config.model.family={family!r} does not generate text; infer needs '
                     'encoder_decoder or decoder.')
  from t5x_lite import decoding
  decoding.check_options(config.model.vocab_size, beam_size, temperature, top_k, top_p)
  if input_path.endswith(('.tsv', '.tsv.gz')):  # its header and target column would be inputs
    raise ValueError(f'--input={input_path}: a TSV file; infer reads text or JSONL lines. '
                     f'Decode a TSV task with eval (--config.data.validation_source=tsv:...), '
                     f'or pass its inputs column as a text file.')
  _check_paths(input_path, output_path)
  checkpoints.latest_checkpoint(workdir, step)  # a clear error before reading or compiling
  # (also when no line turns out usable: the run then reads no params, but a config that
  # cannot read this checkpoint is said before any output is written)
  run_config.check_model_config(workdir, config.model, '--workdir')
  run_config.check_vocabulary(workdir, config.data, '--workdir')
  max_length = max_length or config.data.targets_length
  batch_size = batch_size or config.train.batch_size
  for flag, value in (('max_length', max_length), ('batch_size', batch_size)):
    if value < 1:
      raise ValueError(f'--{flag}={value} must be >= 1 (0 = the config\'s).')
  inputs_length, limit = config.data.inputs_length, ''
  decoder_only = families.get(family).generates == 'decoder_only'
  eos = not (decoder_only and config.data.objective == 'causal_lm')
  if decoder_only and config.model.position_embedding == 'absolute':
    # Decoding feeds a prompt of P tokens and max_length - 1 new ones, all within the learned
    # position table (decoding.check_positions_fit), and P is tokenize's length + eos.
    positions = config.model.max_position_embeddings
    room = positions + 1 - max_length - eos
    if room < 2:  # tokenize keeps room - 1 ids: at least one
      raise ValueError(f'--max_length={max_length} leaves no room for a prompt: the model has '
                       f'model.max_position_embeddings={positions}.')
    if room < inputs_length:
      inputs_length = room
      limit = (f'what model.max_position_embeddings={positions} leaves for a prompt continued '
               f'by max_length={max_length}, less than data.inputs_length')
  elif config.model.position_embedding == 'absolute':  # the decoder's BOS + max_length - 1
    decoding.check_positions_fit(config.model, inputs_length, max_length, encoder_decoder=True)
  report = Report()
  if input_path == '-':  # bytes, decoded per line (tests may swap in a text-only stdin)
    examples = read_examples(getattr(sys.stdin, 'buffer', sys.stdin), report)
  else:  # .gz decompressed, as the data pipeline reads it
    try:
      with (gzip.open if input_path.endswith('.gz') else open)(input_path, 'rb') as f:
        head = f.peek(16)[:10]
        packed = None if input_path.endswith('.gz') else sources.compression(head)
        if packed:  # its bytes as text: lines of invalid UTF-8, or worse, decoded
          raise ValueError(f'--input={input_path}: {packed} data; infer reads text or JSONL '
                           'lines (gzip files named .gz are decompressed).')
        wide = sources.wide_encoding(head)
        if wide:  # valid UTF-8, a NUL between every two characters: <unk>s decoded
          raise ValueError(f'--input={input_path}: {wide} text; infer reads UTF-8 (convert '
                           'it, e.g. `iconv -f UTF-16 -t UTF-8`).')
        examples = read_examples(f, report)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise ValueError(f'--input={input_path}: truncated or corrupt .gz file ({e}).') from None
    except OSError as e:
      raise ValueError(f'--input={input_path}: cannot read it ({e.strerror}).') from None

  vocab = vocab_lib.from_config(config.data)
  token_lists, kept = [], []
  for example in examples:
    number, text, _ = example
    ids, n = tokenize(vocab, text, inputs_length, eos)
    if n == int(eos):  # no tokens: skipped like the pipeline's records without tokens
      report.no_tokens.append(number)
      continue
    report.tokenized += 1
    if n > len(ids):  # its length counted as the limit is: with EOS, or causal with BOS
      report.truncated.append((number, n + int(decoder_only and not eos)))
    token_lists.append(([0] if decoder_only else []) + ids)  # decoder-only: BOS
    kept.append(example)
  examples = kept

  trainer, params, step, read = (evaluation.load(_decoding_only(config), workdir, step)
                                 if examples else (None,) * 4)
  if examples:
    print(f'[t5x_lite] infer: params of step {step} from {read}; '
          f'{len(examples)} input{"s" if len(examples) != 1 else ""}, batches of {batch_size}, '
          f'up to {max_length} tokens, '
          f'{_method(beam_size, temperature, top_k, top_p, seed)}.',
          file=sys.stderr, flush=True)

  def cannot_write(e: OSError) -> ValueError:
    return ValueError(f'--output={output_path}: cannot write it ({e.strerror}).')

  try:
    out = sys.stdout if output_path == '-' else open(output_path, 'w', encoding='utf-8')
  except OSError as e:
    raise cannot_write(e) from None
  predictions: List[Optional[str]] = [None] * len(examples)
  scores: List[Optional[float]] = [None] * len(examples)

  def write_ready(idx, rows, row_scores):
    """Decode a finished batch; write every line whose earlier lines are all written."""
    for i, row, score in zip(idx, rows, row_scores):
      predictions[i], scores[i] = vocab.decode(row), float(score)
    try:
      while report.predicted < len(examples) and predictions[report.predicted] is not None:
        number, text, fields = examples[report.predicted]
        # `line`: the input line it answers, so outputs join to inputs after skipped lines.
        kept = {k: v for k, v in fields.items() if k not in ('prediction', 'score', 'line')}
        out.write(to_json({**kept, 'inputs': text, 'prediction': predictions[report.predicted],
                           'score': scores[report.predicted], 'line': number}) + '\n')
        report.predicted += 1
      out.flush()
    except OSError as e:
      if output_path == '-' and isinstance(e, BrokenPipeError):
        raise  # stdout's reader is gone: see below
      raise cannot_write(e) from None

  try:
    if examples:
      evaluation.predict(config, trainer.model, params, token_lists, batch_size=batch_size,
                         max_length=max_length, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, beam_size=beam_size,
                         num_ids=vocab.vocab_size, on_batch=write_ready)
  except BrokenPipeError:  # `infer | head`: stop quietly, as Unix tools do (the command's exit
    return report          # flush of stdout ignores the gone reader too: cli.flush_and_exit)
  finally:
    if out is not sys.stdout:
      try:
        out.close()  # nothing left to write, unless a write failed: then it fails again
      except OSError as e:
        raise cannot_write(e) from None
  print(report.summary(inputs_length, limit, 'EOS' if eos else 'BOS'), file=sys.stderr,
        flush=True)
  return report


def main():
  run_infer(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output,
            max_length=FLAGS.max_length, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
            top_p=FLAGS.top_p, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
            beam_size=FLAGS.beam_size, step=FLAGS.step)


if __name__ == '__main__':
  cli.define_common_flags()
  _define_flags()
  cli.run(main)
