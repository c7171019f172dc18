"""T5 v1.1 sizes (docs/t5.md §5): `get_config('small')` etc.

Use as `--config=configs/t5_v1_1.py:base`. Sizes: tiny (for tests; the CPU demo's
model is configs/default.py), small, base, large, xl, xxl.
"""
from configs import base

SIZES = {
    #        d_model d_ff  heads d_kv layers
    'tiny': (64, 128, 4, 16, 2),
    'small': (512, 1024, 6, 64, 8),
    'base': (768, 2048, 12, 64, 12),
    'large': (1024, 2816, 16, 64, 24),
    'xl': (2048, 5120, 32, 64, 24),
    'xxl': (4096, 10240, 64, 64, 24),
}


def get_config(size: str = 'small'):
  if size not in SIZES:
    raise ValueError(f'unknown T5 v1.1 size {size!r}; choose one of {", ".join(SIZES)}.')
  cfg = base.get_base_config()
  d_model, d_ff, heads, d_kv, n_layers = SIZES[size]
  cfg.model.update(dict(
      family='encoder_decoder', vocab_size=32128, d_model=d_model, d_ff=d_ff,
      num_heads=heads, d_kv=d_kv, num_encoder_layers=n_layers, num_decoder_layers=n_layers,
      mlp_activations=('gelu', 'linear'), tie_embeddings=False))
  return cfg
