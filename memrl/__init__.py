"""memrl: learn which parameters of a diffusion model to fine-tune so it does not memorize."""

__version__ = "0.1.0"

try:  # register memrl/MaskSelection-v0 with gymnasium (cheap: the entry point is imported lazily)
    from memrl.envs import register as _register_envs

    _register_envs()
except ImportError:  # pragma: no cover - gymnasium missing: the env is simply not registered
    pass
