"""Fine-tune the demo's tiny T5 on a text-to-text task from the shipped plays: given a line
(and the play's title), name its speaker. Run `make demo` first (it writes runs/default),
then
    python -m t5x_lite.train --config=configs/finetune_speaker.py --workdir=runs/speaker
`init_from` loads only the params (fresh Adafactor state, step 0); T5's fine-tuning recipe:
dropout 0.1, constant learning rate 1e-3.
"""
from configs import default


def get_config():
  cfg = default.get_config()
  cfg.init_from = 'runs/default'
  cfg.model.dropout_rate = 0.1
  cfg.data.update(dict(
      objective='text_to_text',
      train_source='jsonl:data/tasks/speaker/train.jsonl',
      validation_source='jsonl:data/tasks/speaker/validation.jsonl',
      inputs_field='inputs', targets_field='targets',
      inputs_length=64, targets_length=8, pack=True))
  cfg.train.update(dict(steps=400, batch_size=32, log_every=50, eval_every=200,
                        checkpoint_every=200))
  cfg.optimizer.update(dict(schedule='constant', learning_rate=1e-3, warmup_steps=0))
  return cfg
