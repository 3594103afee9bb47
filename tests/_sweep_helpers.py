"""Shared helpers of the sweep tests: comparable reports, small sweeps, faulty losses.

The faulty losses are module-level functions so that worker processes import them
(pytest puts this directory on ``sys.path``, which spawned processes inherit).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ce_reference._format import clean_json
from ce_reference.registry import LOSSES

BCE_LOGITS = "binary_cross_entropy_with_logits"
#: A small sweep: 4 rows, 18 cases, 10 batches of at most 2 cases.
SMALL = dict(losses=BCE_LOGITS, cases=16, seed=11, dtypes=(np.float64,),
             option_sets=("hard targets", "pos_weight"), batch_cases=2)
#: A smaller one: 1 row, 5 cases, 5 batches.
TINY = dict(losses=BCE_LOGITS, cases=1, seed=4, dtypes=(np.float64,),
            option_sets=("hard targets",), regions=("random",), batch_cases=1)
#: Environment variable naming a .npy file: the input on which :func:`killer_value`
#: kills its process.
VICTIM_ENV = "CE_TEST_VICTIM_INPUT"


def comparable(report) -> str:
    """The report without its wall-clock and environment fields, as exact text (floats
    by ``repr``: equal text is bitwise-equal numbers)."""
    data = report.to_dict()
    data.pop("elapsed_seconds")
    data.pop("environment")
    return json.dumps(clean_json(data), sort_keys=True)


def comparable_json(path) -> str:
    """The same for a report written by ``ce-reference verify --json``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    data.pop("elapsed_seconds")
    data.pop("environment")
    return json.dumps(data, sort_keys=True)


def killer_value(x, targets, **kwargs):
    """BCE-with-logits, except that it kills its process on the victim input."""
    victim = os.environ.get(VICTIM_ENV)
    if victim and np.shape(x) == np.load(victim).shape and np.array_equal(x, np.load(victim)):
        os._exit(17)
    return LOSSES[BCE_LOGITS].value(x, targets, **kwargs)


def killer_spec():
    return dataclasses.replace(LOSSES[BCE_LOGITS], value=killer_value)


def raising_complex_value(z, targets, **kwargs):
    """An oracle that raises where the runner does not catch it: the batch fails."""
    raise RuntimeError("complex step broke")


def raising_spec():
    return dataclasses.replace(LOSSES[BCE_LOGITS], complex_value=raising_complex_value)
