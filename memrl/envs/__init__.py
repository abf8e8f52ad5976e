"""The Gymnasium environment of mask selection (``memrl/MaskSelection-v0``).

Importing :mod:`memrl` registers the environment (lazily: nothing heavy is imported until
``gymnasium.make`` builds it)::

    import gymnasium, memrl
    env = gymnasium.make("memrl/MaskSelection-v0", config={"datasets": ["inverted"], "preset": "quick"})
"""

from __future__ import annotations

ENV_ID = "memrl/MaskSelection-v0"


def register() -> None:
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="memrl.envs.mask_selection:MaskSelectionEnv")


def __getattr__(name: str):  # noqa: ANN202 - lazy exports keep `import memrl` light
    if name == "MaskSelectionEnv":
        from memrl.envs.mask_selection import MaskSelectionEnv

        return MaskSelectionEnv
    if name == "EnvConfig":
        from memrl.envs.config import EnvConfig

        return EnvConfig
    if name == "DescriptorBasis":
        from memrl.envs.descriptor import DescriptorBasis

        return DescriptorBasis
    raise AttributeError(name)


__all__ = ["ENV_ID", "EnvConfig", "MaskSelectionEnv", "DescriptorBasis", "register"]
