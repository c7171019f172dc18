"""Hugging Face config.json <-> model config for T5, BERT and GPT-2 (hf.py maps the tensors).

    arch, hf_json, model_cfg = read_config('/path/to/hf_dir')   # checked; weights not read
    hf_config_dict(model_cfg)            # the config.json fields `hf.save` writes for it

A config.json field this codebase cannot honour (an activation, a GPT-2 or BERT variant) or
a value the model config refuses is a ValueError naming the config.json field, never a field
of config.model, which the user did not write.
"""
import json
import os
from typing import Tuple

import ml_collections

from t5x_lite.conversion import WEIGHTS_NAME  # (where weights are read: conversion.read_weights)

SUPPORTED = ('T5ForConditionalGeneration', 'BertForMaskedLM', 'GPT2LMHeadModel')
# mT5 is T5 v1.1's network; older T5 config.json files say T5WithLMHeadModel. A config.json
# without `architectures` is placed by its `model_type`.
_SAME_NETWORK = {'MT5ForConditionalGeneration': 'T5ForConditionalGeneration',
                 'T5WithLMHeadModel': 'T5ForConditionalGeneration'}
_BY_MODEL_TYPE = {'t5': 'T5ForConditionalGeneration', 'mt5': 'T5ForConditionalGeneration',
                  'bert': 'BertForMaskedLM', 'gpt2': 'GPT2LMHeadModel'}
_SUPPORTED_MSG = (f'supported architectures: {", ".join(SUPPORTED)} (and '
                  f'{", ".join(_SAME_NETWORK)}, read as T5)')
CONFIG_NAME = 'config.json'

# HF activation name <-> ours (layers.ACTIVATIONS).
_ACT_FROM_HF = {'relu': 'relu', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
                'gelu': 'gelu_exact', 'silu': 'silu', 'swish': 'silu'}
_ACT_TO_HF = {'relu': 'relu', 'gelu': 'gelu_new', 'gelu_exact': 'gelu', 'silu': 'silu'}


def _fail(msg: str):
  """Raise ValueError(one sentence)."""
  raise ValueError(msg)


# ---------------------------------------------------------------------- config mapping
def _base_model_config() -> ml_collections.ConfigDict:
  from configs import base  # pylint: disable=import-outside-toplevel
  return base.get_base_config().model


def _act_from_hf(name, field, arch, written=None):
  """Our activation for HF's `name`, read from config.json's `field` (whose value, if not
  `name` itself, is `written`: feed_forward_proj='gated-gelu_fast' names gelu_fast)."""
  if not isinstance(name, str) or name not in _ACT_FROM_HF:
    _fail(f'config.json {field}={name if written is None else written!r} is not supported '
          f'for {arch} (supported activations: {", ".join(_ACT_FROM_HF)}).')
  return _ACT_FROM_HF[name]


# GPT-2 variants; a BERT decoder (HF's then attends causally) or a seq2seq's decoder half.
_REFUSED_FLAGS = {'GPT2LMHeadModel': ('scale_attn_by_inverse_layer_idx',
                                      'reorder_and_upcast_attn', 'add_cross_attention'),
                  'BertForMaskedLM': ('is_decoder', 'add_cross_attention')}
_KINDS = {'int': 'a positive integer', 'float': 'a non-negative number', 'bool': 'true or false'}


def _field(hf: dict, arch: str, key: str, default=None, kind: str = 'int'):
  """config.json's `key` (`default` if absent, required if that is None), checked to be of
  `kind` (_KINDS); ValueError naming the field otherwise."""
  value = hf.get(key)
  if value is None:
    if default is None:
      _fail(f'config.json lacks the field {key!r} that {arch} needs.')
    return default
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if not {'int': number and isinstance(value, int) and value > 0, 'float': number and value >= 0,
          'bool': isinstance(value, bool), 'any': True}[kind]:
    _fail(f'config.json {key}={value!r} is not {_KINDS[kind]} ({arch}).')
  return float(value) if kind == 'float' else value


def _t5_activation(f, proj: str, arch: str):
  """(activation, gated) as transformers' T5Config derives them from feed_forward_proj
  ('[gated-]ACT'; 'gated-gelu' is gelu_new), then overridden by config.json's dense_act_fn /
  is_gated_act when it has them (T5Config sets its extra fields last: T5 models run those)."""
  parts = proj.split('-') if isinstance(proj, str) else []
  if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[0] != 'gated'):
    _fail(f'config.json feed_forward_proj={proj!r} is not a T5 activation.')
  act = f('dense_act_fn', 'gelu_new' if proj == 'gated-gelu' else parts[-1], 'any')
  if f('dense_act_fn', '', 'any'):
    return _act_from_hf(act, 'dense_act_fn', arch), f('is_gated_act', len(parts) == 2, 'bool')
  return (_act_from_hf(act, 'feed_forward_proj', arch, written=proj),
          f('is_gated_act', len(parts) == 2, 'bool'))


# The sizes transformers' config classes default to (T5Config, MT5Config, BertConfig,
# GPT2Config): a config.json that leaves one out is read with it, as from_pretrained does.
_SIZE_DEFAULTS = {
    'T5ForConditionalGeneration': dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048,
                                       num_layers=6, num_heads=8),
    'MT5': dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    'BertForMaskedLM': dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072),
    'GPT2LMHeadModel': dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12)}


def _config_from_hf(arch: str, hf: dict, mt5: bool = False) -> ml_collections.ConfigDict:
  """Our model config for config.json `hf` of `arch`; a field it leaves out takes the
  default of transformers' config class (MT5Config's when `mt5`: untied, gated-gelu)."""
  m = _base_model_config()
  sizes = _SIZE_DEFAULTS['MT5' if mt5 else arch]
  f = lambda key, default=None, kind='int': _field(hf, arch, key, sizes.get(key, default), kind)
  tie = f('tie_word_embeddings', not mt5, 'bool')
  for flag in _REFUSED_FLAGS.get(arch, ()):
    if f(flag, False, 'bool'):
      _fail(f'config.json {flag}=true is not supported for {arch}.')
  if arch == 'T5ForConditionalGeneration':
    act, gated = _t5_activation(f, f('feed_forward_proj', 'gated-gelu' if mt5 else 'relu',
                                     'any'), arch)
    m.update(dict(
        family='encoder_decoder', vocab_size=f('vocab_size'), d_model=f('d_model'),
        d_ff=f('d_ff'), num_heads=f('num_heads'), d_kv=f('d_kv'),
        num_encoder_layers=f('num_layers'),
        num_decoder_layers=f('num_decoder_layers', f('num_layers')),
        mlp_activations=(act, 'linear') if gated else (act,), norm='rms',
        norm_eps=f('layer_norm_epsilon', 1e-6, 'float'), post_norm=False, use_bias=False,
        position_embedding='relative',
        relative_attention_num_buckets=f('relative_attention_num_buckets', 32),
        relative_attention_max_distance=f('relative_attention_max_distance', 128),
        scale_attention_logits=False, tie_embeddings=tie, rescale_tied_logits=tie,
        init_scheme='t5', dropout_rate=f('dropout_rate', 0.0, 'float')))
    return m
  if arch == 'BertForMaskedLM':
    pos = f('position_embedding_type', 'absolute', 'any')
    if pos != 'absolute':
      _fail(f'config.json position_embedding_type={pos!r} is not supported for {arch} '
            f'(only "absolute").')
    d, heads, act = f('hidden_size'), f('num_attention_heads'), ('hidden_act', 'gelu')
  else:
    if not f('scale_attn_weights', True, 'bool'):
      _fail(f'config.json scale_attn_weights=false is not supported for {arch}.')
    d, heads, act = f('n_embd'), f('n_head'), ('activation_function', 'gelu_new')
  if d % heads:
    _fail(f'config.json has {d} hidden units, not a multiple of its {heads} heads ({arch}).')
  m.update(dict(
      vocab_size=f('vocab_size'), d_model=d, num_heads=heads, d_kv=d // heads,
      mlp_activations=(_act_from_hf(f(act[0], act[1], 'any'), act[0], arch),), norm='layer',
      use_bias=True, position_embedding='absolute', scale_attention_logits=True,
      tie_embeddings=tie, rescale_tied_logits=False, dropout_sites='bert_gpt2'))
  if arch == 'BertForMaskedLM':
    m.update(dict(
        family='encoder', d_ff=f('intermediate_size'), num_encoder_layers=f('num_hidden_layers'),
        num_decoder_layers=0, norm_eps=f('layer_norm_eps', 1e-12, 'float'), post_norm=True,
        max_position_embeddings=f('max_position_embeddings', 512),
        type_vocab_size=f('type_vocab_size', 2), init_scheme='normal_0.02',
        dropout_rate=f('hidden_dropout_prob', 0.0, 'float')))
  else:
    m.update(dict(
        family='decoder', d_ff=f('n_inner', 4 * d), num_encoder_layers=0,
        num_decoder_layers=f('n_layer'), norm_eps=f('layer_norm_epsilon', 1e-5, 'float'),
        post_norm=False, max_position_embeddings=f('n_positions', 1024), type_vocab_size=0,
        init_scheme='gpt2', dropout_rate=f('resid_pdrop', 0.0, 'float')))
  return m


# What each family's architecture needs of a model config, in order (then `architecture_of`'s).
_BERT_OR_GPT2 = dict(norm='layer', use_bias=True, position_embedding='absolute',
                     scale_attention_logits=True, rescale_tied_logits=False)
_NEEDS = {
    'T5ForConditionalGeneration': dict(norm='rms', post_norm=False, use_bias=False,
                                       position_embedding='relative',
                                       scale_attention_logits=False, type_vocab_size=0),
    'BertForMaskedLM': dict(post_norm=True, **_BERT_OR_GPT2),
    'GPT2LMHeadModel': dict(post_norm=False, type_vocab_size=0, **_BERT_OR_GPT2)}
_BY_FAMILY = dict(encoder_decoder=SUPPORTED[0], encoder=SUPPORTED[1], decoder=SUPPORTED[2])


def architecture_of(c) -> str:
  """The HF architecture of a model config's family (BERT and GPT-2 tied or untied);
  ValueError naming the first field that architecture cannot take."""
  arch = _BY_FAMILY.get(c.family) or _fail(f'model.family={c.family!r} has no HF architecture.')
  needs = [(f, f'{f} = {want!r}', (getattr(c, f) or 0) == want) for f, want in _NEEDS[arch].items()]
  if arch == 'T5ForConditionalGeneration':
    needs.append(('rescale_tied_logits', 'rescale_tied_logits = tie_embeddings',
                  c.tie_embeddings == c.rescale_tied_logits))
  else:
    needs += [('mlp_activations', 'one MLP activation', len(c.mlp_activations) == 1),
              ('d_kv', 'd_kv = d_model / num_heads', c.num_heads * c.d_kv == c.d_model),
              ('type_vocab_size', 'type_vocab_size > 0',
               c.type_vocab_size > 0 or arch != 'BertForMaskedLM')]
  field, want = next(((f, w) for f, w, ok in needs if not ok), (None, None))
  if field:
    _fail(f'config.model.{field}={getattr(c, field)!r} has no place in a {arch} (it needs '
          f'{want}); {_SUPPORTED_MSG}.')
  return arch


def hf_config_dict(model_cfg) -> dict:
  """The Hugging Face config.json fields of the architecture a model config matches."""
  return config_to_hf(architecture_of(model_cfg), model_cfg)


# The config.json fields naming special tokens: `save` writes `trained_special_tokens`
# unless given an imported model's own (`special_tokens`; t5x_lite.conversion keeps them).
SPECIAL_TOKEN_FIELDS = ('pad_token_id', 'bos_token_id', 'eos_token_id', 'decoder_start_token_id')


def special_tokens(hf_cfg: dict) -> dict:
  """The special-token ids a Hugging Face config.json sets."""
  return {k: hf_cfg[k] for k in SPECIAL_TOKEN_FIELDS if hf_cfg.get(k) is not None}


def trained_special_tokens(arch: str) -> dict:
  """The special-token ids of a model trained here, in config.json fields: this codebase's
  vocabulary has pad 0 and EOS 1 (t5x_lite/data/vocab.py); T5's decoder and decoder-only rows
  start from 0 (BOS = pad: the shifted targets' first input, infer's prompt BOS). BERT's
  config has only a pad id ([MASK] is a tokenizer's; the MLM rows here have no CLS / SEP).
  GPT-2 gets no pad id, like GPT-2's own config: with pad = BOS = 0, HF `generate` called
  without an attention_mask takes the prompt's BOS for padding and masks it out; without one
  it pads finished rows with EOS."""
  from t5x_lite.data.vocab import EOS_ID, PAD_ID  # pylint: disable=import-outside-toplevel
  if arch == 'T5ForConditionalGeneration':
    return dict(pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
  if arch == 'BertForMaskedLM':
    return dict(pad_token_id=PAD_ID)
  return dict(bos_token_id=PAD_ID, eos_token_id=EOS_ID)


def config_to_hf(arch: str, c, ids=None) -> dict:
  """config.json of `arch` for model config `c`, with special-token ids `ids` (a
  `special_tokens` dict; None: `trained_special_tokens`)."""
  return {**_architecture_fields(arch, c),
          **(trained_special_tokens(arch) if ids is None else ids)}


def _architecture_fields(arch: str, c) -> dict:
  acts = tuple(c.mlp_activations)
  if arch == 'T5ForConditionalGeneration':
    # HF's 'gated-gelu' means gelu_new (tanh). dense_act_fn and is_gated_act, which T5Config
    # applies over what it derives from feed_forward_proj, are written too: they spell a gated
    # exact GELU ('gated-gelu' with dense_act_fn 'gelu').
    gated = len(acts) == 2 and acts[1] == 'linear'
    if not (gated or len(acts) == 1) or acts[0] not in _ACT_TO_HF:
      _fail(f'config.model.mlp_activations={acts!r} has no T5 feed_forward_proj.')
    act = 'gelu_new' if acts[0] == 'gelu' else _ACT_TO_HF[acts[0]]
    proj = ('gated-gelu' if acts[0] in ('gelu', 'gelu_exact') else f'gated-{act}') if gated \
        else act
    return dict(
        architectures=[arch], model_type='t5', vocab_size=c.vocab_size, d_model=c.d_model,
        d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_encoder_layers,
        num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        dropout_rate=c.dropout_rate, layer_norm_epsilon=c.norm_eps, feed_forward_proj=proj,
        dense_act_fn=act, is_gated_act=gated,
        tie_word_embeddings=bool(c.tie_embeddings), is_encoder_decoder=True, use_cache=True,
        torch_dtype='float32')
  if acts[0] not in _ACT_TO_HF:
    _fail(f'config.model.mlp_activations={acts!r} has no {arch} activation.')
  if arch == 'BertForMaskedLM':
    return dict(
        architectures=[arch], model_type='bert', vocab_size=c.vocab_size,
        hidden_size=c.d_model, num_hidden_layers=c.num_encoder_layers,
        num_attention_heads=c.num_heads, intermediate_size=c.d_ff,
        hidden_act=_ACT_TO_HF[acts[0]], hidden_dropout_prob=c.dropout_rate,
        attention_probs_dropout_prob=c.dropout_rate,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.norm_eps, position_embedding_type='absolute',
        tie_word_embeddings=bool(c.tie_embeddings), torch_dtype='float32')
  return dict(
      architectures=[arch], model_type='gpt2', vocab_size=c.vocab_size,
      n_positions=c.max_position_embeddings, n_embd=c.d_model, n_layer=c.num_decoder_layers,
      n_head=c.num_heads, n_inner=c.d_ff, activation_function=_ACT_TO_HF[acts[0]],
      resid_pdrop=c.dropout_rate, embd_pdrop=c.dropout_rate, attn_pdrop=c.dropout_rate,
      layer_norm_epsilon=c.norm_eps, scale_attn_weights=True,
      scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
      tie_word_embeddings=bool(c.tie_embeddings), torch_dtype='float32')


def read_config(hf_dir: str) -> Tuple[str, dict, ml_collections.ConfigDict]:
  """(architecture, config.json dict, our model config) of a HF directory, its weights not
  read; ValueError if unsupported."""
  path = os.path.join(hf_dir, CONFIG_NAME)
  if not os.path.isdir(hf_dir):
    _fail(f'{hf_dir} {"is not a directory" if os.path.exists(hf_dir) else "does not exist"}: '
          f'a Hugging Face model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}.')
  if not os.path.isfile(path):
    _fail(f'{path} does not exist: a Hugging Face model directory needs {CONFIG_NAME} and '
          f'{WEIGHTS_NAME}.')
  try:
    with open(path) as f:
      hf = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    _fail(f'{path} is not valid JSON ({e}).')
  if not isinstance(hf, dict):
    _fail(f'{path} is not a JSON object.')
  archs = hf.get('architectures') or []
  if isinstance(archs, str):  # a single name instead of a list
    archs = [archs]
  if not isinstance(archs, list):
    _fail(f'{path} has architectures={archs!r}, not a list of class names.')
  if not archs and isinstance(hf.get('model_type'), str):
    archs = [_BY_MODEL_TYPE.get(hf['model_type'], f'model_type {hf["model_type"]!r}')]
  # transformers reads an mT5 directory (AutoConfig by model_type, MT5ForConditionalGeneration
  # by its class) with MT5Config, whose defaults for fields left out differ from T5Config's.
  mt5 = hf.get('model_type') == 'mt5' or 'MT5ForConditionalGeneration' in archs
  archs = [_SAME_NETWORK.get(a, a) if isinstance(a, str) else a for a in archs]
  arch = next((a for a in archs if a in SUPPORTED), None)
  if arch is None and not archs and 'model' in hf:  # a t5x_lite config.json
    _fail(f'{hf_dir} is a t5x_lite directory, not a Hugging Face one: export it with `convert'
          f' --direction=t5x_to_hf`, or fine-tune from it with config.init_from={hf_dir}.')
  if arch is None:
    _fail(f'{path} names architecture {archs[0] if archs else "(none)"!s}, which is not '
          f'supported; {_SUPPORTED_MSG}.')
  model_cfg = _config_from_hf(arch, hf, mt5=mt5)
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  try:
    models.ModelConfig.from_config(model_cfg)  # validates it
  except ValueError as e:  # named as config.json names it: the user wrote no config.model
    _fail(_in_config_json_terms(str(e), arch, hf))
  return arch, hf, model_cfg


# The config.json key behind each model field whose name differs there (`_config_from_hf`).
_HF_KEYS = {
    'T5ForConditionalGeneration': dict(num_encoder_layers='num_layers',
                                       norm_eps='layer_norm_epsilon'),
    'BertForMaskedLM': dict(d_model='hidden_size', num_heads='num_attention_heads',
                            d_ff='intermediate_size', num_encoder_layers='num_hidden_layers',
                            norm_eps='layer_norm_eps', dropout_rate='hidden_dropout_prob'),
    'GPT2LMHeadModel': dict(d_model='n_embd', num_heads='n_head', d_ff='n_inner',
                            num_decoder_layers='n_layer', norm_eps='layer_norm_epsilon',
                            max_position_embeddings='n_positions', dropout_rate='resid_pdrop'),
}


def _in_config_json_terms(message: str, arch: str, hf: dict) -> str:
  """'config.model.norm_eps=0.0 is invalid: ...' -> 'config.json layer_norm_epsilon=0 is
  invalid for GPT2LMHeadModel: ...' (a key config.json lacks: its default, said so)."""
  import re  # pylint: disable=import-outside-toplevel
  match = re.match(r'config\.model\.(\w+)=(.*?) is invalid: (.*)$', message, re.S)
  if not match:
    return f'config.json ({arch}): {message}'
  field, value, why = match.groups()
  key = _HF_KEYS[arch].get(field, field)
  shown = f'{hf[key]!r}' if key in hf else f'{value} (absent: the default)'
  return f'config.json {key}={shown} is invalid for {arch}: {why}'
