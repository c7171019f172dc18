r"""Parameter, FLOP and memory accounting of a config: used by plan, bench and train.

Nothing is compiled or allocated: parameter shapes and logical axes come from
`models.abstract_params` (`jax.eval_shape`), and the mesh is a dict of axis sizes (no devices
are created, so a pod-sized mesh can be planned on a laptop).

FLOPs: `FORMULA` below is the formula, stated once (plan and bench print it). What its terms
leave out: norms, softmax, activations, biases, embedding gathers and the optimizer update.
L_enc = data.inputs_length; L_dec = data.targets_length, plus data.inputs_length for a
decoder-only model whose objective has inputs (one prefix-LM row); the encoder-only family
(MLM) has only L_enc, the decoder-only family only L_dec. H = num_heads, V = vocab_size.
`dense` counts the MLM transform on L_enc, and not the embedding tables, the relative-position
table or the logits kernel. Attention is QK^T and AV, 2 FLOPs per multiply-add each; causal
self-attention is not halved, because the mask is applied to a full L x L score matrix, which
is what the implementation computes. `logits` counts tied and untied alike; L_target = L_dec,
or L_enc for the MLM head, which scores every position. forward = the sum of the four terms;
train = forward + backward (2 x forward); remat recomputation is not counted, as is usual
for MFU.

`flops_per_token(config)` reports every term three ways: `per_example`, per TARGET token
(the top-level keys: per_example / L_target) and `per_processed_token` (per_example /
(L_enc + L_dec), every token either stack reads). For a decoder-only or encoder-only model
the last two are the same. MFU (`MFU_FORMULA`) needs no choice of token at all.

Memory per device: params, gradients and the update as declared (float32), and the optimizer
state that optax's own `init` creates (`jax.eval_shape`, nothing allocated), each leaf split
by the sharding the trainer gives it (`optim.state_shardings`) on an abstract mesh of the
planned size. One-element leaves (step counts, optax's placeholders) are not counted.
Activations are a rough ESTIMATE (see `activation_bytes_estimate`).
"""
import math
from typing import Any, Dict

import flax.linen as nn
import jax
import optax

from t5x_lite import families
from t5x_lite import models
from t5x_lite import optim
from t5x_lite import partitioning
from t5x_lite import tree_paths

FORMULA = (
    'matmul FLOPs only. Per example forward: dense = 2 * sum(kernel params * tokens of its '
    'stream) [encoder kernels and cross-attn key/value: L_enc; decoder kernels: L_dec]; '
    'self_attention = 4*H*d_kv*(n_enc*L_enc^2 + n_dec*L_dec^2) (full non-causal L x L); '
    'cross_attention = 4*H*d_kv*n_dec*L_dec*L_enc; logits = 2*d_model*V*L_target; '
    'train = 3 x forward (no remat recompute). L_enc, L_dec = tokens per row of each stack '
    '(families.stream_lengths).')
MFU_FORMULA = ('MFU = train FLOPs per example (3 x forward matmul FLOPs) x examples/s / '
               '(devices x peak FLOP/s per device)')

# Dense bf16 peak FLOP/s per chip (datasheets), by jax `device_kind` substring: the first
# match wins, so a name comes before every name it contains ('L40S' before 'L4').
PEAK_FLOPS = (
    ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12),
    ('TPU v5', 459e12), ('TPU v4', 275e12), ('TPU v3', 123e12), ('H200', 989e12),
    ('H100 PCIe', 756e12), ('H100', 989e12), ('A100', 312e12), ('L40S', 362e12),
    ('L40', 181e12), ('L4', 121e12), ('A10', 125e12),
)


def peak_flops_per_device(device_kind: str, override: float) -> float:
  if override > 0:
    return override
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return 0.0  # unknown (e.g. CPU): MFU is not reported unless --peak_flops is given

TERMS = ('dense', 'self_attention', 'cross_attention', 'logits', 'forward', 'train')


def _flat(boxed):
  """[(path names, shape)] of the unboxed tree, in tree order."""
  return [(path, tuple(v.shape)) for path, v in tree_paths.named_leaves(nn.unbox(boxed))]


# ------------------------------------------------------------------------ params
def count_params(config, boxed=None) -> Dict[str, Any]:
  """{'total', 'by_module': {top-level name: n}, 'embedding', 'non_embedding'}.

  `embedding` counts the embedding tables (token, absolute position, token type); a tied
  output layer is counted once, in `token_embedder`.
  """
  boxed = models.abstract_params(config.model) if boxed is None else boxed
  by_module: Dict[str, int] = {}
  embedding = 0
  for path, shape in _flat(boxed):
    n = math.prod(shape)
    by_module[path[0]] = by_module.get(path[0], 0) + n
    if path[-1] == 'embedding':
      embedding += n
  total = sum(by_module.values())
  return dict(total=total, by_module=by_module, embedding=embedding,
              non_embedding=total - embedding)


# ------------------------------------------------------------------------- FLOPs
def kernel_shapes(config, boxed=None):
  """[(path names, shape)] of every matmul kernel (a leaf named 'kernel'), in tree order."""
  boxed = models.abstract_params(config.model) if boxed is None else boxed
  return [(path, shape) for path, shape in _flat(boxed) if path[-1] == 'kernel']


def stream_of(path) -> str:
  """Which token stream a matmul kernel runs over: 'encoder', 'decoder' or 'logits'."""
  top = path[0]
  if top == 'logits_head':
    return 'logits'
  if top == 'decoder':
    if 'cross_attention' in path and path[-2] in ('key', 'value'):
      return 'encoder'
    return 'decoder'
  if top == 'encoder' or top.startswith('mlm'):
    return 'encoder'
  return 'decoder'


def flops_per_token(config, boxed=None) -> Dict[str, Any]:
  """Matmul FLOPs of one forward / training pass (`FORMULA`).

  Returns a dict: the top-level keys dense, self_attention, cross_attention, logits,
  forward, train are per TARGET token (decoder token; encoder token for MLM);
  `per_example` and `per_processed_token` hold the same terms per example and per token
  of encoder + decoder input; `lengths`, `formula` say what was assumed.
  """
  boxed = models.abstract_params(config.model) if boxed is None else boxed
  mcfg = models.ModelConfig.from_config(config.model)
  lengths = families.stream_lengths(config)
  l_enc, l_dec = lengths['encoder'], lengths['decoder']
  family = families.get(mcfg.family)
  n_enc = mcfg.num_encoder_layers if family.has_encoder else 0
  n_dec = mcfg.num_decoder_layers if family.has_decoder else 0
  heads_dkv = mcfg.num_heads * mcfg.d_kv

  matmul = {'encoder': 0, 'decoder': 0, 'logits': 0}
  for path, shape in kernel_shapes(config, boxed):
    matmul[stream_of(path)] += math.prod(shape)
  if mcfg.tie_embeddings:  # logits through the (tied) token embedding
    matmul['logits'] += mcfg.vocab_size * mcfg.d_model

  per_example = dict(
      dense=2 * (matmul['encoder'] * l_enc + matmul['decoder'] * l_dec),
      self_attention=4 * heads_dkv * (n_enc * l_enc ** 2 + n_dec * l_dec ** 2),
      cross_attention=(4 * heads_dkv * n_dec * l_dec * l_enc
                       if family.has_encoder and family.has_decoder else 0),
      logits=2 * matmul['logits'] * lengths['target'])
  per_example['forward'] = sum(per_example.values())
  per_example['train'] = 3 * per_example['forward']
  processed = l_enc + l_dec
  out: Dict[str, Any] = {k: v / lengths['target'] for k, v in per_example.items()}
  out.update(per_example=per_example,
             per_processed_token={k: v / processed for k, v in per_example.items()},
             matmul_params=matmul, lengths=lengths, formula=FORMULA)
  return out


# ------------------------------------------------------------------------ memory
def activation_bytes_estimate(config, axis_sizes: Dict[str, int]) -> Dict[str, Any]:
  """ROUGH per-device activation memory kept for the backward pass of one microbatch.

  Per layer and token: the layer input (float32), the norm outputs, q/k/v/context and the
  attention / MLP outputs, the MLP hidden units, the attention logits (float32) and weights
  over the key length; plus float32 logits twice (logits and their softmax / gradient).
  `remat='full'` keeps only each layer's input plus one layer's working set; other remat
  policies are counted like 'none' (an upper bound). Tensor parallelism divides the
  heads / mlp / vocab terms. XLA's buffer reuse and fusion make the true figure differ.
  """
  mcfg = models.ModelConfig.from_config(config.model)
  lengths = families.stream_lengths(config)
  micro = partitioning.microbatch_rows_per_device(config, axis_sizes)
  t = axis_sizes['tensor']
  a = 2 if mcfg.dtype == 'bfloat16' else 4
  d, hd, ff = mcfg.d_model, mcfg.num_heads * mcfg.d_kv / t, mcfg.d_ff / t
  n_wi = len(mcfg.mlp_activations)

  def attention(key_len):  # bytes per query token
    # Per head and key: float32 logits, float32 softmax and the weights in the activation
    # dtype (calibrated against the compiled step's memory analysis, tests/test_plan_memory.py).
    return (2 * d + 4 * hd) * a + mcfg.num_heads / t * key_len * (8 + a)

  mlp = (2 * d + (2 * n_wi + 1) * ff) * a
  streams = []  # (tokens per example, layers, bytes per token per layer)
  family = families.get(mcfg.family)
  if family.has_encoder:
    l = lengths['encoder']
    streams.append((l, mcfg.num_encoder_layers, 4 * d + attention(l) + mlp))
  if family.has_decoder:
    l = lengths['decoder']
    per = 4 * d + attention(l) + mlp
    if family.has_encoder:
      # cross-attention: queries over L_enc keys, plus k/v of the encoder output per layer
      per += attention(lengths['encoder']) + 2 * hd * a * lengths['encoder'] / l
    streams.append((l, mcfg.num_decoder_layers, per))
  if mcfg.remat == 'full':
    layers = sum(tok * n * 4 * d for tok, n, _ in streams)
    layers += max(tok * per for tok, _, per in streams)
  else:
    layers = sum(tok * n * per for tok, n, per in streams)
  logits = lengths['target'] * mcfg.vocab_size / t * 4 * 2
  total = micro * (layers + logits)
  return dict(bytes=int(total), examples_per_device=micro, remat=mcfg.remat,
              dtype=mcfg.dtype)


def _local_bytes(leaf, sharding) -> int:
  return math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def memory_per_device(config, num_devices: int, boxed=None) -> Dict[str, Any]:
  """Bytes per device of params, gradients and optimizer state (+ activation estimate).

  Raises ValueError (one sentence naming the field) when the mesh does not fit the devices,
  a sharded dimension does not divide its mesh axes, or the batch does not split.
  """
  boxed = models.abstract_params(config.model) if boxed is None else boxed
  sizes = partitioning.mesh_shape(config.partitioning, num_devices)
  rules = partitioning.axis_rules(config.partitioning)
  partitioning.validate_divisibility(boxed, sizes, rules)
  activations = activation_bytes_estimate(config, sizes)
  mesh = jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes))
  param_shardings = partitioning.shardings(boxed, mesh, rules)
  params = nn.unbox(boxed)
  tx = optim.create(config.optimizer, config.train.steps)
  state = jax.eval_shape(tx.init, params)
  state_bytes = jax.tree.map(
      lambda leaf, sharding: _local_bytes(leaf, sharding) if leaf.size > 1 else 0, state,
      optim.state_shardings(tx, params, param_shardings, mesh,
                            matrix_views=config.optimizer.name == 'adafactor'))
  names = jax.tree_util.tree_map_with_path(lambda p, _: '/'.join(tree_paths.path_names(p)),
                                           params)
  per_param = {
      name: dict(shape=leaf.shape, spec=tuple(sharding.spec),
                 local_shape=sharding.shard_shape(leaf.shape),
                 bytes=_local_bytes(leaf, sharding), optimizer_bytes=0)
      for name, leaf, sharding in zip(*map(jax.tree.leaves, (names, params, param_shardings)))}

  def add_optimizer_bytes(n, name):
    per_param[name]['optimizer_bytes'] += n
  optax.tree_map_params(tx, add_optimizer_bytes, state_bytes, names)
  params_bytes = sum(p['bytes'] for p in per_param.values())
  opt_bytes = sum(jax.tree.leaves(state_bytes))
  return dict(mesh=sizes, num_devices=num_devices, optimizer=str(config.optimizer.name),
              params_bytes=params_bytes, grads_bytes=params_bytes,
              # optax computes the whole update before apply_updates adds it to the params.
              update_bytes=params_bytes,
              optimizer_bytes=opt_bytes, activations_estimate=activations,
              total_bytes=3 * params_bytes + opt_bytes + activations['bytes'],
              per_param=per_param)
