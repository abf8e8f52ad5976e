"""One evaluation of a PEFT mask (the inner loop): fine-tune, measure quality and memorization, reward."""

from memrl.evaluation.cache import EvalCache, request_key
from memrl.evaluation.config import PRESETS, EvalConfig, RewardConfig, preset
from memrl.evaluation.evaluator import Evaluator

__all__ = ["EvalCache", "EvalConfig", "Evaluator", "PRESETS", "RewardConfig", "preset", "request_key", "evaluate"]


def evaluate(pretrained, dataset, method: str, mask: str, lr=None, seed: int = 0, preset_name: str = "default", out_dir=None, cache=None, device: str = "cpu") -> dict:  # noqa: ANN001
    """One-call form: load the model and dataset, evaluate ``mask`` with ``method``, return the metrics dict."""
    from memrl.data.loaders import load_dataset

    ev = Evaluator(pretrained, device=device, cache=cache)
    data = dataset if not isinstance(dataset, str) else load_dataset(dataset, ev.model.image_size, ev.model.image_channels)
    return ev.evaluate(data, method, mask, preset(preset_name), lr=lr, seed=seed, out_dir=out_dir)
