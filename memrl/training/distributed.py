"""One evaluation split across processes (one GPU each): data parallelism through accelerate.

``memrl train``/``search`` use several GPUs by running several evaluations at once (one per
device: ``train.n_envs`` workers or Ray actors). A single evaluation that is too slow or too big
for one GPU (SD-1.5 at the published batch of 128) is split across processes instead, by
launching ``memrl evaluate`` under a distributed launcher::

    accelerate launch --multi_gpu --num_processes 4 -m memrl evaluate ...
    torchrun --nproc_per_node 4 -m memrl evaluate ...

What each process does, and why the result equals one process's:

- **Fine-tune.** Every process draws the same batches, noise, timesteps and caption dropout from
  the same seeded CPU generator. The batch is cut into ``world x grad_accumulation`` micro-batches
  (exactly as one process with ``grad_accumulation = world x K`` would cut it); process ``r``
  back-propagates micro-batches ``r, r + world, ...``; the gradient sums and kept-sample counts
  are summed over processes (one all-reduce), so every process takes the same optimizer step. The
  trained weights equal the one-process run with ``grad_accumulation = world x K`` up to float
  rounding (tested), and are broadcast from process 0 at the end so they are identical everywhere.
- **Sampling.** The initial noise of every prompt is drawn at once from one seeded generator, so
  each process samples a contiguous share of the prompts and the shares are gathered in order.
- **Metrics, cache and files** are process 0's job; its result (or its error) is broadcast, so
  every process returns the same dict or raises the same failure.

:class:`DataParallel` is that contract: ``None`` (the default everywhere) means one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

#: The environment variable distributed launchers (torchrun, accelerate launch) set to the process count.
WORLD_SIZE_ENV = "WORLD_SIZE"


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get(WORLD_SIZE_ENV, "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` processes sharing one evaluation, and the collectives it needs."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_launcher(cls, device: str = "auto") -> DataParallel | None:
        """The launcher's process group (initialised through accelerate), or ``None`` for one process.

        ``device``: ``auto`` or ``cuda`` give each process its own GPU (``cuda:LOCAL_RANK``, NCCL);
        ``cpu`` runs the processes on the CPU (gloo; how the tests run it).
        """
        if launched_processes() <= 1:
            return None
        from accelerate import PartialState

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if not cpu and not str(device).startswith("cuda") and device != "auto":
            from memrl.errors import MemrlError

            raise MemrlError(f"--device {device}: a launch over several processes runs on cuda (one GPU each) or cpu")
        state = PartialState(cpu=cpu)
        if state.num_processes <= 1:  # pragma: no cover - a launcher variable without a process group
            return None
        dev = torch.device("cpu") if cpu else torch.device(state.device)
        return cls(rank=int(state.process_index), world=int(state.num_processes), device=dev)

    # ------------------------------------------------------------------ work split
    def mine(self, parts: Sequence[Any]) -> list[Any]:
        """This process's items of ``parts`` (round-robin: ``rank, rank + world, ...``)."""
        return list(parts)[self.rank :: self.world]

    def shard(self, n: int) -> slice:
        """This process's contiguous share of ``range(n)`` (sizes differ by at most one)."""
        return slice(round(self.rank * n / self.world), round((self.rank + 1) * n / self.world))

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the processes, in place (one flat buffer: one collective)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
        torch.distributed.all_reduce(flat)
        at = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[at : at + n].view_as(t).to(t.dtype))
            at += n

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite each tensor with process 0's, in place."""
        for t in tensors:
            torch.distributed.broadcast(t.data, src=0)

    def gather_cat(self, part: torch.Tensor) -> torch.Tensor:
        """Every process's ``part`` (CPU tensors), concatenated in rank order, on every process."""
        from accelerate.utils import gather_object

        return torch.cat([p for p in gather_object([part.cpu()])])

    def broadcast(self, obj: Any = None) -> Any:
        """Process 0's ``obj`` on every process (the others pass anything)."""
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]
