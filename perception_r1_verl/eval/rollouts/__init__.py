"""One self-contained HTML page of the rollouts verl dumped during training.

With ``trainer.rollout_data_dir=DIR`` verl 0.9.1 writes ``DIR/{step}.jsonl`` after every
training step (there is no frequency setting), one line per rollout, via
``_write_generations`` of the trainer:

- keys ``input`` (the prompt, decoded with ``skip_special_tokens=True``: the chat
  template's role names stay, the image tokens go), ``output`` (the response, decoded the
  same way: Qwen2-VL's ``<|box_start|>`` tokens are dropped, leaving ``(x1,y1),(x2,y2)``),
  ``gts`` (the row's ``reward_model.ground_truth``, verbatim), ``score`` (the summed
  token-level reward) and ``step``;
- the v1 trainer (``trainer.use_v1=true``, verl's default and the recipes' choice) adds
  only ``uid`` (``{prompt uuid}_{session}_{output}``: the rollouts of one prompt share the
  first part), and this plugin's wrapper (:mod:`perception_r1_verl.plugin.step_metrics`) adds
  ``data_source``, ``index`` and ``task`` of the row, ``is_padding`` and every
  ``reward_extra_info`` key: each reward component as the manager computed it (``None``
  where it does not apply) and the counters ``reward_timeout``/``reward_error``;
- the legacy trainer adds every ``reward_extra_info`` column, but no index.

A rollout with a dumped ``index`` is matched to the row of that ``data_source`` and
``extra_info.index`` whose ground truth equals the dumped one. Otherwise (a plain verl
dump, or an index that names no row with that ground truth, counted) it is matched by its
ground truth (compared as parsed JSON) and its prompt (every message text of the row,
``<image>`` removed and whitespace collapsed, must occur in ``input``). A rollout that
matches no row, or several different rows, is counted; unmatched ones are listed apart.
verl's padding samples (``is_padding``) are counted and left out. Components come from the
dump when it has them, else they are recomputed from ``output`` with
:func:`perception_r1_verl.rewards.compute_score` (default reward settings, so overridden
reward kwargs are not seen; the format of Qwen2-VL rows is recomputed accepting any style,
since the dump lost the box tokens), and a recomputed score that differs from the dumped
one is counted.

The modules, in the page's order of work: ``dump`` reads the dump, ``matching`` finds each
rollout's row, ``judging`` flags and scores it, ``page`` writes the HTML.
"""

from .page import rollout_report

__all__ = ["rollout_report"]
