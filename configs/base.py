"""Shared base of every config: one place where each default lives.

Config files call `get_base_config()` and override what differs; nothing else sets
defaults (the model section is generated from `t5x_lite.models.ModelConfig`), so a value either comes from here, from the config file, or from the
command line (`--config.a.b=v`).
"""
import dataclasses

import ml_collections

from t5x_lite import models
from t5x_lite import optim


def get_base_config() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()

  # ---- model: one set of layers; the families are configurations of it. Its defaults and
  # what each field means are declared once, in t5x_lite.models.ModelConfig.
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(models.ModelConfig()))

  # ---- data: owned by t5x_lite/data (see t5x_lite/data/pipeline.py) ----
  d = cfg.data = ml_collections.ConfigDict()
  d.objective = 'span_corruption'  # span_corruption | mlm | iid_noise | causal_lm | prefix_lm | text_to_text
  d.inputs_length = 512             # encoder / inputs tokens per row (EOS included)
  d.targets_length = 114            # decoder / targets tokens per row; span corruption needs >= the
                                    # length helper's (objectives.span_corruption_lengths: 512 -> 114)
  d.pack = True                     # trim-and-pack examples into rows (segment ids + positions)
  d.seed = 0                        # shuffling and objective randomness (per shard)
  # Vocabulary: SentencePiece model (pad 0, eos 1, unk 2, [MASK]) + extra_ids sentinels on top.
  d.vocab = 'data/vocab/shakespeare_1k.model'  # relative paths: cwd, then the repo root
  d.extra_ids = 100                 # sentinels <extra_id_0> = vocab_size - 1, counting down
  # Sources: comma-separated mixture of KIND:TARGET[;rate=R;boundary=...;field=...;split=...]
  # KIND: text (glob) | jsonl | tsv (header row) | tfds (name[:version]); see data/sources.py.
  d.train_source = 'text:data/corpus/train.txt'
  d.validation_source = 'text:data/corpus/validation.txt'
  d.doc_boundary = 'blank_line'     # plain text documents: line | blank_line | file
  d.text_field = 'text'             # JSONL/TSV/TFDS field holding document text (LM objectives)
  d.inputs_field = 'inputs'         # text_to_text: source fields of inputs and targets
  d.targets_field = 'targets'
  d.tfds_data_dir = ''              # TFDS data_dir ('' = TFDS default)
  d.on_bad_input = 'skip'           # skip (counted, reported) | error (stop at the file:line)
  d.shuffle_buffer_size = 1000      # documents in all, split over the streams and a mixture's
                                    # sources (see data/files.py)
  # Virtual shards: the global batch is always built from this many independent streams,
  # a fixed block of rows each; any process count dividing it sees the same batches and
  # can resume any checkpoint (t5x_lite/data/pipeline.py).
  d.num_virtual_shards = 4
  d.eval_repeat = False             # validation: one finite pass (False) or endless
  # Objective parameters.
  d.noise_density = 0.15            # span_corruption and iid_noise
  d.mean_noise_span_length = 3.0    # span_corruption
  d.iid_random_prob = 0.1           # iid_noise: noise token -> random id, else <extra_id_0>
  d.mlm_rate = 0.15                 # mlm: fraction of non-special tokens (or words) selected
  d.mlm_mask_prob = 0.8             # of the selected: -> [MASK]
  d.mlm_random_prob = 0.1           # of the selected: -> random token (the rest unchanged)
  d.mlm_whole_word = False          # mlm: select whole words (SentencePiece '▁' starts a word)

  # ---- train ----
  t = cfg.train = ml_collections.ConfigDict()
  t.steps = 1000
  t.batch_size = 8                  # global, in examples (rows after packing)
  t.grad_accum_steps = 1
  t.seed = 0
  t.log_every = 10
  t.eval_every = 200
  t.eval_steps = 10
  t.checkpoint_every = 200
  t.loss_normalization = 'num_real_target_tokens'  # sum | num_real_target_tokens | constant
  t.loss_normalization_constant = 1.0
  t.label_smoothing = 0.0
  t.on_nonfinite = 'stop'           # non-finite loss / grad norm: stop | skip (the update is
                                    # never applied; skip counts it in metrics skipped_steps)
  t.max_consecutive_skips = 10      # skip: stop after this many consecutive non-finite steps

  # ---- optimizer ----
  o = cfg.optimizer = ml_collections.ConfigDict()
  o.name = 'adafactor'              # adafactor | adamw
  o.schedule = 'rsqrt'              # rsqrt | cosine | constant
  o.learning_rate = 0.01            # peak / constant value
  o.warmup_steps = 10000            # rsqrt: peak for this many steps, then peak * sqrt(warmup /
                                    # step) (T5); cosine: linear 0 -> peak (the first
                                    # step's rate is 0, as optax's); constant: unused
  o.decay_steps = 0                 # cosine: at min_learning_rate from this step, warmup
                                    # included (0 = train.steps; > warmup_steps when set)
  o.min_learning_rate = 0.0         # the floor after warmup: cosine decays to it (nanoGPT:
                                    # peak / 10), rsqrt no lower; <= learning_rate
  o.clip_grad_norm = 0.0            # 0 = off; the logged grad_norm is before clipping
  o.z_loss = 1e-4                   # t5x's auxiliary loss z_loss * log(Z)^2 per target token
  # AdamW: p -= lr * weight_decay * p per step. Adafactor (t5x's weight_decay_rate): p -=
  # weight_decay * p per step, not scaled by the rate: a far smaller value (docs/t5.md §6)
  o.weight_decay = 0.0
  o.b1 = optim.ADAMW_B1             # AdamW's moment decays; Adafactor keeps T5's (no
  o.b2 = optim.ADAMW_B2             # momentum, second-moment decay 1 - step^-0.8): train
                                    # warns when they differ from these under adafactor

  # ---- partitioning ----
  p = cfg.partitioning = ml_collections.ConfigDict()
  p.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  p.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  # Ordered: the first rule whose mesh axis is still free wins (flax logical_to_mesh).
  p.logical_axis_rules = (
      ('batch', ('data', 'fsdp')),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('kv', None),
      ('layers', None),
      ('relpos_buckets', None),
      ('length', None),
  )

  # ---- checkpoint ----
  c = cfg.checkpoint = ml_collections.ConfigDict()
  # One value under two names: setting either (file or command line) sets both. (A config
  # file that replaces the train or checkpoint section whole cuts the link; validation then
  # refuses the two if they differ.)
  c.period = t.get_ref('checkpoint_every')
  c.keep = 3
  # Not `async`: a Python keyword, which config_flags cannot parse in --config.checkpoint.async.
  c.async_save = True

  cfg.init_from = ''                # '' | checkpoint dir | 'hf:DIR'
  return cfg
