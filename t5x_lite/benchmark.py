r"""One benchmark run, printed side by side: what `python -m t5x_lite.bench` shows.

1. peak: `--peak_flops` if given; else a known accelerator's datasheet dense bf16 peak
   (`accounting.PEAK_FLOPS`, as training's log uses); else (CPU, unknown devices) this
   machine's float32 matmul FLOP/s (`throughput.matmul_peak`, best of 10 jitted 1024 x 1024
   matmuls, 2 n^3 FLOPs each, measured before and after the train step, best of both; on CPU
   also best of both dot emitters, YNNPACK and XLA's).
2. train step: the full step (loss, gradients, optimizer update; `throughput.measure_train_step`
   on synthetic batches of the config's shapes): ms, tokens/s (every input + target position),
   MFU (`accounting.MFU_FORMULA`, FLOPs by `accounting.FORMULA`), from the mean of the timed
   steps; beside it the fastest step and its MFU (the peak's own estimator, a best of n).
3. grad step vs FlaxT5: loss + gradients of ours and of Hugging Face FlaxT5 at the same sizes,
   same loss function and batch (`hf_reference.grad_step`), timed in alternating rounds;
   ratio = FlaxT5 median / ours (> 1: ours is faster).
4. decode: new tokens/s = rows x new tokens / s (a beam search's K beams count once per row)
   for greedy and beam search (`decoding`), beside FlaxT5 `generate` at equal shapes, paired.
5. input pipeline: `get_dataset(config, 'train')` token positions/s (and non-padding tokens/s).

With `matmuls`, 2 is followed by every matmul of the forward pass, each distinct shape timed
alone with how many of it one forward pass runs, against the same peak, whose 1024^3
matmuls are also timed in alternation with each shape (`throughput.matmul_rates`; the peak
is the best of all its measurements): where MFU is lost. Then the ceiling they set
(`throughput.matmul_ceiling`): the MFU of a step whose matmuls ran at those rates (backward
dots at their forward shapes' rates) and whose every other op took no time.

`train_only` stops after 2 (accelerator runs: launch/gpu_bench.sh); `decode_only` runs only
4 (no peak, no train step, no pipeline: the decode comparison at large shapes, where each
FlaxT5 `generate` takes minutes on a CPU). Every figure is also returned in one flat dict
(`--json` prints it); a figure that cannot be measured here is None with its reason under
`notes`.
"""
from typing import Any, Callable, Dict

import numpy as np

from t5x_lite import accounting
from t5x_lite import families
from t5x_lite import throughput


def _our_model(config):
  import flax.linen as nn
  import jax
  from t5x_lite import models
  model = models.build(config.model)
  batch = families.dummy_batch(config.model.family)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  return model, nn.unbox(variables)['params']


def _our_grad_step(config, batch) -> Callable[[], Any]:
  """Loss + gradients of our model, the same loss function `hf_reference.grad_step` uses."""
  import jax
  from t5x_lite import losses
  model, params = _our_model(config)
  family = families.get(config.model.family)

  def loss(p, b):
    logits = model.apply({'params': p}, b)
    return losses.weighted_loss(logits, b[family.targets], b[family.weights],
                                z_loss=config.optimizer.z_loss)[0]

  f = jax.jit(jax.value_and_grad(loss))
  batch = jax.device_put(batch)
  return lambda: f(params, batch)


def _our_decoder(config, batch, max_length: int, beam_size: int):
  """A no-argument callable decoding `batch` (greedy when beam_size is 1) -> (tokens
  [rows, (K,) max_length], scores)."""
  from t5x_lite import decoding
  model, params = _our_model(config)
  if beam_size == 1:
    return lambda: decoding.decode(model, params, batch, max_length, beam_size=1)
  return lambda: decoding.beam_search(model, params, batch, max_length, beam_size)


def _reference_reason(config, reference: bool) -> str:
  """Why FlaxT5 is not timed beside us ('' when it is)."""
  from t5x_lite import hf_config, hf_reference
  if not reference:
    return 'not asked (--noreference)'
  if not hf_reference.available():
    return 'transformers is not installed'
  try:
    if hf_config.hf_config_dict(config.model).get('model_type') != 't5':
      return 'the config is not a T5 encoder-decoder'
  except ValueError as e:
    return str(e)
  return ''


def run(config, *, steps: int = 3, rounds: int = 3, decode_batch_size: int = 0,
        decode_length: int = 0, beam_size: int = 4, peak_flops: float = 0.0,
        reference: bool = True, pipeline_seconds: float = 5.0, train_only: bool = False,
        decode_only: bool = False, matmuls: bool = False,
        print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
  import jax
  from t5x_lite import hf_reference
  out: Dict[str, Any] = {'notes': {}}
  notes = out['notes']
  tc, lengths = config.train, families.stream_lengths(config)
  family = families.get(config.model.family)
  if train_only and decode_only:
    raise ValueError('--train_only and --decode_only exclude each other.')
  if matmuls and decode_only:
    raise ValueError('--matmuls times the train step\'s matmuls; --decode_only skips the '
                     'train step.')
  if decode_only and not family.has_decoder:
    raise ValueError(f'--decode_only: model.family={config.model.family!r} does not decode.')
  if family.has_decoder and not train_only:  # refused now, not after the train step's timing
    _check_decode_fits(config, decode_length or _default_new_tokens(config))
  if decode_only:
    out.update(devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
               lengths=dict(lengths))
    _decode(config, out, rounds, decode_batch_size or tc.batch_size,
            decode_length or _default_new_tokens(config), beam_size,
            _reference_reason(config, reference), print_fn)
    return out

  # A known accelerator is measured against its datasheet's dense bf16 peak (as training's
  # log does), not a float32 matmul: MFU is a fraction of what the chip can do. Elsewhere the
  # peak is measured before and after the step, best of both: on a shared machine a slow
  # spell during one measurement would otherwise understate the peak and overstate MFU.
  kind = jax.devices()[0].device_kind
  datasheet = accounting.peak_flops_per_device(kind, 0.0)
  if peak_flops > 0:
    peak, r, source, how = peak_flops, throughput.measure_train_step(config, steps), 'given', ''
  elif datasheet > 0:
    peak, r, source = datasheet, throughput.measure_train_step(config, steps), 'datasheet'
    # What this chip's matmul unit reaches here, beside the datasheet: MFU against it says
    # how much of the attainable the step gets (an H200: 617-702 of 989 TFLOP/s, README).
    out['measured_bf16_matmul_flops'] = throughput.matmul_peak(8192, dtype='bfloat16')
    how = (f': dense bf16 peak of a {kind}, accounting.PEAK_FLOPS; measured here, best of 10 '
           f'bfloat16 8192^3 matmuls: {out["measured_bf16_matmul_flops"] / 1e12:,.0f} TFLOP/s')
  else:
    before = throughput.matmul_peak()
    r = throughput.measure_train_step(config, steps)
    peak, source = max(before, throughput.matmul_peak()), 'measured'
    how = ': best of 10 float32 1024x1024 matmuls before the train step and 10 after, 2n^3 FLOPs'
    if r['device_kind'] == 'cpu':
      how += ', each with both dot emitters (YNNPACK, XLA)'
  if matmuls:
    out['matmuls'] = throughput.matmul_rates(config)
    if source == 'measured':  # also timed beside every row: the best of all
      peak = max([peak] + [row['peak_flops_per_sec'] for row in out['matmuls']])
      how += '; and 10 beside each matmul shape below'
  out.update(peak_flops=peak, peak_source=source)
  print_fn(f'peak: {peak / 1e9:,.1f} GFLOP/s per device ({source}{how})')

  mfu = r['flops_per_sec'] / (r['devices'] * peak)
  # The fastest step against the peak is like for like when the peak is a best of n too.
  fastest_mfu = mfu * r['step_time'] / r['fastest_step_time']
  out.update(devices=r['devices'], device_kind=r['device_kind'], batch_size=tc.batch_size,
             lengths=dict(lengths), train_step_ms=1000 * r['step_time'],
             train_step_fastest_ms=1000 * r['fastest_step_time'], train_steps_timed=steps,
             train_tokens_per_s=r['tokens_per_sec'], train_flops_per_s=r['flops_per_sec'],
             train_mfu=mfu, train_mfu_fastest_step=fastest_mfu,
             mfu_formula=accounting.MFU_FORMULA, flops_formula=r['formula'])
  print_fn(f'train step ({r["devices"]} x {r["device_kind"]}, batch {tc.batch_size}, lengths '
           f'{dict(lengths)}): {out["train_step_ms"]:,.1f} ms, {r["tokens_per_sec"]:,.0f} '
           f'tokens/s, {r["flops_per_sec"] / 1e9:,.1f} GFLOP/s, MFU {100 * mfu:.1f}% (mean of '
           f'{steps} steps; the fastest, {out["train_step_fastest_ms"]:,.1f} ms: MFU '
           f'{100 * fastest_mfu:.1f}%)')
  if 'measured_bf16_matmul_flops' in out:
    out['train_mfu_of_measured_matmul'] = r['flops_per_sec'] / (
        r['devices'] * out['measured_bf16_matmul_flops'])
    print_fn(f'  against the measured bf16 matmul instead of the datasheet: MFU '
             f'{100 * out["train_mfu_of_measured_matmul"]:.1f}%')
  print_fn(f'  {accounting.MFU_FORMULA}; FLOPs: {r["formula"]}')
  if matmuls:
    for row in out['matmuls']:
      row['of_peak'] = row['flops_per_sec'] / peak
      print_fn(f'  matmul alone, x{row["count"]} per forward: {row["shape"]} ({row["name"]}): '
               f'{row["flops_per_sec"] / 1e9:,.1f} GFLOP/s = {100 * row["of_peak"]:.0f}% of '
               f'the peak')
    ceiling = out['matmul_ceiling'] = throughput.matmul_ceiling(out['matmuls'], peak)
    # Rates were taken at the whole batch on one device: compare with the step's device-time.
    share = ceiling['train_s'] / (r['step_time'] * r['devices'])
    print_fn(f'  at those rates the step\'s matmuls alone take ~{1000 * ceiling["train_s"]:,.0f} ms '
             f'(forward {1000 * ceiling["forward_s"]:,.0f} ms x 3), {100 * share:.0f}% of the '
             f'step: with everything else free, MFU would be {100 * ceiling["ceiling_mfu"]:.1f}% '
             f'(the ceiling)')
  if train_only:
    return out

  why_not = _reference_reason(config, reference)
  batch = families.synthetic_batch(config, tc.batch_size)
  fns = {'ours': _our_grad_step(config, batch)}
  if not why_not:
    fns['flax_t5'] = hf_reference.grad_step(config, batch)
  med = throughput.paired_medians(fns, rounds)
  out.update(grad_step_ms=1000 * med['ours'],
             hf_grad_step_ms=1000 * med['flax_t5'] if 'flax_t5' in med else None,
             grad_step_ratio_vs_hf=med['flax_t5'] / med['ours'] if 'flax_t5' in med else None)
  ref = (f'FlaxT5 {out["hf_grad_step_ms"]:,.1f} ms, ratio FlaxT5/ours '
         f'{out["grad_step_ratio_vs_hf"]:.2f}x' if not why_not else f'FlaxT5 n/a ({why_not})')
  print_fn(f'grad step (loss + gradients, median of {rounds} alternating rounds): ours '
           f'{out["grad_step_ms"]:,.1f} ms, {ref}')
  if why_not:
    notes['hf'] = why_not

  if not family.has_decoder:
    notes['decode'] = 'encoder-only family: nothing to decode'
    for k in ('greedy', 'beam'):
      out.update({f'{k}_tokens_per_s': None, f'hf_{k}_tokens_per_s': None,
                  f'{k}_ratio_vs_hf': None})
  else:
    _decode(config, out, rounds, decode_batch_size or tc.batch_size,
            decode_length or _default_new_tokens(config), beam_size, why_not, print_fn)

  pos, real, _ = throughput.pipeline_throughput(config, pipeline_seconds, tc.batch_size)
  out.update(pipeline_positions_per_s=pos, pipeline_tokens_per_s=real)
  print_fn(f'input pipeline ({config.data.objective}, batch {tc.batch_size}): {pos:,.0f} token '
           f'positions/s ({real:,.0f} non-padding tokens/s), '
           f'{pos / out["train_tokens_per_s"]:,.1f}x the train step\'s')
  return out


PROMPT_TOKENS = 16  # a decoder-only model's decode continues prompts of this many tokens


def _default_new_tokens(config) -> int:
  """New tokens per row when --decode_length is not given: an encoder-decoder generates its
  target rows (decoder length); a decoder-only model continues a PROMPT_TOKENS-token prompt
  to its row length (so a learned position table of that length is never overrun)."""
  lengths = families.stream_lengths(config)
  if families.get(config.model.family).has_encoder:
    return lengths['decoder']
  return max(1, lengths['decoder'] - PROMPT_TOKENS)


def _check_decode_fits(config, new_tokens: int) -> None:
  """A model with a learned position table decodes only as far as it reaches: say so
  naming --decode_length (`decoding.check_positions_fit`), before any timing."""
  from t5x_lite import decoding
  lengths = families.stream_lengths(config)
  has_encoder = families.get(config.model.family).has_encoder
  decoding.check_positions_fit(
      config.model, lengths['encoder'] if has_encoder else PROMPT_TOKENS, new_tokens,
      encoder_decoder=has_encoder, length_name='--decode_length')


def _decode(config, out, rounds, rows, new_tokens, beam_size, why_not, print_fn):
  from t5x_lite import hf_reference
  batch = families.synthetic_batch(config, rows)
  if 'encoder_input_tokens' in batch:
    batch = {'encoder_input_tokens': batch['encoder_input_tokens']}
  else:  # decoder-only: continue PROMPT_TOKENS-token prompts
    batch = {'decoder_input_tokens': np.ascontiguousarray(
        batch['decoder_input_tokens'][:, :PROMPT_TOKENS])}
  out.update(decode_rows=rows, decode_new_tokens=new_tokens, beam_size=beam_size)
  for key, k in (('greedy', 1), ('beam', beam_size)):
    decoder = _our_decoder(config, batch, new_tokens, k)
    last = {}

    def ours(decoder=decoder, last=last):
      last['tokens'] = decoder()[0]
      return last['tokens']
    fns = {'ours': ours}
    if not why_not:
      fns['flax_t5'] = hf_reference.generator(config, batch['encoder_input_tokens'], new_tokens,
                                              num_beams=k)
    med = throughput.paired_medians(fns, rounds)
    speed = {n: rows * new_tokens / t for n, t in med.items()}
    out[f'{key}_tokens_per_s'] = speed['ours']
    out[f'hf_{key}_tokens_per_s'] = speed.get('flax_t5')
    out[f'{key}_ratio_vs_hf'] = speed['ours'] / speed['flax_t5'] if 'flax_t5' in speed else None
    ref = (f'FlaxT5 generate {speed["flax_t5"]:,.0f}, ratio ours/FlaxT5 '
           f'{out[f"{key}_ratio_vs_hf"]:.2f}x' if 'flax_t5' in speed else 'FlaxT5 n/a')
    name = 'greedy' if k == 1 else f'beam-{k}'
    # FlaxT5 runs with EOS disabled, so always to full length; ours stops once every row has
    # finished (K finished beams). Equal work only if some row did not finish: say if not.
    best = np.asarray(last['tokens'])
    best = best[:, 0] if best.ndim == 3 else best
    ended = int((best == 1).any(axis=-1).sum())
    out[f'{key}_rows_ended_early'] = ended
    if ended == rows:
      out['notes'][key] = (f'every row of ours ended in EOS: its loop may have stopped before '
                           f'{new_tokens} tokens, so the ratio may flatter ours')
    print_fn(f'{name} decode ({rows} rows x {new_tokens} new tokens): ours '
             f'{speed["ours"]:,.0f} new tokens/s, {ref}' +
             (f' [{ended} of {rows} rows of ours ended early: {out["notes"][key]}]'
              if ended == rows else ''))

