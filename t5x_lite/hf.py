"""Import / export of Hugging Face T5, BERT and GPT-2 weights (config.json + safetensors).

    model_cfg, params = hf.load('/path/to/hf_dir')      # ml_collections.ConfigDict, param tree
    logits = models.build(model_cfg).apply({'params': params}, batch)
    hf.save(model_cfg, params, '/path/to/out_dir')      # transformers' from_pretrained loads it

Architectures (docs/cli.md, "convert", says what each reads): `T5ForConditionalGeneration`
v1.0 / v1.1 and their `[gated-]act` variants (also mT5, `T5WithLMHeadModel`); `BertForMaskedLM`
and `GPT2LMHeadModel` (`Conv1D` kernels [in, out], fused `c_attn`), each tied or untied.

Conventions. torch `nn.Linear` weights are [out, in]; our DenseGeneral kernels [in, ...]
split the heads out ([d_model, heads, d_kv]; out [heads, d_kv, d_model]). HF T5 keeps each
stack's relative-attention table in block 0 ([buckets, heads]), ours in one
`relpos_bias/rel_embedding` [heads, buckets]. `load` returns unscanned numpy params unless
`scan_layers`; `save` takes scanned or not, boxed or plain, optionally under {'params': ...}.
No torch at run time (`safetensors.numpy`, `json`). A problem with an input directory raises
ValueError with one sentence naming it; a tensor no param takes (and transformers would not
ignore) is refused, not dropped: config.json would describe another network than the file's.
"""
import dataclasses
import json
import os
from typing import Callable, List, Tuple

import jax
import ml_collections
import numpy as np
import safetensors.numpy

from t5x_lite import tree_paths
from t5x_lite.conversion import WEIGHTS_NAME  # where reading lives (read_weights)

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
  if not c.tie_embeddings:  # tie_word_embeddings=false: the decoder has its own weight
    specs.append(_linear(('logits_head', 'dense', 'kernel'), f'{p}.decoder.weight', (d,),
                         (c.vocab_size,)))
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
  if not c.tie_embeddings:  # tie_word_embeddings=false: lm_head has its own weight
    specs.append(_linear(('logits_head', 'dense', 'kernel'), 'lm_head.weight', (d,),
                         (c.vocab_size,)))
  return specs


_SPECS = {'T5ForConditionalGeneration': _t5_specs, 'BertForMaskedLM': _bert_specs,
          'GPT2LMHeadModel': _gpt2_specs}


# ---------------------------------------------------------------------- config mapping
def _base_model_config() -> ml_collections.ConfigDict:
  from configs import base  # pylint: disable=import-outside-toplevel
  return base.get_base_config().model


def _act_from_hf(name, field, arch):
  if not isinstance(name, str) or name not in _ACT_FROM_HF:
    _fail(f'config.json {field}={name!r} is not supported for {arch} (supported: '
          f'{", ".join(_ACT_FROM_HF)}).')
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
  field = 'dense_act_fn' if f('dense_act_fn', '', 'any') else 'feed_forward_proj'
  return _act_from_hf(act, field, arch), f('is_gated_act', len(parts) == 2, 'bool')


def _config_from_hf(arch: str, hf: dict) -> ml_collections.ConfigDict:
  m = _base_model_config()
  f = lambda key, default=None, kind='int': _field(hf, arch, key, default, kind)
  tie = f('tie_word_embeddings', True, 'bool')
  for flag in _REFUSED_FLAGS.get(arch, ()):
    if f(flag, False, 'bool'):
      _fail(f'config.json {flag}=true is not supported for {arch}.')
  if arch == 'T5ForConditionalGeneration':
    act, gated = _t5_activation(f, f('feed_forward_proj', 'relu', 'any'), arch)
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


# What each family's architecture needs of a model config, in order (then `_architecture_of`'s).
_BERT_OR_GPT2 = dict(norm='layer', use_bias=True, position_embedding='absolute',
                     scale_attention_logits=True, rescale_tied_logits=False)
_NEEDS = {
    'T5ForConditionalGeneration': dict(norm='rms', post_norm=False, use_bias=False,
                                       position_embedding='relative',
                                       scale_attention_logits=False, type_vocab_size=0),
    'BertForMaskedLM': dict(post_norm=True, **_BERT_OR_GPT2),
    'GPT2LMHeadModel': dict(post_norm=False, type_vocab_size=0, **_BERT_OR_GPT2)}
_BY_FAMILY = dict(encoder_decoder=SUPPORTED[0], encoder=SUPPORTED[1], decoder=SUPPORTED[2])


def _architecture_of(c) -> str:
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


# ------------------------------------------------------------------------- tree helpers
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
def read_config(hf_dir: str) -> Tuple[str, dict, ml_collections.ConfigDict]:
  """(architecture, config.json dict, our model config) of a HF directory, its weights not
  read; ValueError if unsupported."""
  path = os.path.join(hf_dir, CONFIG_NAME)
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
  archs = [_SAME_NETWORK.get(a, a) if isinstance(a, str) else a for a in archs]
  arch = next((a for a in archs if a in SUPPORTED), None)
  if arch is None and not archs and 'model' in hf:  # a t5x_lite config.json
    _fail(f'{hf_dir} is a t5x_lite directory, not a Hugging Face one: export it with `convert'
          f' --direction=t5x_to_hf`, or fine-tune from it with config.init_from={hf_dir}.')
  if arch is None:
    _fail(f'{path} names architecture {archs[0] if archs else "(none)"!s}, which is not '
          f'supported; {_SUPPORTED_MSG}.')
  return arch, hf, _config_from_hf(arch, hf)


# Tensors a HF file may hold that no param takes and transformers ignores as well: buffers,
# heads of other tasks, and tied copies of the token embedding (HF re-ties those on load).
_IGNORED_TENSORS = {
    'T5ForConditionalGeneration': (
        r'(encoder|decoder)\.embed_tokens\.weight',
        r'decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight'),
    'BertForMaskedLM': (r'bert\.pooler\..*', r'cls\.seq_relationship\..*',
                        r'bert\.embeddings\.(position_ids|token_type_ids)'),
    'GPT2LMHeadModel': (r'transformer\.h\.\d+\.attn\.(bias|masked_bias)',),
}
_TIED_OUTPUT = {'T5ForConditionalGeneration': 'lm_head.weight',
                'BertForMaskedLM': 'cls.predictions.decoder.weight',
                'GPT2LMHeadModel': 'lm_head.weight'}


def _check_no_stray_tensors(tensors, specs, arch, cfg, weights):
  """ValueError naming a tensor that no param takes (more layers than config.json says, an
  untied head the config calls tied, another architecture's weights): loading without it
  would build another network than the file's, silently."""
  import re  # pylint: disable=import-outside-toplevel
  known = {n for spec in specs for n in (spec.hf_name,) + spec.aliases}
  if cfg.tie_embeddings:
    known.add(_TIED_OUTPUT[arch])
  ignored = re.compile('|'.join(f'(?:{p})' for p in _IGNORED_TENSORS[arch]))
  stray = sorted(n for n in tensors if n not in known and not ignored.fullmatch(n))
  if stray:
    more = f' (and {len(stray) - 1} more)' if len(stray) > 1 else ''
    _fail(f'{weights} holds the tensor {stray[0]}{more}, which no parameter of the {arch} '
          f'that config.json describes takes; config.json does not describe these weights.')


def load(hf_dir: str, scan_layers: bool = False):
  """Hugging Face directory -> (model_cfg ConfigDict for `models.build`, params).

  Params are a plain nested dict of float32 numpy arrays (unscanned unless `scan_layers`).
  """
  arch, _, model_cfg = read_config(hf_dir)
  from t5x_lite import conversion  # pylint: disable=import-outside-toplevel
  weights, tensors = conversion.read_weights(hf_dir, arch)
  # The original GPT-2 checkpoints store the GPT2Model names, without `transformer.`.
  if arch == 'GPT2LMHeadModel' and not any(k.startswith('transformer.') for k in tensors):
    tensors = {k if k.startswith('lm_head.') else 'transformer.' + k: v
               for k, v in tensors.items()}

  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  cfg = models.ModelConfig.from_config(model_cfg)
  params = {}
  specs = _SPECS[arch](cfg)
  _check_no_stray_tensors(tensors, specs, arch, cfg, weights)
  for spec in specs:
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
