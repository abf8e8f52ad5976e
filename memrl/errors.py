"""The two kinds of failure memrl tells apart.

* :class:`MemrlError`: the caller's mistake (bad input, a missing file). The CLI prints it as one
  line (``memrl: error: ...``) with exit status 2; the environment lets it propagate, since no
  other action would fix it.
* :class:`EvaluationFailed`: one evaluation could not produce numbers (the fine-tune diverged,
  the samples are not finite, a kernel failed). The environment records it in the cache and the
  evaluation log and penalises the step; the run goes on. ``deterministic`` failures (a diverged
  fine-tune repeats for the same request) are answered from the cache instead of recomputed.
"""


class MemrlError(Exception):
    """Bad input or a missing file, said plainly (the CLI prints it without a traceback)."""


class EvaluationFailed(RuntimeError):
    """One evaluation produced no usable numbers; the message says where and why."""

    def __init__(self, message: str, deterministic: bool = True) -> None:
        super().__init__(message)
        self.deterministic = deterministic


class NonFiniteError(EvaluationFailed):
    """A loss, a sample or a metric input was NaN or infinite (a diverged fine-tune)."""
