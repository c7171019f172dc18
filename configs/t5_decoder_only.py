"""T5-style decoder-only LM (RMSNorm, relative bias, gated-GELU) with prefix-LM support.

`--config=configs/t5_decoder_only.py:tiny`; the objective defaults to prefix LM, where
`decoder_causal_attention` marks the bidirectional prefix.
"""
from configs import t5_v1_1


def get_config(size: str = 'small'):
  cfg = t5_v1_1.get_config(size)
  cfg.model.family = 'decoder'
  cfg.model.num_encoder_layers = 0
  cfg.data.objective = 'prefix_lm'
  return cfg
