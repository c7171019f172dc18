"""Named presets of `config.data` for the shipped data (no TF import; configs may use it).

    from t5x_lite.data import tasks
    cfg.data.update(tasks.get('speaker'))      # fine-tune on the speaker task

Each preset sets sources, objective and lengths; anything else keeps its config value.
"""

TASKS = {
    # Pretraining on the shipped Shakespeare corpus (document = blank-line separated speech).
    'shakespeare_span_corruption': dict(
        objective='span_corruption', train_source='text:data/corpus/train.txt',
        validation_source='text:data/corpus/validation.txt', doc_boundary='blank_line'),
    'shakespeare_causal_lm': dict(
        objective='causal_lm', train_source='text:data/corpus/train.txt',
        validation_source='text:data/corpus/validation.txt', doc_boundary='blank_line'),
    'shakespeare_mlm': dict(
        objective='mlm', train_source='text:data/corpus/train.txt',
        validation_source='text:data/corpus/validation.txt', doc_boundary='blank_line'),
    # Fine-tuning: who speaks this line? ("speaker: <play> | <speech>" -> "<speaker>").
    'speaker': dict(
        objective='text_to_text', train_source='jsonl:data/tasks/speaker/train.jsonl',
        validation_source='jsonl:data/tasks/speaker/validation.jsonl',
        inputs_field='inputs', targets_field='targets', inputs_length=80, targets_length=12),
    # Fine-tuning: the verse line that follows a given line.
    'next_line': dict(
        objective='text_to_text', train_source='tsv:data/tasks/next_line/train.tsv',
        validation_source='tsv:data/tasks/next_line/validation.tsv',
        inputs_field='inputs', targets_field='targets', inputs_length=32, targets_length=32),
}


def get(name: str) -> dict:
  """The `config.data` overrides of task `name`."""
  if name not in TASKS:
    raise ValueError(f'unknown data task {name!r}; choose one of {", ".join(sorted(TASKS))}.')
  return dict(TASKS[name])
