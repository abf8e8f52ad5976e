import json

from memrl.training.pretrain import PretrainConfig, pretrain


def test_quick_pretrain_writes_a_complete_folder(quick_model_dir):
    folder, metrics = quick_model_dir
    for part in ("unet", "text_encoder", "tokenizer", "scheduler", "feature_net"):
        assert (folder / part).is_dir()
    saved = json.loads((folder / "pretrain_metrics.json").read_text())
    for key in ("prompt_accuracy", "feature_accuracy", "fid", "kid", "prompt_samples"):
        assert key in saved
    assert saved["prompt_samples"] >= 200
    assert 0.0 <= saved["prompt_accuracy"] <= 1.0
    assert saved["fid"] > 0
    assert (folder / "samples.png").is_file()
    assert not list(folder.parent.glob(".quick.tmp-*")), "temporary folder left behind"


def test_same_seed_same_metrics(quick_model_dir, tmp_path):
    _, first = quick_model_dir
    again = pretrain(PretrainConfig.quick(seed=0), tmp_path / "again", progress=False)
    for key in ("prompt_accuracy", "feature_accuracy", "fid", "kid", "final_loss_avg100"):
        assert again[key] == first[key], key
