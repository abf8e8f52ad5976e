"""The ``memrl`` console script: one subcommand per job.

    memrl pretrain   pretrain the embedded default model and its feature network
    memrl feature-net  train the fallback feature network on a public image folder
    memrl sample     generate an image grid from a model folder
    memrl evaluate   one masked fine-tune: quality, memorization, reward
    memrl train      train the PPO mask-selection agent
    memrl search     the baselines: Optuna samplers or every mask, on the same evaluation
    memrl replay     apply a trained policy to a new dataset
    memrl cache      import lookup tables into an evaluation cache (reuse committed fine-tunes)

Errors in user input are printed as one line (``memrl: error: ...``) with exit status 2; an
evaluation that fails (e.g. a diverged fine-tune) as ``memrl: evaluation failed: ...`` with
exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL = os.environ.get("MEMRL_MODEL", "runs/digits-base")


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        tl.disable_progress_bar()
        tl.set_verbosity_error()
        dl.disable_progress_bar()
        dl.set_verbosity_error()
    except Exception:  # pragma: no cover - logging niceties only
        pass


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ---------------------------------------------------------------------------------------- pretrain
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the embedded default model (digits) and its feature network",
        description="Pretrain the tiny text-conditional diffusion model on the public split of the embedded "
        "digits, train the offline feature network, measure prompt accuracy / feature accuracy / FID, "
        "and save everything as a diffusers-style folder.",
    )
    p.add_argument("--out", required=True, help="output model folder (written atomically; replaced if it exists)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same weights and metrics")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000; --quick: 40)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, warm-up then cosine decay)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true", help="tiny settings for smoke tests (seconds, not a usable model)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print only the JSON metrics on stdout (they are printed as JSON anyway; this drops the 'saved model' note on stderr)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from memrl.training.pretrain import PretrainConfig, pretrain

    over = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}.items() if v is not None}
    over["seed"] = args.seed
    over["device"] = _device(args.device)
    cfg = PretrainConfig.quick(**over) if args.quick else PretrainConfig(**over)
    m = pretrain(cfg, args.out, progress=not args.no_progress)
    keys = ["prompt_accuracy", "feature_accuracy", "fid", "kid", "fid_n_fake", "fid_n_real", "total_seconds"]
    print(json.dumps({k: m[k] for k in keys}))
    if not args.json:
        print(f"saved model to {args.out} (metrics in {Path(args.out) / 'pretrain_metrics.json'})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- feature-net
def _add_feature_net(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feature-net",
        help="train the offline fallback feature network (FID, nearest neighbours) on a public image folder",
        description="Train memrl's small feature network on PUBLIC images (never the private fine-tuning data), each image's "
        "caption as its class label (captions must repeat), and save it as a folder for --feature-net. For your own RGB data "
        "when no domain network (--feature-net package.module:callable) is at hand.",
    )
    p.add_argument("--data", required=True, help="public image folder (metadata.csv/jsonl or .txt captions) or sheet of image path + caption")
    p.add_argument("--out", required=True, help="output folder (config.json + model.safetensors; replaced if it exists)")
    p.add_argument("--channels", type=int, default=3, help="image channels the network takes: 3 (RGB, default) or 1 (grey)")
    p.add_argument("--size", type=int, default=32, help="side the images are loaded at (default 32; the network resizes to 16 x 16)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--caption-column", default=None, metavar="NAME", help="the sheet's caption column (the class label; default: the recognised names)")
    p.add_argument("--image-column", default=None, metavar="NAME", help="the sheet's image-path column (default: the recognised names)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_feature_net)


def _cmd_feature_net(args: argparse.Namespace) -> int:
    from memrl.training.public_features import train_public_feature_net
    from memrl.utils.io import atomic_dir

    net, summary = train_public_feature_net(
        args.data, channels=args.channels, image_size=args.size, epochs=args.epochs, seed=args.seed,
        caption_column=args.caption_column, image_column=args.image_column, progress=not args.no_progress,
    )  # fmt: skip
    with atomic_dir(args.out) as tmp:
        net.save_pretrained(tmp)
    print(json.dumps({**summary, "out": str(args.out)}))
    return 0


# ---------------------------------------------------------------------------------------- sample
def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate a grid of images for one or more prompts",
        description="Generate images with DDIM and classifier-free guidance and save them as one PNG grid "
        "(one row per prompt).",
    )
    p.add_argument("--pretrained", "--model", dest="pretrained", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL}, or $MEMRL_MODEL); --model is an alias")
    p.add_argument("--prompt", action="append", default=None, help="a text prompt; repeat the flag for several prompts")
    p.add_argument("--prompts-file", default=None, help="a text file with one prompt per line (added to --prompt)")
    p.add_argument("-n", "--num", type=int, default=16, help="images per prompt (default 16)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--steps", type=int, default=25, help="DDIM denoising steps (default 25)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale; 1 disables guidance (default 2: above ~2.5 the tiny default model over-saturates and prompt accuracy drops)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the initial noise")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=256, help="images denoised at once (memory vs speed)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (--json hides it too)")
    p.add_argument("--json", action="store_true", help="print one JSON object (output path, prompts, counts) instead of the summary line")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from memrl.errors import MemrlError
    from memrl.models.pipeline import DiffusionModel
    from memrl.utils.images import save_grid

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise MemrlError(f"prompts file {path} does not exist")
        prompts += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise MemrlError("no prompts given: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if args.num < 1:
        raise MemrlError(f"-n must be at least 1, got {args.num}")
    model = DiffusionModel.from_pretrained(args.pretrained, device=_device(args.device))
    full = [p for p in prompts for _ in range(args.num)]
    from tqdm.auto import tqdm

    with tqdm(total=len(full), unit="img", desc="sampling", disable=args.no_progress or args.json) as bar:
        images = model.generate(full, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed, batch_size=args.batch_size, callback=bar.update)
    save_grid(images, args.out, nrow=args.num)
    if args.json:
        print(json.dumps({"out": str(args.out), "model": str(args.pretrained), "prompts": prompts, "images_per_prompt": args.num, "images": len(full), "steps": args.steps, "guidance": args.guidance, "seed": args.seed}))
    else:
        print(f"wrote {len(full)} images ({len(prompts)} prompts x {args.num}) to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memrl",
        description="Learn which parameters of a diffusion model to fine-tune so that it generates well "
        "without memorizing its training images.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pretrain(sub)
    _add_feature_net(sub)
    _add_sample(sub)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands() -> list:
    """Subcommands defined next to the code they drive (evaluation, agent)."""
    adders = []
    for mod, name in (
        ("memrl.evaluation.cli", "add_evaluate"),
        ("memrl.evaluation.cli", "add_cache"),  # memrl cache import
        ("memrl.agents.cli", "add_commands"),
        ("memrl.search.cli", "add_commands"),  # memrl search
        ("memrl.reporting.cli", "add_commands"),  # memrl report
        ("memrl.interop.cli", "add_commands"),  # memrl export, units, datasets
    ):
        try:
            module = __import__(mod, fromlist=[name])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("memrl"):
                continue
            raise
        adders.append(getattr(module, name))
    return adders


def _version() -> str:
    from memrl import __version__

    return f"memrl {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    from memrl.errors import EvaluationFailed, MemrlError
    from memrl.training.distributed import launched_processes

    if launched_processes() > 1 and not getattr(args, "splits_across_processes", False):
        print(
            f"memrl: error: memrl {args.command} runs in one process (WORLD_SIZE={launched_processes()}): launch it plainly and use "
            "several GPUs with train.n_envs or --ray (one evaluation per GPU); torchrun / accelerate launch split one "
            "'memrl evaluate' across GPUs",
            file=sys.stderr,
        )
        return 2
    try:
        return int(args.func(args) or 0)
    except MemrlError as exc:
        print(f"memrl: error: {exc}", file=sys.stderr)
        return 2
    except EvaluationFailed as exc:
        print(f"memrl: evaluation failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("memrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
