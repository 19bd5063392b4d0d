"""Scoring predictions: answer normalisation, per-qtype rules, ``geovl score``, ``geovl compare``.

- :mod:`.normalize` — text, yes/no and choice normalisers (and re-exports of everything below
  that scoring and GRPO rewards need: ``parse_number``, ``parse_quantity``, ``is_correct``,
  ``score_sample``)
- :mod:`.quantities` — numbers and quantities with units (zh/en)
- :mod:`.rules` — per-qtype scoring rules
- :mod:`.score` — reading predictions files (``geovl eval`` output), metrics, ``geovl score``
- :mod:`.compare` / :mod:`.compare_report` — ``geovl compare`` before/after reports
"""
