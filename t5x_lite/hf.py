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
import numpy as np
import safetensors.numpy

from t5x_lite import tree_paths
from t5x_lite.conversion import WEIGHTS_NAME  # where reading lives (read_weights)
from t5x_lite.hf_config import CONFIG_NAME, architecture_of, config_to_hf, read_config


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
  arch = architecture_of(cfg)
  hf_config = config_to_hf(arch, cfg, ids)
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
