"""Sharding on 8 fake CPU devices (tests/conftest.py sets jax_num_cpu_devices=8).

- the same model and batch give the same logits under data-parallel, FSDP and tensor-parallel
  meshes as on one device, and parameters / outputs really are split as the mesh says;
- PartitionSpecs of representative parameters under the default rules table, a pure
  data-parallel table, and a scanned model (leading `layers` axis), written out literally;
- a mesh that does not match the device count, or a dimension its mesh axes do not divide,
  fails with a ValueError naming the field / the parameter.
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from random_params import random_params
import tiny_run
from t5x_lite import models, partitioning

FOUR_HEADS = dict(vocab_size=128, num_heads=4, d_kv=8)
CPUS = jax.devices('cpu')

DATA_PARALLEL = dict(data=8, fsdp=1, tensor=1)
FSDP = dict(data=1, fsdp=8, tensor=1)
TENSOR_PARALLEL = dict(data=4, fsdp=1, tensor=2)


@pytest.fixture(autouse=True, scope='module')
def eight_cpu_devices():
  if len(CPUS) != 8:
    pytest.fail(f'expected 8 CPU devices from tests/conftest.py, found {len(CPUS)}')


def tiny_config(name, **overrides):
  return tiny_run.tiny_config(name, **{**FOUR_HEADS, **overrides})


def make_batch(name, rng, rows=8, length=8):
  tokens = lambda n: rng.integers(2, 128, size=(rows, n)).astype(np.int32)
  targets = tokens(length)
  targets[1, 5:] = 0  # a padded row
  inputs = np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1)
  batch = {'decoder_target_tokens': targets, 'decoder_input_tokens': inputs}
  if name == 't5':
    enc = tokens(10)
    enc[2, 6:] = 0
    batch['encoder_input_tokens'] = enc
  return batch


def abstract_variables(model_cfg, batch):
  """Boxed (nn.Partitioned) ShapeDtypeStructs of the model's variables."""
  module = models.build(model_cfg)
  return module, jax.eval_shape(module.init, jax.random.PRNGKey(0), batch)


def mesh_for(cfg, mesh_axes):
  cfg.partitioning.mesh.update(mesh_axes)
  return partitioning.create_mesh(cfg.partitioning, devices=CPUS)


# ------------------------------------------------------------ same logits on every mesh
@functools.lru_cache(maxsize=None)
def single_device_reference(name):
  cfg = tiny_config(name)
  batch = make_batch(name, np.random.default_rng(0))
  module, abstract = abstract_variables(cfg.model, batch)
  params = random_params(nn.unbox(abstract)['params'])
  apply = lambda p, b: module.apply({'params': p}, b, deterministic=True)
  with jax.default_device(CPUS[0]):
    logits = np.asarray(jax.jit(apply)(params, batch))
  return module, abstract, params, batch, logits


# Per mesh: rows of the batch per device, and the shard shape of an attention query kernel
# [embed=32, heads=4, kv=8] (split on embed over fsdp, on heads over tensor).
MESH_CASES = {
    'data_parallel': (DATA_PARALLEL, 1, (32, 4, 8)),
    'fsdp': (FSDP, 1, (4, 4, 8)),
    'tensor_parallel': (TENSOR_PARALLEL, 2, (32, 2, 8)),
}


@pytest.mark.parametrize('name', ['t5', 'gpt'])
@pytest.mark.parametrize('mesh_name', list(MESH_CASES))
def test_same_logits_on_every_mesh(name, mesh_name):
  module, abstract, params, batch, expected = single_device_reference(name)
  mesh_axes, rows_per_device, query_shard = MESH_CASES[mesh_name]
  cfg = tiny_config(name)
  mesh = mesh_for(cfg, mesh_axes)
  assert dict(mesh.shape) == mesh_axes
  rules = partitioning.axis_rules(cfg.partitioning)
  partitioning.validate_divisibility(abstract, mesh, rules)
  shardings = partitioning.shardings(abstract, mesh, rules)['params']
  with partitioning.activate(mesh, rules):
    sharded_params = jax.device_put(params, shardings)
    sharded_batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
    logits = jax.jit(lambda p, b: module.apply({'params': p}, b, deterministic=True))(
        sharded_params, sharded_batch)
  assert logits.dtype == jnp.float32
  assert len(logits.sharding.device_set) == 8
  assert {s.data.shape[0] for s in logits.addressable_shards} == {rows_per_device}
  query = sharded_params['decoder']['layers_0']['self_attention']['query']['kernel']
  assert {s.data.shape for s in query.addressable_shards} == {query_shard}
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------- partition specs
def t5_abstract(**overrides):
  cfg = tiny_config('t5', **overrides)
  return abstract_variables(cfg.model, make_batch('t5', np.random.default_rng(0)))[1]


def pick(tree, scanned=False):
  """Representative leaves of a T5 params tree."""
  p = tree['params']
  layer = p['encoder']['layers' if scanned else 'layers_0']
  return {
      'token_embedder/embedding': p['token_embedder']['embedding'],
      'encoder/layers_0/self_attention/query/kernel': layer['self_attention']['query']['kernel'],
      'encoder/layers_0/self_attention/out/kernel': layer['self_attention']['out']['kernel'],
      'encoder/layers_0/mlp/wi_0/kernel': layer['mlp']['wi_0']['kernel'],
      'encoder/layers_0/mlp/wo/kernel': layer['mlp']['wo']['kernel'],
      'encoder/layers_0/mlp_norm/scale': layer['mlp_norm']['scale'],
      'logits_head/dense/kernel': p['logits_head']['dense']['kernel'],
      'encoder/final_norm/scale': p['encoder']['final_norm']['scale'],
      'encoder/relpos_bias/rel_embedding': p['encoder']['relpos_bias']['rel_embedding'],
  }


DEFAULT_SPECS = {
    'token_embedder/embedding': P('tensor', 'fsdp'),
    'encoder/layers_0/self_attention/query/kernel': P('fsdp', 'tensor', None),
    'encoder/layers_0/self_attention/out/kernel': P('tensor', None, 'fsdp'),
    'encoder/layers_0/mlp/wi_0/kernel': P('fsdp', 'tensor'),
    'encoder/layers_0/mlp/wo/kernel': P('tensor', 'fsdp'),
    'encoder/layers_0/mlp_norm/scale': P('fsdp'),
    'logits_head/dense/kernel': P('fsdp', 'tensor'),
    'encoder/final_norm/scale': P('fsdp'),
    'encoder/relpos_bias/rel_embedding': P('tensor', None),
}


def test_logical_axes_of_parameters():
  specs = pick(partitioning.logical_specs(t5_abstract()))
  assert specs == {
      'token_embedder/embedding': P('vocab', 'embed'),
      'encoder/layers_0/self_attention/query/kernel': P('embed', 'heads', 'kv'),
      'encoder/layers_0/self_attention/out/kernel': P('heads', 'kv', 'embed'),
      'encoder/layers_0/mlp/wi_0/kernel': P('embed', 'mlp'),
      'encoder/layers_0/mlp/wo/kernel': P('mlp', 'embed'),
      'encoder/layers_0/mlp_norm/scale': P('embed'),
      'logits_head/dense/kernel': P('embed', 'vocab'),
      'encoder/final_norm/scale': P('embed'),
      'encoder/relpos_bias/rel_embedding': P('heads', 'relpos_buckets'),
  }


@pytest.mark.parametrize('name', ['t5', 'bert', 'gpt'])
def test_every_logical_axis_the_models_use_is_known_to_the_rules_check(name, monkeypatch):
  """partitioning.LOGICAL_AXES (what a rule may name) holds every logical name of every
  family's parameters (scanned and not) and activation constraints."""
  from t5x_lite import layers
  used = set()
  real = layers.constrain
  monkeypatch.setattr(layers, 'constrain', lambda x, axes: (used.update(axes), real(x, axes))[1])
  for scan in (False, True):
    cfg = tiny_config(name, scan_layers=scan)
    batch = make_batch('t5' if name == 't5' else 'gpt', np.random.default_rng(0))
    if name == 'bert':
      batch = {'encoder_input_tokens': batch['decoder_target_tokens']}
    _, variables = abstract_variables(cfg.model, batch)
    for spec in jax.tree.leaves(partitioning.logical_specs(variables),
                                is_leaf=lambda x: isinstance(x, P)):
      used.update(a for a in spec if a is not None)
  used.discard(None)
  assert used and used <= set(partitioning.LOGICAL_AXES), used - set(partitioning.LOGICAL_AXES)
  for logical, _ in base.get_base_config().partitioning.logical_axis_rules:
    assert logical in partitioning.LOGICAL_AXES


def test_a_rule_for_a_logical_axis_nothing_has_is_refused():
  cfg = tiny_config('t5')
  cfg.partitioning.logical_axis_rules = (('batch', ('data', 'fsdp')), ('embd', 'fsdp'))
  with pytest.raises(ValueError, match="no parameter or activation has the logical axis 'embd'"):
    partitioning.axis_rules(cfg.partitioning)


def test_partition_specs_default_rules():
  rules = partitioning.axis_rules(base.get_base_config().partitioning)
  assert pick(partitioning.mesh_specs(t5_abstract(), rules)) == DEFAULT_SPECS


def test_partition_specs_pure_data_parallel_rules():
  rules = (('batch', ('data', 'fsdp')), ('vocab', None), ('embed', None), ('mlp', None),
           ('heads', None), ('kv', None), ('layers', None), ('relpos_buckets', None),
           ('length', None))
  assert pick(partitioning.mesh_specs(t5_abstract(), rules)) == {
      'token_embedder/embedding': P(None, None),
      'encoder/layers_0/self_attention/query/kernel': P(None, None, None),
      'encoder/layers_0/self_attention/out/kernel': P(None, None, None),
      'encoder/layers_0/mlp/wi_0/kernel': P(None, None),
      'encoder/layers_0/mlp/wo/kernel': P(None, None),
      'encoder/layers_0/mlp_norm/scale': P(None),
      'logits_head/dense/kernel': P(None, None),
      'encoder/final_norm/scale': P(None),
      'encoder/relpos_bias/rel_embedding': P(None, None),
  }


def test_partition_specs_scanned_model():
  abstract = t5_abstract(scan_layers=True)
  logical = pick(partitioning.logical_specs(abstract), scanned=True)
  assert logical['encoder/layers_0/self_attention/query/kernel'] == P(
      'layers', 'embed', 'heads', 'kv')
  assert logical['encoder/layers_0/mlp_norm/scale'] == P('layers', 'embed')
  assert logical['encoder/relpos_bias/rel_embedding'] == P('heads', 'relpos_buckets')

  # Default rules: the layer axis is replicated, the rest as unscanned.
  default_rules = partitioning.axis_rules(base.get_base_config().partitioning)
  specs = pick(partitioning.mesh_specs(abstract, default_rules), scanned=True)
  assert specs == {
      **DEFAULT_SPECS,
      'encoder/layers_0/self_attention/query/kernel': P(None, 'fsdp', 'tensor', None),
      'encoder/layers_0/self_attention/out/kernel': P(None, 'tensor', None, 'fsdp'),
      'encoder/layers_0/mlp/wi_0/kernel': P(None, 'fsdp', 'tensor'),
      'encoder/layers_0/mlp/wo/kernel': P(None, 'tensor', 'fsdp'),
      'encoder/layers_0/mlp_norm/scale': P(None, 'fsdp'),
  }

  # Ordered rules: a `layers -> fsdp` rule placed first claims fsdp, so `embed` inside the
  # stacked layers is left unsharded; parameters outside the layers keep embed -> fsdp.
  layer_rules = (('layers', 'fsdp'),) + default_rules
  specs = pick(partitioning.mesh_specs(abstract, layer_rules), scanned=True)
  assert specs['encoder/layers_0/self_attention/query/kernel'] == P('fsdp', None, 'tensor', None)
  assert specs['encoder/layers_0/mlp_norm/scale'] == P('fsdp', None)
  assert specs['token_embedder/embedding'] == P('tensor', 'fsdp')
  assert specs['encoder/final_norm/scale'] == P('fsdp')


def test_batch_sharding_splits_rows_over_data_and_fsdp():
  mesh = mesh_for(tiny_config('t5'), TENSOR_PARALLEL)
  assert partitioning.batch_sharding(mesh).spec == P(('data', 'fsdp'))


# ------------------------------------------------------------------------ mesh errors
@pytest.mark.parametrize('mesh_axes', [
    dict(data=3, fsdp=1, tensor=1),     # 3 devices, 8 available
    dict(data=4, fsdp=4, tensor=1),     # 16 devices
    dict(data=3, fsdp=-1, tensor=1),    # -1 cannot fill 8 / 3
    dict(data=-1, fsdp=-1, tensor=1),   # two -1 axes
], ids=['too_few', 'too_many', 'cannot_fill', 'two_fills'])
def test_mesh_not_matching_devices_raises(mesh_axes):
  cfg = tiny_config('t5')
  with pytest.raises(ValueError, match=re.escape('config.partitioning.mesh')):
    mesh_for(cfg, mesh_axes)


def test_indivisible_heads_raise_naming_the_parameter():
  cfg = tiny_config('t5', num_heads=3)
  abstract = t5_abstract(num_heads=3)
  mesh = mesh_for(cfg, TENSOR_PARALLEL)
  rules = partitioning.axis_rules(cfg.partitioning)
  with pytest.raises(ValueError) as info:
    partitioning.validate_divisibility(abstract, mesh, rules)
  message = str(info.value)
  assert re.search(r'params/(encoder|decoder)/(layers_\d+/(self|cross)_attention/'
                   r'(query|key|value|out)/kernel|relpos_bias/rel_embedding)', message), message
  assert 'heads' in message and 'size 3' in message, message


def test_indivisible_embed_under_fsdp_raises_naming_the_parameter():
  cfg = tiny_config('gpt', d_model=36, d_kv=9)
  abstract = abstract_variables(cfg.model, make_batch('gpt', np.random.default_rng(0)))[1]
  rules = partitioning.axis_rules(cfg.partitioning)
  # Fine under data parallelism (nothing is split), not under FSDP over 8 devices.
  partitioning.validate_divisibility(abstract, mesh_for(cfg, DATA_PARALLEL), rules)
  with pytest.raises(ValueError) as info:
    partitioning.validate_divisibility(abstract, mesh_for(cfg, FSDP), rules)
  message = str(info.value)
  assert re.search(r'parameter params/\S+', message), message
  assert 'embed' in message and 'size 36' in message, message


def test_dcn_mesh_multiplies_axes_and_needs_matching_granules():
  """Multi-slice: mesh sizes are per slice (ici), dcn_mesh multiplies them across slices."""
  cfg = ml_collections.ConfigDict(dict(
      mesh=dict(data=-1, fsdp=2, tensor=1), dcn_mesh=dict(data=2, fsdp=1, tensor=1)))
  assert dict(partitioning.mesh_shape(cfg, 8)) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  with pytest.raises(ValueError, match='config.partitioning.dcn_mesh .* needs 2 processes'):
    partitioning.create_mesh(cfg, jax.devices()[:8])  # one process here
