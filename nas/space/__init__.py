"""Search spaces: a YAML file -> `SearchSpace` -> valid `Architecture` candidates.

One job per module: `model` (the space, its conditional choice tables and the one walk over
them), `parse` (the YAML schema; errors name file, key and value), `files` (finding shipped
spaces and reading files) and `adapter` (Optuna: parameter names, samplers, per-trial seeds).
Objectives and constraints are `nas.objectives`'. Nothing here imports Optuna at load time.
"""

from __future__ import annotations

from nas.objectives import Constraint, Objective
from nas.space.adapter import make_sampler, params_for, suggest, trial_seed
from nas.space.files import list_spaces, load_space
from nas.space.model import ENUMERATION_LIMIT, SAMPLED_FIELDS, ParamSpec, SamplerSpec, SearchSpace
from nas.space.parse import FEASIBILITY_SAMPLES

__all__ = [
    "ENUMERATION_LIMIT", "FEASIBILITY_SAMPLES", "SAMPLED_FIELDS", "Constraint", "Objective",
    "ParamSpec", "SamplerSpec", "SearchSpace", "list_spaces", "load_space", "make_sampler",
    "params_for", "suggest", "trial_seed",
]
