"""One table per model family: what it reads, what it predicts, how long its rows are.

Owns the facts that depend on `config.model.family` and nothing else of the model:
    objectives       the data objectives the family trains on
    targets/weights  the features holding target ids and loss weights (what the loss reads)
    streams          which stacks run (encoder, decoder) and so which row lengths matter
    generates        how the family decodes text: 'encoder_decoder' (encoder inputs, decoder
                     generates), 'decoder_only' (a prompt continued by the decoder) or None
and the ONE function that turns a config into per-example feature lengths
(`feature_lengths`); the data pipeline pads/packs to it, and plan, bench and train count
tokens with it (`stream_lengths`), so their figures describe the rows actually fed.

Decoder-only rows: causal LM rows hold `targets_length` tokens; every objective with inputs
(prefix LM, text-to-text, span corruption, iid noise) is laid out as one prefix-LM row of
inputs + targets (`data.packing.concat_for_decoder`), `inputs_length + targets_length` long.
No TensorFlow or JAX import: configs, the pipeline and the model can all use it.
"""
import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  objectives: Tuple[str, ...]
  targets: str
  weights: str
  has_encoder: bool
  has_decoder: bool
  generates: Optional[str]


FAMILIES: Dict[str, Family] = {
    'encoder_decoder': Family(
        'encoder_decoder', ('span_corruption', 'iid_noise', 'prefix_lm', 'text_to_text'),
        'decoder_target_tokens', 'decoder_loss_weights', has_encoder=True, has_decoder=True,
        generates='encoder_decoder'),
    'encoder': Family(
        'encoder', ('mlm',), 'encoder_target_tokens', 'encoder_loss_weights',
        has_encoder=True, has_decoder=False, generates=None),
    'decoder': Family(
        'decoder', ('causal_lm', 'prefix_lm', 'text_to_text', 'span_corruption', 'iid_noise'),
        'decoder_target_tokens', 'decoder_loss_weights', has_encoder=False, has_decoder=True,
        generates='decoder_only'),
}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f'config.model.family={name!r} must be one of {", ".join(FAMILIES)}.')
  return FAMILIES[name]


def layer_counts(model_config) -> Dict[str, int]:
  """Layers per stack that runs ('encoder', 'decoder'; 0 if absent): a decoder-only model
  ignores num_encoder_layers (a T5 config switched to family='decoder' keeps its value)."""
  family = get(model_config.family)
  return dict(encoder=int(model_config.num_encoder_layers) if family.has_encoder else 0,
              decoder=int(model_config.num_decoder_layers) if family.has_decoder else 0)


def unused_layer_counts(model_config) -> str:
  """A note naming a layer count the family ignores (non-zero, of a stack it lacks), or ''."""
  family, counts = get(model_config.family), layer_counts(model_config)
  given = {stack: getattr(model_config, f'num_{stack}_layers') for stack in counts}
  unused = [f'config.model.num_{stack}_layers={given[stack]}' for stack in counts
            if given[stack] and not counts[stack]]
  return (f'{" and ".join(unused)} is unused: family={family.name!r} has no such stack.'
          if unused else '')


OBJECTIVES = ('span_corruption', 'mlm', 'iid_noise', 'causal_lm', 'prefix_lm', 'text_to_text')


def check_objective(family: str, objective: str) -> None:
  """ValueError naming the field unless `objective` is one `family` trains on."""
  if objective not in OBJECTIVES:
    raise ValueError(f'config.data.objective={objective!r} is not one of '
                     f'{", ".join(OBJECTIVES)}.')
  if objective not in get(family).objectives:
    raise ValueError(f'config.data.objective={objective!r} does not fit config.model.family='
                     f'{family!r} (it takes {", ".join(get(family).objectives)}).')


def decoder_rows_hold_inputs(family: str, objective: str) -> bool:
  """Decoder-only with an objective that has inputs: rows are inputs + targets (prefix LM)."""
  return not get(family).has_encoder and objective != 'causal_lm'


def feature_lengths(config) -> Dict[str, int]:
  """Per-example lengths of the packed features ('inputs', 'targets', ...) for the config's
  family and objective; the data pipeline pads and packs rows to exactly these."""
  d, family = config.data, get(config.model.family)
  il, tl = int(d.inputs_length), int(d.targets_length)
  if not family.has_decoder:  # MLM: targets are the encoder positions
    return {'inputs': il, 'targets': il, 'loss_weights': il}
  if not family.has_encoder:
    if not decoder_rows_hold_inputs(family.name, d.objective):
      return {'targets': tl}
    return {'targets': il + tl, 'causal_attention': il + tl, 'loss_weights': il + tl}
  return {'inputs': il, 'targets': tl}


def stream_lengths(config) -> Dict[str, int]:
  """Tokens per row that each stack reads ('encoder', 'decoder'; 0 if absent) and that carry
  targets ('target'), from `feature_lengths`. Raises ValueError naming a non-positive length."""
  family = get(config.model.family)
  for name in ('inputs_length', 'targets_length'):
    if int(config.data[name]) <= 0:
      raise ValueError(f'config.data.{name}={config.data[name]} must be a positive integer.')
  lengths = feature_lengths(config)
  return dict(encoder=lengths['inputs'] if family.has_encoder else 0,
              decoder=lengths['targets'] if family.has_decoder else 0,
              target=lengths['targets'])


def dummy_batch(family: str, batch_size: int = 1, inputs_length: int = 8,
                targets_length: int = 8) -> dict:
  """All-ones int32 batch with the features the family's model reads (for `init` and shapes)."""
  family = get(family)
  ones = lambda shape: np.ones(shape, np.int32)
  batch = {}
  if family.has_encoder:
    batch['encoder_input_tokens'] = ones((batch_size, inputs_length))
  if family.has_decoder:
    batch['decoder_input_tokens'] = ones((batch_size, targets_length))
    batch['decoder_target_tokens'] = ones((batch_size, targets_length))
  return batch


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """Random ids with the feature names and lengths the family's train step reads, full loss
  weights (benchmarks: the model + optimizer step alone)."""
  family = get(config.model.family)
  lengths = stream_lengths(config)
  rng = np.random.RandomState(seed)
  ids = lambda n: rng.randint(3, config.model.vocab_size, (batch_size, n)).astype(np.int32)
  if not family.has_decoder:
    n = lengths['encoder']
    return {'encoder_input_tokens': ids(n), family.targets: ids(n),
            family.weights: np.ones((batch_size, n), np.float32)}
  n = lengths['decoder']
  targets = ids(n)
  batch = {family.targets: targets, family.weights: np.ones((batch_size, n), np.float32),
           'decoder_input_tokens': np.concatenate(
               [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)}
  if family.has_encoder:
    batch['encoder_input_tokens'] = ids(lengths['encoder'])
  return batch
