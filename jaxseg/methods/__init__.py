"""The table of loss terms: every published method as terms of the one train step.

A run names its terms in `config.losses` (and a staged run each stage's in `stages.<name>.losses`);
the step (jaxseg/training/step.py) sums them. Each method module exports its term(s) and their
config blocks; this table is the only list of them (no registration by import side effect).

  supervised       methods/supervised.py    CE / Dice / CE + Dice on labeled images
  mean_teacher     methods/mean_teacher.py  consistency with an EMA teacher (the only teacher)
  plgcl            methods/plgcl.py         PLGCL patch contrast (Basak & Yin 2023)
  dualstream       methods/dualstream.py    dual-stream 3D, eq. 3 whole (Karimijafarbigloo 2024)
  global_contrast  methods/hu.py            SimCLR global contrast (Hu et al. 2021, eq. 1)
  local_contrast   methods/hu.py            supervised local pixel contrast (Hu et al., eq. 2)
  lclpl            methods/lclpl.py         pseudo-label local contrast (Chaitanya et al. 2023)
"""

from __future__ import annotations

from jaxseg.errors import ConfigError
from jaxseg.methods import dualstream, hu, lclpl, mean_teacher, plgcl, supervised
from jaxseg.methods.term import LossTerm

TERMS: dict[str, LossTerm] = {term.name: term for term in (
    supervised.TERM,
    mean_teacher.TERM,
    plgcl.TERM,
    dualstream.TERM,
    hu.GLOBAL_CONTRAST,
    hu.LOCAL_CONTRAST,
    lclpl.TERM,
)}


def resolve(names, terms: dict[str, LossTerm] | None = None) -> list[LossTerm]:
  """The terms `names` (a config's `losses`) name, in order; `terms` replaces the table (tests)."""
  table = TERMS if terms is None else terms
  unknown = [n for n in names if n not in table]
  if unknown:
    raise ConfigError(f'losses: unknown loss term(s) {unknown}; known: {", ".join(sorted(table))}')
  if not names:
    raise ConfigError('losses: at least one loss term is needed')
  return [table[n] for n in names]
