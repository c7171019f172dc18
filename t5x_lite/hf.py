"""Import / export of Hugging Face T5, BERT and GPT-2 weights (config.json + safetensors).

    model_cfg, params = hf.load('/path/to/hf_dir')      # ml_collections.ConfigDict, param tree
    logits = models.build(model_cfg).apply({'params': params}, batch)
    hf.save(model_cfg, params, '/path/to/out_dir')      # transformers' from_pretrained loads it

Supported architectures (the `architectures` entry of config.json):

- `T5ForConditionalGeneration`: v1.0 (`feed_forward_proj='relu'`, tied embeddings, the tied
  decoder output rescaled by d_model**-0.5 = our `rescale_tied_logits`) and v1.1
  (`'gated-gelu'`, untied `lm_head`); also the other `[gated-]act` variants t5x_lite has.
- `BertForMaskedLM`: post-norm encoder with absolute positions, token types and the MLM head
  (`cls.predictions.transform.{dense,LayerNorm}`, `cls.predictions.bias`, decoder tied to the
  word embeddings).
- `GPT2LMHeadModel`: pre-norm decoder, absolute positions, `Conv1D` kernels ([in, out]) with a
  fused `c_attn` (query | key | value), tied output.

Conventions. torch `nn.Linear` weights are [out, in]; ours are DenseGeneral kernels [in, ...]
with heads split out: query/key/value [d_model, heads, d_kv], out [heads, d_kv, d_model].
HF T5 keeps each stack's relative-attention table only in block 0 ([buckets, heads]); ours is
one `relpos_bias/rel_embedding` [heads, buckets] per stack. `load` returns unscanned numpy
params (`layers_0`..; `scan_layers=True` stacks them); `save` accepts scanned or unscanned,
boxed (`nn.Partitioned`) or plain params, optionally wrapped in {'params': ...}.

No torch at run time: tensors go through `safetensors.numpy`, configs through `json`. Every
problem with an input directory (unsupported architecture, missing file, missing or misshapen
tensor) raises ValueError with one sentence naming it.
"""
import dataclasses
import json
import os
from typing import Callable, Dict, List, Tuple

import jax
import ml_collections
import numpy as np
import safetensors.numpy

from t5x_lite import tree_paths

SUPPORTED = ('T5ForConditionalGeneration', 'BertForMaskedLM', 'GPT2LMHeadModel')
_SUPPORTED_MSG = f'supported architectures: {", ".join(SUPPORTED)}'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'

# HF activation name <-> ours (layers.ACTIVATIONS).
_ACT_FROM_HF = {'relu': 'relu', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
                'gelu': 'gelu_exact', 'silu': 'silu', 'swish': 'silu'}
_ACT_TO_HF = {'relu': 'relu', 'gelu': 'gelu_new', 'gelu_exact': 'gelu', 'silu': 'silu'}


def _fail(msg: str):
  """Raise ValueError(one sentence), naming the supported architectures."""
  if 'supported architectures' not in msg:
    msg = f'{msg.rstrip(".")} ({_SUPPORTED_MSG}).'
  raise ValueError(msg)


# ------------------------------------------------------------------------ tensor specs
@dataclasses.dataclass
class _Spec:
  """One HF tensor <-> one or more of our params.

  `to_ours(hf_array) -> [arrays]` in the order of `paths`; `to_hf([arrays]) -> hf_array`.
  `aliases` are other names the tensor may have in a HF file (older or tied copies).
  """
  hf_name: str
  hf_shape: Tuple[int, ...]
  paths: List[Tuple[str, ...]]
  to_ours: Callable
  to_hf: Callable
  aliases: Tuple[str, ...] = ()


def _same(path, name, shape, aliases=()):
  return _Spec(name, tuple(shape), [path], lambda a: [a], lambda xs: xs[0], tuple(aliases))


def _linear(path, name, d_in, out_shape, aliases=()):
  """torch Linear weight [prod(out), prod(in)] <-> kernel [*d_in, *out_shape]."""
  d_in, out_shape = tuple(d_in), tuple(out_shape)
  hf_shape = (int(np.prod(out_shape)), int(np.prod(d_in)))
  return _Spec(name, hf_shape, [path],
               lambda a: [a.T.reshape(d_in + out_shape)],
               lambda xs: xs[0].reshape(hf_shape[::-1]).T, tuple(aliases))


def _conv1d(path, name, d_in, out_shape):
  """GPT-2 Conv1D weight [prod(in), prod(out)] <-> kernel [*d_in, *out_shape]."""
  d_in, out_shape = tuple(d_in), tuple(out_shape)
  hf_shape = (int(np.prod(d_in)), int(np.prod(out_shape)))
  return _Spec(name, hf_shape, [path], lambda a: [a.reshape(d_in + out_shape)],
               lambda xs: xs[0].reshape(hf_shape), ())


def _bias(path, name, shape):
  shape = tuple(shape)
  n = int(np.prod(shape))
  return _Spec(name, (n,), [path], lambda a: [a.reshape(shape)],
               lambda xs: xs[0].reshape(n), ())


def _dense(path, name, d_in, out_shape, weight=_linear):
  """A kernel and its bias: `path` + kernel / bias <-> HF `name.weight` / `name.bias`."""
  return [weight(path + ('kernel',), f'{name}.weight', d_in, out_shape),
          _bias(path + ('bias',), f'{name}.bias', out_shape)]


def _norm(prefix, name, d, with_bias):
  """Norm scale (and bias) <-> HF `name.weight` (and `name.bias`); old BERT: gamma/beta."""
  specs = [_same(prefix + ('scale',), f'{name}.weight', (d,), (f'{name}.gamma',))]
  if with_bias:
    specs.append(_same(prefix + ('bias',), f'{name}.bias', (d,), (f'{name}.beta',)))
  return specs


def _t5_specs(c) -> List[_Spec]:
  d, h, k = c.d_model, c.num_heads, c.d_kv
  specs = [_same(('token_embedder', 'embedding'), 'shared.weight', (c.vocab_size, d),
                 ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'))]
  if not c.tie_embeddings:
    specs.append(_linear(('logits_head', 'dense', 'kernel'), 'lm_head.weight', (d,),
                         (c.vocab_size,)))
  gated = len(c.mlp_activations) == 2
  wi = ['wi_0', 'wi_1'] if gated else ['wi']

  def attention(ours, hf):
    out = [_linear(ours + (n, 'kernel'), f'{hf}.{t}.weight', (d,), (h, k))
           for n, t in (('query', 'q'), ('key', 'k'), ('value', 'v'))]
    return out + [_linear(ours + ('out', 'kernel'), f'{hf}.o.weight', (h, k), (d,))]

  for stack, n_layers in (('encoder', c.num_encoder_layers),
                          ('decoder', c.num_decoder_layers)):
    specs.append(_Spec(
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
        (c.relative_attention_num_buckets, h), [(stack, 'relpos_bias', 'rel_embedding')],
        lambda a: [a.T], lambda xs: xs[0].T))
    for i in range(n_layers):
      ours, hf = (stack, f'layers_{i}'), f'{stack}.block.{i}.layer'
      specs += attention(ours + ('self_attention',), f'{hf}.0.SelfAttention')
      specs += _norm(ours + ('self_attention_norm',), f'{hf}.0.layer_norm', d, False)
      m = 1
      if stack == 'decoder':
        specs += attention(ours + ('cross_attention',), f'{hf}.1.EncDecAttention')
        specs += _norm(ours + ('cross_attention_norm',), f'{hf}.1.layer_norm', d, False)
        m = 2
      for n in wi:
        specs.append(_linear(ours + ('mlp', n, 'kernel'), f'{hf}.{m}.DenseReluDense.{n}.weight',
                             (d,), (c.d_ff,)))
      specs.append(_linear(ours + ('mlp', 'wo', 'kernel'), f'{hf}.{m}.DenseReluDense.wo.weight',
                           (c.d_ff,), (d,)))
      specs += _norm(ours + ('mlp_norm',), f'{hf}.{m}.layer_norm', d, False)
    specs += _norm((stack, 'final_norm'), f'{stack}.final_layer_norm', d, False)
  return specs


def _bert_specs(c) -> List[_Spec]:
  d, h, k = c.d_model, c.num_heads, c.d_kv
  e, b = 'bert.embeddings', ('encoder',)
  specs = [
      _same(('token_embedder', 'embedding'), f'{e}.word_embeddings.weight', (c.vocab_size, d)),
      _same(b + ('position_embedder', 'embedding'), f'{e}.position_embeddings.weight',
            (c.max_position_embeddings, d)),
      _same(b + ('token_type_embedder', 'embedding'), f'{e}.token_type_embeddings.weight',
            (c.type_vocab_size, d)),
  ] + _norm(b + ('embedding_norm',), f'{e}.LayerNorm', d, True)
  for i in range(c.num_encoder_layers):
    ours, hf = b + (f'layers_{i}',), f'bert.encoder.layer.{i}'
    att = ours + ('self_attention',)
    for n in ('query', 'key', 'value'):
      specs += _dense(att + (n,), f'{hf}.attention.self.{n}', (d,), (h, k))
    specs += _dense(att + ('out',), f'{hf}.attention.output.dense', (h, k), (d,))
    specs += _norm(ours + ('self_attention_norm',), f'{hf}.attention.output.LayerNorm', d, True)
    specs += _dense(ours + ('mlp', 'wi'), f'{hf}.intermediate.dense', (d,), (c.d_ff,))
    specs += _dense(ours + ('mlp', 'wo'), f'{hf}.output.dense', (c.d_ff,), (d,))
    specs += _norm(ours + ('mlp_norm',), f'{hf}.output.LayerNorm', d, True)
  p = 'cls.predictions'
  specs += _dense(('mlm_transform',), f'{p}.transform.dense', (d,), (d,))
  specs += _norm(('mlm_norm',), f'{p}.transform.LayerNorm', d, True)
  specs.append(_same(('mlm_bias',), f'{p}.bias', (c.vocab_size,), (f'{p}.decoder.bias',)))
  return specs


def _gpt2_specs(c) -> List[_Spec]:
  d, h, k = c.d_model, c.num_heads, c.d_kv
  inner = h * k
  specs = [
      _same(('token_embedder', 'embedding'), 'transformer.wte.weight', (c.vocab_size, d)),
      _same(('decoder', 'position_embedder', 'embedding'), 'transformer.wpe.weight',
            (c.max_position_embeddings, d)),
  ]
  for i in range(c.num_decoder_layers):
    ours, hf = ('decoder', f'layers_{i}'), f'transformer.h.{i}'
    att = ours + ('self_attention',)
    specs += _norm(ours + ('self_attention_norm',), f'{hf}.ln_1', d, True)
    qkv = [att + (n,) for n in ('query', 'key', 'value')]
    specs.append(_Spec(
        f'{hf}.attn.c_attn.weight', (d, 3 * inner), [p + ('kernel',) for p in qkv],
        lambda a: [x.reshape(d, h, k) for x in np.split(a, 3, axis=1)],
        lambda xs: np.concatenate([x.reshape(d, inner) for x in xs], axis=1)))
    specs.append(_Spec(
        f'{hf}.attn.c_attn.bias', (3 * inner,), [p + ('bias',) for p in qkv],
        lambda a: [x.reshape(h, k) for x in np.split(a, 3)],
        lambda xs: np.concatenate([x.reshape(inner) for x in xs])))
    specs += _dense(att + ('out',), f'{hf}.attn.c_proj', (h, k), (d,), _conv1d)
    specs += _norm(ours + ('mlp_norm',), f'{hf}.ln_2', d, True)
    specs += _dense(ours + ('mlp', 'wi'), f'{hf}.mlp.c_fc', (d,), (c.d_ff,), _conv1d)
    specs += _dense(ours + ('mlp', 'wo'), f'{hf}.mlp.c_proj', (c.d_ff,), (d,), _conv1d)
  specs += _norm(('decoder', 'final_norm'), 'transformer.ln_f', d, True)
  return specs


_SPECS = {'T5ForConditionalGeneration': _t5_specs, 'BertForMaskedLM': _bert_specs,
          'GPT2LMHeadModel': _gpt2_specs}


# ---------------------------------------------------------------------- config mapping
def _base_model_config() -> ml_collections.ConfigDict:
  from configs import base  # pylint: disable=import-outside-toplevel
  return base.get_base_config().model


def _act_from_hf(name, field, arch):
  if name not in _ACT_FROM_HF:
    _fail(f'config.json {field}={name!r} is not supported for {arch} (supported: '
          f'{", ".join(_ACT_FROM_HF)}).')
  return _ACT_FROM_HF[name]


def _config_from_hf(arch: str, hf: dict) -> ml_collections.ConfigDict:
  m = _base_model_config()
  g = lambda key, default=None: hf[key] if hf.get(key) is not None else default
  try:
    if arch == 'T5ForConditionalGeneration':
      proj = g('feed_forward_proj', 'relu')
      parts = proj.split('-')
      if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated'):
        _fail(f'config.json feed_forward_proj={proj!r} is not a T5 activation.')
      gated = len(parts) == 2
      act = 'gelu' if proj == 'gated-gelu' else _act_from_hf(parts[-1], 'feed_forward_proj',
                                                              arch)
      tie = bool(g('tie_word_embeddings', True))
      m.update(dict(
          family='encoder_decoder', vocab_size=hf['vocab_size'], d_model=hf['d_model'],
          d_ff=hf['d_ff'], num_heads=hf['num_heads'], d_kv=hf['d_kv'],
          num_encoder_layers=hf['num_layers'],
          num_decoder_layers=g('num_decoder_layers', hf['num_layers']),
          mlp_activations=(act, 'linear') if gated else (act,), norm='rms',
          norm_eps=float(g('layer_norm_epsilon', 1e-6)), post_norm=False, use_bias=False,
          position_embedding='relative',
          relative_attention_num_buckets=g('relative_attention_num_buckets', 32),
          relative_attention_max_distance=g('relative_attention_max_distance', 128),
          scale_attention_logits=False, tie_embeddings=tie, rescale_tied_logits=tie,
          init_scheme='t5', dropout_rate=float(g('dropout_rate', 0.0))))
    elif arch == 'BertForMaskedLM':
      pos = g('position_embedding_type', 'absolute')
      if pos != 'absolute':
        _fail(f'config.json position_embedding_type={pos!r} is not supported for {arch} '
              f'(only "absolute").')
      d, heads = hf['hidden_size'], hf['num_attention_heads']
      m.update(dict(
          family='encoder', vocab_size=hf['vocab_size'], d_model=d,
          d_ff=hf['intermediate_size'], num_heads=heads, d_kv=d // heads,
          num_encoder_layers=hf['num_hidden_layers'], num_decoder_layers=0,
          mlp_activations=(_act_from_hf(g('hidden_act', 'gelu'), 'hidden_act', arch),),
          norm='layer', norm_eps=float(g('layer_norm_eps', 1e-12)), post_norm=True,
          use_bias=True, position_embedding='absolute',
          max_position_embeddings=g('max_position_embeddings', 512),
          type_vocab_size=g('type_vocab_size', 2), scale_attention_logits=True,
          tie_embeddings=True, rescale_tied_logits=False, init_scheme='normal_0.02',
          dropout_rate=float(g('hidden_dropout_prob', 0.0))))
    elif arch == 'GPT2LMHeadModel':
      for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn'):
        if g(flag, False):
          _fail(f'config.json {flag}=true is not supported for {arch}.')
      if not g('scale_attn_weights', True):
        _fail(f'config.json scale_attn_weights=false is not supported for {arch}.')
      d, heads = hf['n_embd'], hf['n_head']
      m.update(dict(
          family='decoder', vocab_size=hf['vocab_size'], d_model=d,
          d_ff=g('n_inner', 4 * d), num_heads=heads, d_kv=d // heads,
          num_encoder_layers=0, num_decoder_layers=hf['n_layer'],
          mlp_activations=(_act_from_hf(g('activation_function', 'gelu_new'),
                                        'activation_function', arch),),
          norm='layer', norm_eps=float(g('layer_norm_epsilon', 1e-5)), post_norm=False,
          use_bias=True, position_embedding='absolute',
          max_position_embeddings=g('n_positions', 1024), type_vocab_size=0,
          scale_attention_logits=True, tie_embeddings=True, rescale_tied_logits=False,
          init_scheme='normal_0.02', dropout_rate=float(g('resid_pdrop', 0.0))))
  except KeyError as e:
    _fail(f'config.json lacks the field {e.args[0]!r} that {arch} needs.')
  return m


def _architecture_of(cfg) -> str:
  """Which HF architecture a t5x_lite model config corresponds to (ValueError if none)."""
  c = cfg
  if (c.family == 'encoder_decoder' and c.norm == 'rms' and not c.post_norm
      and not c.use_bias and c.position_embedding == 'relative'
      and not c.scale_attention_logits and c.tie_embeddings == c.rescale_tied_logits
      and not c.type_vocab_size):
    return 'T5ForConditionalGeneration'
  # BERT and GPT-2 share all of this; they differ in family, norm placement and token types.
  bert_or_gpt2 = (c.norm == 'layer' and c.use_bias and c.position_embedding == 'absolute'
                  and c.scale_attention_logits and c.tie_embeddings
                  and not c.rescale_tied_logits and len(c.mlp_activations) == 1
                  and c.num_heads * c.d_kv == c.d_model)
  if bert_or_gpt2 and c.family == 'encoder' and c.post_norm and c.type_vocab_size > 0:
    return 'BertForMaskedLM'
  if bert_or_gpt2 and c.family == 'decoder' and not c.post_norm and not c.type_vocab_size:
    return 'GPT2LMHeadModel'
  _fail(f'model config (family={c.family!r}, norm={c.norm!r}, '
        f'position_embedding={c.position_embedding!r}) matches no Hugging Face '
        f'architecture; {_SUPPORTED_MSG}.')


def hf_config_dict(model_cfg) -> dict:
  """The Hugging Face config.json fields of the architecture a model config matches."""
  return _config_to_hf(_architecture_of(model_cfg), model_cfg)


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


def _config_to_hf(arch: str, c, ids=None) -> dict:
  """config.json of `arch` for model config `c`, with special-token ids `ids` (a
  `special_tokens` dict; None: `trained_special_tokens`)."""
  return {**_architecture_fields(arch, c),
          **(trained_special_tokens(arch) if ids is None else ids)}


def _architecture_fields(arch: str, c) -> dict:
  acts = tuple(c.mlp_activations)
  if arch == 'T5ForConditionalGeneration':
    # HF's 'gated-gelu' means gelu_new (tanh); a gated exact GELU has no T5 spelling.
    if len(acts) == 2 and acts[1] == 'linear' and acts[0] in ('gelu', 'relu', 'silu'):
      proj = 'gated-gelu' if acts[0] == 'gelu' else f'gated-{_ACT_TO_HF[acts[0]]}'
    elif len(acts) == 1 and acts[0] in _ACT_TO_HF:
      proj = _ACT_TO_HF[acts[0]]
    else:
      _fail(f'config.model.mlp_activations={acts!r} has no T5 feed_forward_proj.')
    return dict(
        architectures=[arch], model_type='t5', vocab_size=c.vocab_size, d_model=c.d_model,
        d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_encoder_layers,
        num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        dropout_rate=c.dropout_rate, layer_norm_epsilon=c.norm_eps, feed_forward_proj=proj,
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
        tie_word_embeddings=True, torch_dtype='float32')
  return dict(
      architectures=[arch], model_type='gpt2', vocab_size=c.vocab_size,
      n_positions=c.max_position_embeddings, n_embd=c.d_model, n_layer=c.num_decoder_layers,
      n_head=c.num_heads, n_inner=c.d_ff, activation_function=_ACT_TO_HF[acts[0]],
      resid_pdrop=c.dropout_rate, embd_pdrop=c.dropout_rate, attn_pdrop=c.dropout_rate,
      layer_norm_epsilon=c.norm_eps, scale_attn_weights=True,
      scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
      tie_word_embeddings=True, torch_dtype='float32')


# ------------------------------------------------------------------------- tree helpers
def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _plain_params(params, cfg):
  """Unbox, unwrap {'params': ...}, convert to unscanned numpy."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from flax.core import unfreeze  # pylint: disable=import-outside-toplevel
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  params = unfreeze(nn.meta.unbox(params))
  if set(params) == {'params'}:
    params = params['params']
  flat = dict(tree_paths.named_leaves(params))
  if cfg.scan_layers or any('layers' in path for path in flat):
    params = models.unstack_layers(params)
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


# ---------------------------------------------------------------------------- public API
def read_config(hf_dir: str) -> Tuple[str, dict]:
  """(architecture, config.json dict) of a HF directory; ValueError if unsupported."""
  path = os.path.join(hf_dir, CONFIG_NAME)
  if not os.path.isfile(path):
    _fail(f'{path} does not exist: a Hugging Face model directory needs {CONFIG_NAME} and '
          f'{WEIGHTS_NAME}.')
  try:
    with open(path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    _fail(f'{path} is not valid JSON ({e}).')
  archs = hf.get('architectures') or []
  arch = next((a for a in archs if a in SUPPORTED), None)
  if arch is None:
    _fail(f'{path} names architecture {archs[0] if archs else "(none)"!s}, which is not '
          f'supported; {_SUPPORTED_MSG}.')
  return arch, hf


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


def _read_tensors(hf_dir: str, arch: str):
  """(description of the weights file(s), {name: numpy array}); sharded files via the index."""
  weights = os.path.join(hf_dir, WEIGHTS_NAME)
  index = os.path.join(hf_dir, WEIGHTS_NAME + '.index.json')
  if os.path.isfile(weights):
    files = [weights]
  elif os.path.isfile(index):
    with open(index) as f:
      files = [os.path.join(hf_dir, n) for n in sorted(set(json.load(f)['weight_map'].values()))]
    weights = f'the shards of {index}'
  else:
    _fail(f'{weights} does not exist: t5x_lite reads {arch} weights from {WEIGHTS_NAME} '
          f'(or sharded safetensors with {WEIGHTS_NAME}.index.json).')
  tensors = {}
  for path in files:
    if not os.path.isfile(path):
      _fail(f'{path}, listed in {index}, does not exist.')
    try:
      tensors.update(_load_safetensors(path))
    except Exception as e:  # pylint: disable=broad-except
      _fail(f'{path} is not a readable safetensors file ({type(e).__name__}: {e}).')
  return weights, tensors


def load(hf_dir: str, scan_layers: bool = False):
  """Hugging Face directory -> (model_cfg ConfigDict for `models.build`, params).

  Params are a plain nested dict of float32 numpy arrays (unscanned unless `scan_layers`).
  """
  arch, hf_cfg = read_config(hf_dir)
  model_cfg = _config_from_hf(arch, hf_cfg)
  weights, tensors = _read_tensors(hf_dir, arch)
  # The original GPT-2 checkpoints store the GPT2Model names, without `transformer.`.
  if arch == 'GPT2LMHeadModel' and not any(k.startswith('transformer.') for k in tensors):
    tensors = {'transformer.' + k: v for k, v in tensors.items()}

  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  cfg = models.ModelConfig.from_config(model_cfg)
  params = {}
  for spec in _SPECS[arch](cfg):
    name = next((n for n in (spec.hf_name,) + spec.aliases if n in tensors), None)
    if name is None:
      _fail(f'{weights} lacks the tensor {spec.hf_name} (expected shape '
            f'{list(spec.hf_shape)}) that {arch} needs.')
    value = tensors[name]
    if tuple(value.shape) != spec.hf_shape:
      _fail(f'tensor {name} in {weights} has shape {list(value.shape)}, expected '
            f'{list(spec.hf_shape)} from config.json.')
    if value.dtype.kind != 'f' and value.dtype.name != 'bfloat16':
      _fail(f'tensor {name} in {weights} has dtype {value.dtype}, expected a float type.')
    for path, array in zip(spec.paths, spec.to_ours(value.astype(np.float32))):
      _set(params, path, np.ascontiguousarray(array))
  if scan_layers:
    model_cfg.scan_layers = True
    params = _stack(params)
  return model_cfg, params


def _stack(params):
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  out = dict(params)
  for stack in ('encoder', 'decoder'):
    if stack in out:
      n = sum(1 for k in out[stack] if k.startswith('layers_'))
      out[stack] = jax.tree.map(np.asarray, models.stack_layers(out[stack], n))
  return out


def save(model_cfg, params, out_dir: str, ids=None) -> str:
  """Write `config.json` + `model.safetensors` that `transformers` loads; returns out_dir.

  `ids`: the special-token ids to write (`special_tokens` of an imported model's config);
  None writes those of a model trained here (`trained_special_tokens`).
  """
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  cfg = models.ModelConfig.from_config(model_cfg)
  arch = _architecture_of(cfg)
  hf_config = _config_to_hf(arch, cfg, ids)
  flat = dict(tree_paths.named_leaves(_plain_params(params, cfg)))
  specs = _SPECS[arch](cfg)
  used = set()
  tensors = {}
  for spec in specs:
    arrays = []
    for path, shape in zip(spec.paths, spec.to_ours(np.zeros(spec.hf_shape, np.float32))):
      if path not in flat:
        _fail(f'params lack {"/".join(path)} (shape {list(shape.shape)}) that {arch} needs.')
      if tuple(flat[path].shape) != shape.shape:
        _fail(f'param {"/".join(path)} has shape {list(flat[path].shape)}, expected '
              f'{list(shape.shape)} from the model config.')
      arrays.append(flat[path])
      used.add(path)
    tensors[spec.hf_name] = np.ascontiguousarray(spec.to_hf(arrays), dtype=np.float32)
  unused = sorted(set(flat) - used)
  if unused:
    _fail(f'param {"/".join(unused[0])} has no place in a {arch} checkpoint.')
  os.makedirs(out_dir, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME),
                              metadata={'format': 'pt'})
  with open(os.path.join(out_dir, CONFIG_NAME), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  return out_dir
