"""The search space, encoded once: actions <-> masks <-> Optuna trial parameters.

One proposal is an *action*: a vector of integers, one bit per unit (in the evaluator's unit
order), then, when more than one is offered, the index of the PEFT method and the index of the
learning-rate scale. The environment's action space, ``memrl search``'s Optuna trials and
``memrl replay`` all go through :func:`decode_action`, so a proposal means the same thing in all
three.

Optuna parameters (:func:`trial_space`): one categorical ``0``/``1`` per unit named
``unit:<unit name>`` (``unit:down_blocks.1``), then ``method`` (categorical over the method
names) and ``lr_scale`` (categorical over the scales) when there is a choice.

Exhaustive enumeration (:func:`enumerate_actions`, :func:`action_at`) counts in mixed radix over
the action's dimensions, the last one fastest: without extra dimensions, action ``k`` is the mask
whose bitstring is ``k`` in binary (the first unit the most significant bit), so action 0 is the
pretrained model and the last one trains every unit.

Plain arguments only (no environment config): this module sits below :mod:`memrl.envs` and
:mod:`memrl.search`.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np

from memrl.errors import MemrlError

#: Prefix of a unit's Optuna parameter name (``unit:down_blocks.1``).
UNIT_PREFIX = "unit:"
METHOD_PARAM = "method"
LR_SCALE_PARAM = "lr_scale"


def action_dims(n_units: int, methods: Sequence[str] = (), lr_scales: Sequence[float] = ()) -> list[int]:
    """Sizes of the action's dimensions: one bit per unit, then the method and learning-rate
    choices when there are more than one of each."""
    extra = ([len(methods)] if len(methods) > 1 else []) + ([len(lr_scales)] if len(lr_scales) > 1 else [])
    return [2] * n_units + extra


def decode_action(action, n_units: int, method: str, methods: Sequence[str] = (), lr_scales: Sequence[float] = ()) -> tuple[np.ndarray, str, float | None]:  # noqa: ANN001
    """Action -> ``(mask bits, method, learning rate)``; a learning rate of ``None`` means the
    method's default (no ``lr_scales``). ``method`` is used when ``methods`` is empty; a single
    entry of ``methods`` is used instead of it."""
    a = np.asarray(action).astype(np.int64).reshape(-1)
    dims = action_dims(n_units, methods, lr_scales)
    if a.shape[0] != len(dims):
        raise MemrlError(f"action has {a.shape[0]} entries, expected {len(dims)} ({n_units} unit bits + {len(dims) - n_units} extra dims)")
    if np.any(a[n_units:] < 0) or np.any(a[n_units:] >= np.asarray(dims[n_units:], dtype=np.int64)):
        raise MemrlError(f"action {a.tolist()} is outside the dimensions {dims}")
    bits = (a[:n_units] > 0).astype(np.int64)
    i = n_units
    chosen = methods[0] if len(methods) == 1 else method
    if len(methods) > 1:
        chosen = methods[int(a[i])]
        i += 1
    lr = None
    if lr_scales:
        from memrl.training.finetune import FinetuneConfig

        scale = lr_scales[int(a[i])] if len(lr_scales) > 1 else lr_scales[0]
        lr = FinetuneConfig(method=chosen).resolved_lr() * scale
    return bits, chosen, lr


# ------------------------------------------------------------------ enumeration
def n_actions(dims: Sequence[int]) -> int:
    """How many distinct actions there are (``2 ** n_units`` without extra dimensions)."""
    return int(np.prod([int(d) for d in dims], dtype=object)) if dims else 1


def enumerate_actions(dims: Sequence[int]) -> Iterator[list[int]]:
    """Every action once, in the fixed order of :func:`action_at` (index 0 first)."""
    for a in itertools.product(*(range(int(d)) for d in dims)):
        yield list(a)


def action_at(index: int, dims: Sequence[int]) -> list[int]:
    """The ``index``-th action of :func:`enumerate_actions` (mixed radix, the last dimension fastest)."""
    total = n_actions(dims)
    if not 0 <= index < total:
        raise MemrlError(f"action index {index} is outside 0..{total - 1}")
    out = []
    for d in reversed([int(d) for d in dims]):
        index, r = divmod(index, d)
        out.append(r)
    return out[::-1]


# ------------------------------------------------------------------ Optuna trial parameters
def unit_param(unit: str) -> str:
    """The Optuna parameter name of a unit's bit."""
    return UNIT_PREFIX + unit


def trial_space(units: Sequence[str], methods: Sequence[str] = (), lr_scales: Sequence[float] = ()) -> dict:
    """The Optuna distributions of one proposal (for ``study.ask(trial_space(...))``)."""
    from optuna.distributions import CategoricalDistribution

    space: dict = {unit_param(u): CategoricalDistribution([0, 1]) for u in units}
    if len(methods) > 1:
        space[METHOD_PARAM] = CategoricalDistribution(list(methods))
    if len(lr_scales) > 1:
        space[LR_SCALE_PARAM] = CategoricalDistribution([float(s) for s in lr_scales])
    return space


def params_to_action(params: dict, units: Sequence[str], methods: Sequence[str] = (), lr_scales: Sequence[float] = ()) -> list[int]:
    """A trial's parameters -> the action they encode (:class:`MemrlError` when one is missing or off the space)."""
    try:
        action = [int(params[unit_param(u)]) for u in units]
        if len(methods) > 1:
            action.append(list(methods).index(params[METHOD_PARAM]))
        if len(lr_scales) > 1:
            action.append([float(s) for s in lr_scales].index(float(params[LR_SCALE_PARAM])))
    except KeyError as exc:
        raise MemrlError(f"trial parameters {sorted(params)} lack {exc.args[0]!r}; the study was made for another search space") from None
    except ValueError:
        raise MemrlError(f"trial parameters {params} are outside the search space (methods {list(methods)}, lr scales {list(lr_scales)})") from None
    return action


def action_to_params(action: Sequence[int], units: Sequence[str], methods: Sequence[str] = (), lr_scales: Sequence[float] = ()) -> dict:
    """The action -> the trial parameters that encode it (the inverse of :func:`params_to_action`)."""
    a = [int(x) for x in action]
    dims = action_dims(len(units), methods, lr_scales)
    if len(a) != len(dims):
        raise MemrlError(f"action has {len(a)} entries, expected {len(dims)}")
    params: dict = {unit_param(u): int(b > 0) for u, b in zip(units, a)}
    i = len(units)
    if len(methods) > 1:
        params[METHOD_PARAM] = list(methods)[a[i]]
        i += 1
    if len(lr_scales) > 1:
        params[LR_SCALE_PARAM] = float(lr_scales[a[i]])
    return params


__all__ = [
    "LR_SCALE_PARAM",
    "METHOD_PARAM",
    "UNIT_PREFIX",
    "action_at",
    "action_dims",
    "action_to_params",
    "decode_action",
    "enumerate_actions",
    "n_actions",
    "params_to_action",
    "trial_space",
    "unit_param",
]
