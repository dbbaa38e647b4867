"""The FixMatch-family rows of the SeMi paper's Tables 1-3 as named presets of ``fixmatch``.

Each row is a combination of parts (``cissl.algorithms.parts``): the labeled loss (CE or LA), a
pseudo-label refiner and an auxiliary head; ``cissl list`` shows them. A config may still override
any option of a part, e.g. ``algorithm.refiner.dist_temperature=0.3``.
"""

from __future__ import annotations

from cissl.algorithms.crest import Crest, CrestConfig
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register

CREST_PLUS = {"name": "dist_align", "t_min": 0.5}

TABLE_ROWS = {
    "fixmatch_darp": ({"refiner": "darp"}, "FixMatch w/ DARP"),
    "fixmatch_daso": ({"refiner": "daso"}, "FixMatch w/ DASO"),
    "fixmatch_la_darp": ({"logit_adjust": True, "refiner": "darp"}, "FixMatch + LA w/ DARP"),
    "fixmatch_la_daso": ({"logit_adjust": True, "refiner": "daso"}, "FixMatch + LA w/ DASO"),
    "fixmatch_abc": ({"aux_head": "abc"}, "FixMatch + ABC (reports the ABC head)"),
    "fixmatch_abc_daso": ({"aux_head": "abc", "refiner": "daso"}, "FixMatch + ABC w/ DASO (reports the ABC head)"),
}

CREST_ROWS = {
    "fixmatch_crest": ({}, "FixMatch w/ CReST (generations of class-rebalancing self-training)"),
    "fixmatch_crest_plus": ({"refiner": CREST_PLUS}, "FixMatch w/ CReST+ (with progressive distribution alignment)"),
    "fixmatch_la_crest_plus": ({"logit_adjust": True, "refiner": CREST_PLUS}, "FixMatch + LA w/ CReST+"),
}

for _name, (_preset, _summary) in TABLE_ROWS.items():
    register(_name, FixMatchConfig, preset=_preset, summary=_summary)(FixMatch)
for _name, (_preset, _summary) in CREST_ROWS.items():
    register(_name, CrestConfig, preset=_preset, summary=_summary)(Crest)
