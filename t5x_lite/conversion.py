"""Hugging Face model directories <-> t5x_lite (Orbax) params directories.

`hf_to_t5x` reads a `T5ForConditionalGeneration`, `BertForMaskedLM` or `GPT2LMHeadModel`
directory (`hf.load`) and writes an Orbax pytree checkpoint of `{'params': params}` plus
config.json = `{"model": {...}, "hf_special_tokens": {...}}` (usable as `config.init_from`);
`load_t5x` reads such a directory or a training workdir; `t5x_to_hf` writes what
`from_pretrained` loads (`hf.save`).

Special-token ids are the data's, not the architecture's: a model imported from HF keeps its
own (GPT-2's 50256; "hf_special_tokens"), while one trained here (a workdir, whose tokens are
this codebase's SentencePiece layout whatever its vocab_size, e.g. configs/gpt.py's 50257)
gets pad 0 / EOS 1 / BOS 0 (`hf_config.trained_special_tokens`).
"""
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
from typing import Dict

import numpy as np
import safetensors.numpy

from t5x_lite import checkpoint_integrity as integrity
from t5x_lite import families
from t5x_lite import run_config


CONFIG_NAME = 'config.json'
SPECIAL_TOKENS = 'hf_special_tokens'
WEIGHTS_NAME = 'model.safetensors'  # what hf.save writes and read_weights reads


FLAX_WEIGHTS_NAME = 'flax_model.msgpack'  # what transformers' Flax classes save

# Weights files t5x_lite does not read (named when none it reads is there).
_OTHER_WEIGHT_FILES = ('pytorch_model.bin', 'pytorch_model.bin.index.json', 'tf_model.h5',
                       'model.ckpt.index')


def _load_safetensors(path: str) -> Dict[str, np.ndarray]:
  """safetensors.numpy.load_file, plus BF16 tensors (numpy has no bfloat16) as float32."""
  try:
    return safetensors.numpy.load_file(path)
  except TypeError:  # "data type 'bfloat16' not understood": parse the (simple) format
    pass
  dtypes = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': np.uint16,
            'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8,
            'U8': np.uint8, 'BOOL': np.bool_}
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    begin, end = info['data_offsets']
    array = np.frombuffer(data[begin:end], dtype=dtypes[info['dtype']])
    if info['dtype'] == 'BF16':
      array = (array.astype(np.uint32) << 16).view(np.float32)
    out[name] = array.reshape(info['shape'])
  return out


def read_weights(hf_dir: str, arch: str):
  """(description of the weights file(s), {PyTorch tensor name: numpy array}) of a Hugging
  Face directory of `arch`: model.safetensors, else flax_model.msgpack, or the shards an
  index next to either names. Flax-saved tensors (msgpack, or safetensors whose metadata says
  format "flax") are renamed and laid out as PyTorch's, as transformers' own converter does.
  A missing or unreadable file is a ValueError (one sentence naming it)."""
  for name in (WEIGHTS_NAME, FLAX_WEIGHTS_NAME):
    weights, index = os.path.join(hf_dir, name), os.path.join(hf_dir, name + '.index.json')
    if os.path.isfile(weights):
      files = [weights]
      break
    if os.path.isfile(index):
      files = [os.path.join(hf_dir, n) for n in _shard_files(index)]
      weights = f'the shards of {index}'
      break
  else:
    others = [n for n in _OTHER_WEIGHT_FILES if os.path.exists(os.path.join(hf_dir, n))]
    found = (f'; it has {others[0]}: load it with transformers and save_pretrained(OUT) to '
             f'write {WEIGHTS_NAME}' if others else '')
    raise ValueError(f'{os.path.join(hf_dir, WEIGHTS_NAME)} does not exist: t5x_lite reads '
                     f'{arch} weights from {WEIGHTS_NAME} or {FLAX_WEIGHTS_NAME} (or their '
                     f'sharded forms with an .index.json){found}.')
  tensors = {}
  for path in files:
    if not os.path.isfile(path):
      raise ValueError(f'{path}, listed in {index}, does not exist.')
    kind = 'msgpack' if path.endswith('.msgpack') else 'safetensors'
    try:
      saved_by = 'flax' if kind == 'msgpack' else _saved_format(path)
      read = _load_msgpack(path) if kind == 'msgpack' else _load_safetensors(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path} is not a readable {kind} file ({type(e).__name__}: '
                       f'{e}).') from None
    if saved_by not in ('pt', 'flax', None):
      raise ValueError(f'{path} was saved by a {saved_by!r} model class, whose tensor names '
                       f'and layouts t5x_lite does not read: load it with transformers and '
                       f'save_pretrained(OUT) from a PyTorch class.')
    tensors.update(_pytorch_names(read) if saved_by == 'flax' else read)
  return weights, tensors


def _shard_files(index: str):
  try:
    with open(index) as f:
      weight_map = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{index} is not valid JSON ({e}).') from None
  weight_map = weight_map.get('weight_map') if isinstance(weight_map, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise ValueError(f'{index} has no "weight_map" object (tensor name -> shard file).')
  return sorted(set(weight_map.values()))


def _saved_format(path: str):
  """The "format" a safetensors file's metadata records ('pt', 'flax', 'tf', ...) or None."""
  with open(path, 'rb') as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), 'little')))
  return (header.get('__metadata__') or {}).get('format')


def _load_msgpack(path: str) -> Dict[str, np.ndarray]:
  """A Flax params msgpack (nested dicts, or a shard's flat "a/b/c" keys) -> {"a.b.c": array},
  bfloat16 as float32."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  with open(path, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  out = {}
  def walk(node, prefix):
    for key, value in node.items():
      name = f'{prefix}.{key}'.replace('/', '.').lstrip('.')
      if isinstance(value, dict):
        walk(value, name)
      else:
        value = np.asarray(value)
        out[name] = value if value.dtype.kind == 'f' else value.astype(np.float32)
  walk(tree, '')
  return out


def _pytorch_names(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Flax names and layouts -> PyTorch's (transformers' convert_flax_state_dict_to_pytorch):
  `kernel` -> `weight` transposed, `scale` / `embedding` -> `weight`."""
  out = {}
  for name, value in tensors.items():
    head, _, last = name.rpartition('.')
    if last == 'kernel':
      value, last = np.ascontiguousarray(value.T), 'weight'
    elif last in ('scale', 'embedding'):
      last = 'weight'
    out[f'{head}.{last}' if head else last] = value
  return out


def check_output(path: str):
  """An output directory must not exist or be empty; a symbolic link to one is followed."""
  if os.path.islink(path) and not os.path.exists(path):
    raise ValueError(f'--output={path} is a symbolic link to {os.readlink(path)}, which does '
                     'not exist.')
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ValueError(f'--output={path} already exists and is not an empty directory.')


@contextlib.contextmanager
def staged_output(out_dir: str):
  """Yields an empty sibling directory to write the conversion into, renamed to `out_dir`
  once all of it is written: a conversion that fails (a bad vocabulary after the weights,
  Ctrl-C, SIGTERM under the convert command) leaves no output behind, neither a half-written
  one nor one a rerun refuses, nor the staging directory or Orbax's temporary sibling of it
  (`<staging>.orbax-checkpoint-tmp-*`)."""
  check_output(out_dir)
  out_dir = os.path.realpath(out_dir)  # a link's target is replaced, next to it
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.partial-',
                             dir=os.path.dirname(out_dir))
  try:
    yield staging
    os.rename(staging, out_dir)  # (an empty out_dir is replaced)
  finally:  # gone already unless something failed
    for left in [staging] + glob.glob(glob.escape(staging) + '.orbax-checkpoint-tmp*'):
      shutil.rmtree(left, ignore_errors=True)


def hf_to_t5x(hf_dir: str, out_dir: str, scan_layers: bool = False) -> str:
  """HF directory -> Orbax params checkpoint + config.json in `out_dir`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from t5x_lite import hf, hf_config  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = hf.load(hf_dir, scan_layers=scan_layers)
  ids = hf_config.special_tokens(hf_config.read_config(hf_dir)[1])
  with staged_output(out_dir) as staging:
    os.rmdir(staging)  # Orbax creates the directory itself
    ocp.PyTreeCheckpointer().save(staging, {'params': params})
    with open(os.path.join(staging, CONFIG_NAME), 'w') as f:
      json.dump({'model': json.loads(model_cfg.to_json()), SPECIAL_TOKENS: ids}, f, indent=2,
                sort_keys=True)
    integrity.write_manifest(staging)  # sizes and CRC-32s, checked by every reader
  return os.path.abspath(out_dir)


def _saved_config(directory: str) -> dict:
  """The config saved with a converted directory, a workdir or a checkpoint step directory."""
  from t5x_lite import checkpoints  # pylint: disable=import-outside-toplevel
  saved, path = run_config.saved_config(directory)
  if saved is None:
    try:  # a damaged checkpoint: that is the error
      checkpoints.resolve_params_dir(directory)
    except checkpoints.NoCheckpointError:
      pass
    raise ValueError(f'{os.path.join(directory, CONFIG_NAME)} does not exist: --input must be '
                     f'a directory written by --direction=hf_to_t5x, a training workdir or '
                     f'one of its checkpoint steps.')
  if 'model' not in saved:
    raise ValueError(f'{path} has no "model" section{hf_directory_hint(directory)}.')
  return saved


def hf_directory_hint(directory: str) -> str:
  """'' unless `directory` holds a Hugging Face config.json: then the advice that reads it."""
  try:
    with open(os.path.join(directory, CONFIG_NAME)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return ''
  if not isinstance(saved, dict) or not ('architectures' in saved or 'model_type' in saved):
    return ''
  return (f': {directory} is a Hugging Face model directory (convert it with `convert '
          f'--direction=hf_to_t5x`, or fine-tune from it with config.init_from=hf:{directory})')


def load_t5x(directory: str):
  """(model ConfigDict, params) of a hf_to_t5x output dir or a training workdir."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from t5x_lite import checkpoints, models  # pylint: disable=import-outside-toplevel
  model_cfg = ml_collections.ConfigDict(_saved_config(directory)['model'])
  params, _ = checkpoints.load_params(directory, nn.meta.unbox(models.abstract_params(model_cfg)))
  return model_cfg, params


def t5x_to_hf(directory: str, out_dir: str) -> str:
  """t5x_lite params dir (or training workdir) -> HF directory in `out_dir`."""
  from t5x_lite import hf  # pylint: disable=import-outside-toplevel
  check_output(out_dir)
  model_cfg, params = load_t5x(directory)
  saved = _saved_config(directory)
  with staged_output(out_dir) as staging:
    # None (a training workdir): the ids of this codebase's vocabulary.
    hf.save(model_cfg, params, staging, saved.get(SPECIAL_TOKENS))
    # A training workdir's vocabulary goes with it (an imported model's tokenizer is HF's).
    vocab_found = SPECIAL_TOKENS in saved or write_tokenizer(saved.get('data') or {}, staging,
                                                             model_cfg)
  if not vocab_found:
    vocab = (saved.get('data') or {}).get('vocab')
    print(f'[t5x_lite] warning: no tokenizer written: the saved config\'s data.vocab='
          f'{vocab!r} is not a file from {os.getcwd()} or the repository root (a relative '
          f'path: run convert from the directory the training ran in).', file=sys.stderr,
          flush=True)
  objective = (saved.get('data') or {}).get('objective', 'causal_lm')
  if families.decoder_rows_hold_inputs(model_cfg.family, objective):
    print(f'[t5x_lite] warning: {directory} was trained as a prefix LM (data.objective='
          f'{objective!r}: its prompts attend both ways); GPT2LMHeadModel attends '
          f'causally everywhere, so its outputs for a prompt differ from infer\'s.',
          file=sys.stderr, flush=True)
  return os.path.abspath(out_dir)


TOKENIZER_FILES = ('spiece.model', 'tokenizer_config.json')


def write_tokenizer(data: dict, out_dir: str, model_cfg=None) -> bool:
  """A training workdir's vocabulary (its config's data.vocab and data.extra_ids) as HF
  T5Tokenizer files in `out_dir`, for every family (the class is SentencePiece with this
  codebase's id layout, not T5-specific); False when the config names no vocabulary file
  that exists.

  T5Tokenizer on the same SentencePiece model with `extra_ids` gives this codebase's ids:
  the pieces, EOS 1 appended, `<extra_id_k>` = piece count + extra_ids - 1 - k; its
  `mask_token` is the MLM objective's mask (`[MASK]`, else `<extra_id_0>`). A decoder-only
  prompt is BOS 0 + the pieces, without EOS: `[0] + tok(text, add_special_tokens=False)
  .input_ids` (docs/cli.md).
  """
  import shutil  # pylint: disable=import-outside-toplevel
  from t5x_lite.data.vocab import Vocabulary, resolve_path  # pylint: disable=import-outside-toplevel
  path = resolve_path(data.get('vocab') or '')
  if not path or not os.path.isfile(path):
    return False
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  vocab = Vocabulary(path, int(data.get('extra_ids', 0)))
  piece = spm.SentencePieceProcessor(model_file=path).id_to_piece
  shutil.copyfile(path, os.path.join(out_dir, TOKENIZER_FILES[0]))
  config = dict(tokenizer_class='T5Tokenizer', extra_ids=vocab.extra_ids,
                pad_token=piece(vocab.pad_id), eos_token=piece(vocab.eos_id),
                unk_token=piece(vocab.unk_id), legacy=True)
  if vocab.mask_id is not None:
    config['mask_token'] = (piece(vocab.mask_id) if vocab.mask_id < vocab.piece_size
                            else '<extra_id_0>')
  generates = families.get(model_cfg.family).generates if model_cfg is not None else None
  if model_cfg is None or generates == 'encoder_decoder':  # T5: the encoder's input length
    if data.get('inputs_length'):
      config['model_max_length'] = int(data['inputs_length'])
  elif model_cfg.get('position_embedding') == 'absolute':   # BERT, GPT-2: the position table
    config['model_max_length'] = int(model_cfg.max_position_embeddings)
  with open(os.path.join(out_dir, TOKENIZER_FILES[1]), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if generates:
    _suppress_ids_without_pieces(out_dir, vocab.vocab_size)
  return True


def _suppress_ids_without_pieces(out_dir: str, num_ids: int) -> None:
  """A model's vocab_size can pad its vocabulary (T5: 32128 rows for 32100 ids): no text has
  the ids past it, and infer never emits them (`decoding._without_unused_ids`). HF `generate`
  would, as empty strings: generation_config.json's `suppress_tokens` rules them out there too
  (with the special ids that HF otherwise takes from config.json)."""
  with open(os.path.join(out_dir, CONFIG_NAME)) as f:
    hf_config = json.load(f)
  if num_ids >= hf_config['vocab_size']:
    return
  generation = {k: hf_config[k] for k in ('bos_token_id', 'eos_token_id', 'pad_token_id',
                                          'decoder_start_token_id')
                if hf_config.get(k) is not None}
  generation['suppress_tokens'] = list(range(num_ids, hf_config['vocab_size']))
  with open(os.path.join(out_dir, 'generation_config.json'), 'w') as f:
    json.dump(generation, f, indent=2, sort_keys=True)


# Tokenizer files of Hugging Face directories that are not a SentencePiece model.
_OTHER_TOKENIZERS = ('tokenizer.json', 'vocab.json', 'merges.txt', 'vocab.txt')


def attention_change(model_cfg, data) -> str:
  """'' unless fine-tuning imported Hugging Face weights of `model_cfg` (a config's model
  section) on `data` changes how they attend: a GPT2LMHeadModel attends causally everywhere,
  and an objective with inputs (text_to_text, prefix_lm, ...) makes a decoder-only model a
  prefix LM whose inputs attend both ways, another network than the one imported
  (checkpoints.restore_or_init warns with it for config.init_from=hf:DIR; `t5x_to_hf` warns
  the other way round)."""
  objective = data.get('objective', 'causal_lm')
  if not families.decoder_rows_hold_inputs(model_cfg.family, objective):
    return ''
  return (f'GPT2LMHeadModel weights attend causally everywhere; data.objective={objective!r} '
          'trains (and eval / infer decode) them as a prefix LM whose inputs attend both ways, '
          'another network than the one imported (its first losses are higher than the Hugging '
          'Face model\'s); data.objective=\'causal_lm\' keeps them causal')


def tokenizer_mismatch(hf_dir: str, data) -> str:
  """'' if fine-tuning the weights in `hf_dir` on `data` (a config's data section) feeds the
  token ids those weights were trained with: the directory's spiece.model is data.vocab's
  SentencePiece model (byte for byte, with the same extra_ids), or the directory has no
  tokenizer files to compare. Else one sentence: the embeddings would be trained on ids that
  mean other tokens (checkpoints.restore_or_init warns with it for config.init_from=hf:DIR)."""
  import filecmp  # pylint: disable=import-outside-toplevel
  from t5x_lite.data.vocab import resolve_path  # pylint: disable=import-outside-toplevel
  vocab = resolve_path(data.get('vocab') or '')
  spiece = os.path.join(hf_dir, TOKENIZER_FILES[0])
  if os.path.isfile(spiece):
    if not os.path.isfile(vocab) or not filecmp.cmp(spiece, vocab, shallow=False):
      return (f'{spiece} is not config.data.vocab={data.get("vocab")!r}: the pipeline\'s '
              'token ids mean other pieces than the Hugging Face embeddings were trained on')
    path = os.path.join(hf_dir, TOKENIZER_FILES[1])
    extra = None
    if os.path.isfile(path):
      with open(path) as f:
        extra = json.load(f).get('extra_ids')
    if extra is not None and extra != data.get('extra_ids'):
      return (f'{path} has extra_ids={extra}, config.data.extra_ids={data.get("extra_ids")}: '
              'the sentinel ids differ from those the Hugging Face model was trained with')
    return ''
  other = next((n for n in _OTHER_TOKENIZERS if os.path.isfile(os.path.join(hf_dir, n))), None)
  if other:
    return (f'{hf_dir} has a {other} tokenizer, not config.data.vocab\'s SentencePiece model: '
            'the pipeline\'s token ids mean other tokens than the Hugging Face embeddings '
            'were trained on')
  return ''
