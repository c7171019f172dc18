"""GPT-2 style decoder-only LM: `--config=configs/gpt.py:small` (tiny | small = 124M)."""
from configs import base

SIZES = {
    #        d_model heads layers
    'tiny': (64, 4, 2),
    'small': (768, 12, 12),
}


def get_config(size: str = 'small'):
  if size not in SIZES:
    raise ValueError(f'unknown GPT size {size!r}; choose one of {", ".join(SIZES)}.')
  cfg = base.get_base_config()
  d_model, heads, n_layers = SIZES[size]
  cfg.model.update(dict(
      family='decoder', vocab_size=50257, d_model=d_model, num_heads=heads,
      num_encoder_layers=0, num_decoder_layers=n_layers,
      mlp_activations=('gelu',), norm='layer', norm_eps=1e-5, use_bias=True,
      position_embedding='absolute', max_position_embeddings=1024,
      scale_attention_logits=True, tie_embeddings=True, init_scheme='gpt2',
      dropout_sites='bert_gpt2'))
  # GPT-2's shapes follow d_model and num_heads, also when the command line overrides them
  # (a fixed d_kv would leave heads x d_kv != d_model: no GPT2LMHeadModel has that).
  cfg.model.d_kv = cfg.model.get_ref('d_model') // cfg.model.get_ref('num_heads')
  cfg.model.d_ff = 4 * cfg.model.get_ref('d_model')
  cfg.data.objective = 'causal_lm'
  # nanoGPT's GPT-2 (124M) run: 600k steps, 2000 warmup, cosine to min_lr 6e-5. The tiny
  # size keeps the base's 1000 steps with a warmup that leaves room for the cosine to decay.
  cfg.optimizer.update(dict(name='adamw', schedule='cosine', learning_rate=6e-4,
                            min_learning_rate=6e-5, weight_decay=0.1,
                            warmup_steps=2000 if size != 'tiny' else 100,
                            b2=0.95, clip_grad_norm=1.0))
  cfg.optimizer.z_loss = 0.0  # a T5 (t5x) regulariser: GPT-2 trained without it
  if size != 'tiny':
    cfg.train.steps = 600_000
    cfg.data.targets_length = 1024  # nanoGPT's block_size: rows fill the position table
  return cfg
