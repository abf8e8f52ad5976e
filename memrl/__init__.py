"""memrl: learn which parameters of a diffusion model to fine-tune so it does not memorize."""

__version__ = "0.1.0"
