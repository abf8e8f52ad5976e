"""The one interface every outer loop (the environment, search, replay) evaluates masks through.

:class:`MaskEvaluator` is what the environment and :mod:`memrl.search` read from an evaluator;
nothing else. Its implementations:

* :class:`memrl.evaluation.Evaluator`: the real one (fine-tune, generate, measure);
* :class:`memrl.evaluation.lookup.LookupEvaluator`: answers from a table of evaluations exported
  from a run's cache (no model, no GPU);
* later a learned surrogate.

:func:`evaluate_proposal` is the caller's side: how the environment's step and ``memrl search``
turn one proposal into ``(reward, info)`` through any of them.

Errors, the contract every implementation keeps:

* :class:`memrl.errors.MemrlError` is the *caller's* mistake (a mask over other units, a dataset
  the model cannot be evaluated on, a request a lookup table cannot answer): raised, and callers
  let it propagate (no other action would fix it);
* any other exception (typically :class:`memrl.errors.EvaluationFailed`) is a *failed evaluation*:
  the environment and search record it and penalise it with the failure reward, and go on.

Result fields the callers read from :meth:`MaskEvaluator.evaluate`'s dict (the real evaluator's
result carries more; a table answers with what was recorded): ``mask``, ``mask_bits``,
``mask_units``, ``proposed_mask_bits``, ``empty_units``, ``method``, ``lr``, ``seed``,
``cached``, ``seconds``, the metrics of :data:`memrl.metrics.names.SUMMARY_METRICS` (``fid``,
``kid``, ``nn_own_rate``, ``replication_rate``, ``amd``, ...), ``trainable_params``,
``trainable_fraction``, and, with ``with_reward=True``, the fields of
:func:`memrl.evaluation.reward.reward` (``reward``, ``fid_norm``, ``mem_norm``, ``mem_metric``,
...) and ``reference`` (the reference run's summary metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from memrl.errors import MemrlError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from memrl.data.dataset import DatasetSplits
    from memrl.evaluation.config import EvalConfig
    from memrl.peft_masking import Mask


@runtime_checkable
class MaskEvaluator(Protocol):
    """Evaluates ``(dataset, method, mask, config)`` requests; see the module docstring for errors."""

    #: how many requests were answered from a cache / table, and how many were computed (or missed)
    hits: int
    misses: int

    @property
    def units(self) -> tuple[str, ...]:
        """The UNet units a mask selects from, in mask-bit order."""
        ...

    @property
    def granularity(self) -> str:
        """How the UNet is cut into units (``"block"``, ``"attention"``, ...)."""
        ...

    @property
    def image_size(self) -> int:
        """Side of the images the model makes (datasets are loaded at this size)."""
        ...

    @property
    def image_channels(self) -> int:
        """Channels of the images the model makes."""
        ...

    @property
    def feature_net(self) -> Any:
        """The feature network that describes datasets (the env's descriptor), or ``None`` when
        this evaluator cannot describe a dataset (a lookup table has no network)."""
        ...

    def parse_mask(self, spec: str | Mask) -> Mask:
        """A mask over :attr:`units` from a spec (``"all"``, ``"none"``, a bitstring, unit names) or
        a :class:`Mask`; :class:`MemrlError` when it names other units."""
        ...

    def trainable_units(self, method: str) -> tuple[str, ...]:
        """The units in which ``method`` has anything to train."""
        ...

    def effective_mask(self, method: str, mask: Mask, strict: bool = False) -> tuple[Mask, tuple[str, ...]]:
        """``(mask without the units where method trains nothing, those units)``; ``strict``
        refuses (MemrlError) a mask whose selected units all train nothing."""
        ...

    def check_data(self, data: DatasetSplits) -> None:
        """Raise :class:`MemrlError` for a dataset this evaluator cannot evaluate on."""
        ...

    def evaluate(
        self,
        data: DatasetSplits,
        method: str,
        mask: str | Mask,
        cfg: EvalConfig,
        lr: float | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
        with_reward: bool = True,
        progress: bool = False,
        strict: bool = False,
    ) -> dict:
        """Metrics (and, ``with_reward``, the reward against the reference run) for one request."""
        ...

    def reference(self, data: DatasetSplits, cfg: EvalConfig, progress: bool = False) -> dict:
        """The reference run's result: full fine-tuning with the same budget, data and seed."""
        ...


def evaluate_proposal(
    evaluator: MaskEvaluator,
    data: DatasetSplits,
    dataset: str,
    bits: Sequence[int],
    method: str,
    lr: float | None,
    cfg: EvalConfig,
    seed: int,
    failure_reward: float,
) -> tuple[float, dict]:
    """One proposal (mask bits, method, learning rate) evaluated the way every outer loop does it:
    ``(reward, info)``.

    The proposal is reduced to the units where ``method`` trains something (a mask whose selected
    units all train nothing is the pretrained model). ``info`` names the dataset (``dataset``, as
    the caller spells it), the units trained (``mask``, ``mask_bits``, ``mask_units``), the
    proposal (``proposed_mask_bits``), the dropped units (``empty_units``), the method and
    ``failed``, plus every field of the result. :class:`MemrlError` propagates (the caller's
    mistake); any other exception is a failed evaluation: ``failure_reward`` with ``info["failed"]``
    and ``info["error"]``. The environment's step and ``memrl search`` both call this.
    """
    from memrl.peft_masking import Mask

    proposed = Mask.from_bits([int(b) for b in bits], evaluator.units)
    trained, empty = evaluator.effective_mask(method, proposed)
    info: dict[str, Any] = {
        "dataset": dataset,
        "mask": str(trained),
        "mask_bits": trained.bitstring,
        "mask_units": list(trained.selected),
        "proposed_mask_bits": proposed.bitstring,
        "empty_units": list(empty),
        "method": method,
    }
    try:
        result = evaluator.evaluate(data, method, trained, cfg, lr=lr, seed=seed)
    except MemrlError:
        raise  # the caller's mistake (bad data, bad config): no other proposal would fix it
    except Exception as exc:  # a failed evaluation: recorded (by the cache) as failed, penalised here
        info.update({"failed": True, "error": f"{type(exc).__name__}: {exc}"})
        return float(failure_reward), info
    info.update({k: v for k, v in result.items() if k not in info})
    info["failed"] = False
    return float(result["reward"]), info


__all__ = ["MaskEvaluator", "evaluate_proposal"]
