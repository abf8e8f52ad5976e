"""``memrl report``: one page a person reads instead of a run folder's CSVs.

:func:`build_report` reads a run folder written by ``memrl train`` and writes an HTML page (or the
same content as Markdown) with its pictures in an assets folder beside it
(``<page stem>_files/``), so the page and that folder together are self-contained:

* a summary (evaluations, fresh vs cached, failures, best reward, evaluation cost, reward trend)
  and the run's ``config.yaml``;
* the best mask per dataset, and the best mask's samples beside their nearest training images
  (``best/samples.png``, ``best/nearest_neighbours.png``);
* the Pareto fronts (FID vs the reward's memorization metric), the mask-bit heatmap (share of the
  proposals training each unit, per rollout), reward and regret curves over env steps;
* the policy against random masks (``policy_eval.json``) and the failed evaluations.

Only ``evaluations.csv`` and ``config.yaml`` are required; every other piece is optional and
skipped with a short note. Nothing is computed anew: everything comes from the run's files.
The page is written atomically, after its assets folder.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

import numpy as np

from memrl.errors import MemrlError
from memrl.metrics.names import MEM_METRICS, QUALITY_METRICS, REWARD_FIELDS
from memrl.reporting.records import EvaluationLog, is_true, pareto_front
from memrl.utils.io import atomic_dir, write_text_atomic


def _named(name: str, group: tuple[str, ...]) -> str:
    """A metric name, checked against :mod:`memrl.metrics.names` (a rename there fails here at import)."""
    if name not in group:  # pragma: no cover - guards against drift
        raise ImportError(f"metric {name!r} is no longer in {group}")
    return name


REWARD = _named("reward", REWARD_FIELDS)
FID = _named("fid", QUALITY_METRICS)
NN_OWN = _named("nn_own_rate", MEM_METRICS)
DEFAULT_MEM_METRIC = NN_OWN  # the reward's default memorization term (``env.reward.mem_metric``)

#: The files that make a folder a run; everything else is optional.
REQUIRED_FILES = ("evaluations.csv", "config.yaml")
#: Pictures of the best mask written by ``memrl train`` (``train.final_pictures``), with captions.
BEST_PICTURES = (
    ("samples.png", "samples for the memorization prompts (one row per prompt)"),
    ("nearest_neighbours.png", "pairs: a sample, then its nearest training image (left to right)"),
)
FORMATS = ("html", "md")
MAX_LISTED = 50  # failures / Pareto points listed in full; the rest are counted
MAX_HEATMAP_COLUMNS = 40


# ============================================================================ reading a run
@dataclass
class Run:
    """What a run folder holds, read once; ``notes`` says what was missing or unreadable."""

    path: Path
    config_text: str
    config: dict
    rows: list[dict]
    best: dict | None = None  # best_mask.json
    policy_eval: dict | None = None  # policy_eval.json
    notes: list[str] = field(default_factory=list)

    @property
    def mem_metric(self) -> str:
        reward = (self.config.get("env") or {}).get("reward") or {}
        m = reward.get("mem_metric", DEFAULT_MEM_METRIC) if isinstance(reward, dict) else DEFAULT_MEM_METRIC
        return m if m in MEM_METRICS else DEFAULT_MEM_METRIC

    @property
    def rollout(self) -> int:
        """Env steps per PPO rollout (``ppo.n_steps`` x ``train.n_envs``; memrl's defaults 8 x 1)."""
        ppo, tr = self.config.get("ppo") or {}, self.config.get("train") or {}
        try:
            return max(1, int(ppo.get("n_steps", 8)) * int(tr.get("n_envs", 1)))
        except (TypeError, ValueError, AttributeError):
            return 8

    @property
    def heldout(self) -> list[str]:
        h = (self.config.get("train") or {}).get("heldout_datasets") or []
        return [str(d) for d in h] if isinstance(h, list) else []

    @property
    def training_datasets(self) -> list[str]:
        d = (self.config.get("env") or {}).get("datasets") or []
        return [str(x) for x in d] if isinstance(d, list) else []

    @cached_property
    def units(self) -> list[str]:
        """Unit names: ``best_mask.json``'s, else read off the rows' (mask, mask_bits) pairs."""
        if self.best and isinstance(self.best.get("units"), list):
            return [str(u) for u in self.best["units"]]
        n = max((len(r.get("mask_bits") or "") for r in self.rows), default=0)
        names: list[str | None] = [None] * n
        for r in self.rows:
            bits, mask = r.get("mask_bits") or "", r.get("mask") or ""
            if len(bits) != n or mask in ("", "all", "none"):
                continue
            on = [i for i, b in enumerate(bits) if b == "1"]
            parts = mask.split(",")
            if len(on) == len(parts):
                for i, name in zip(on, parts):
                    names[i] = names[i] or name
        return [name or f"unit {i}" for i, name in enumerate(names)]

    @cached_property
    def failed_rows(self) -> list[dict]:
        return [r for r in self.rows if is_true(r.get("failed"))]

    @cached_property
    def ok_rows(self) -> list[dict]:
        """Successful evaluations with a finite reward, FID and memorization metric."""
        m = self.mem_metric
        return [r for r in self.rows if not is_true(r.get("failed")) and all(math.isfinite(_float(r.get(k))) for k in (REWARD, FID, m))]


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder; a folder that is not a run is a :class:`MemrlError` naming what is missing."""
    import yaml

    run = Path(run_dir)
    if not run.exists():
        raise MemrlError(f"run folder {run} does not exist")
    if not run.is_dir():
        raise MemrlError(f"{run} is not a folder; pass the run folder written by memrl train")
    missing = [name for name in REQUIRED_FILES if not (run / name).is_file()]
    if missing:
        raise MemrlError(f"{run} is not a memrl train run: missing {' and '.join(missing)}")
    notes: list[str] = []
    config_text = (run / "config.yaml").read_text(errors="replace")
    try:
        config = yaml.safe_load(config_text) or {}
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except (yaml.YAMLError, ValueError) as exc:
        notes.append(f"config.yaml could not be parsed ({str(exc).splitlines()[0]}); defaults are assumed for the rollout size and memorization metric.")
        config = {}
    try:
        rows = EvaluationLog.read(run / "evaluations.csv")
    except (csv.Error, UnicodeDecodeError) as exc:
        raise MemrlError(f"{run / 'evaluations.csv'} is not a readable CSV: {exc}") from None
    torn = [r for r in rows if None in r or None in r.values()]
    if torn:  # a line being written while we read (the run is going on), or a damaged one
        rows = [r for r in rows if r not in torn]
        notes.append(f"{len(torn)} incomplete line(s) of evaluations.csv skipped (a run still writing it, or a damaged file).")
    if rows:
        absent = [c for c in ("step", "dataset", "mask_bits", REWARD) if c not in rows[0]]
        if absent:
            raise MemrlError(f"{run / 'evaluations.csv'} lacks the column(s) {', '.join(absent)}; is it an evaluations.csv written by memrl train?")
    rows.sort(key=lambda r: (_int(r.get("step")), _int(r.get("env"))))
    return Run(run, config_text, config, rows, _read_json(run / "best_mask.json", notes), _read_json(run / "policy_eval.json", notes), notes)


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); the parts that need it are skipped.")
        return None
    if not isinstance(doc, dict):
        notes.append(f"{path.name} does not hold a JSON object; the parts that need it are skipped.")
        return None
    return doc


# ============================================================================ numbers
def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _int(v: object) -> int:
    try:
        return int(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def fnum(v: object, nd: int = 3) -> str:
    """A number with ``nd`` decimals; ``-`` for a missing or non-finite value."""
    x = _float(v)
    return f"{x:.{nd}f}" if math.isfinite(x) else "-"


def _lr(v: object) -> str:
    x = _float(v)
    return f"{x:g}" if math.isfinite(x) else (str(v) if v not in (None, "") else "default")


def _pct(v: object) -> str:
    x = _float(v)
    return f"{100 * x:.2f}%" if math.isfinite(x) else "-"


def _units(mask: object) -> str:
    m = str(mask or "")
    return {"": "-", "none": "none (the pretrained model)", "all": "all"}.get(m, m.replace(",", ", "))


# ============================================================================ analysis
def best_per_dataset(run: Run) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in run.ok_rows:
        d = r["dataset"]
        if d not in best or _float(r[REWARD]) > _float(best[d][REWARD]):
            best[d] = r
    return dict(sorted(best.items()))


def fresh_seconds(run: Run) -> np.ndarray:
    s = np.array([_float(r.get("seconds")) for r in run.rows if not is_true(r.get("cached"))], dtype=float)
    return s[np.isfinite(s)]


def reward_blocks(run: Run, block: int) -> list[float]:
    """Mean reward (failures included, at their penalised reward) per block of ``block`` evaluations."""
    rewards = np.array([_float(r.get(REWARD)) for r in run.rows], dtype=float)
    out = []
    for i in range(0, len(rewards), max(1, block)):
        chunk = rewards[i : i + block]
        chunk = chunk[np.isfinite(chunk)]
        out.append(float(chunk.mean()) if chunk.size else float("nan"))
    return out


def mask_bit_shares(run: Run, rollout: int | None = None, max_columns: int = MAX_HEATMAP_COLUMNS) -> tuple[np.ndarray, list[int], int]:
    """Units x columns: the share of the proposals in each column whose trained mask has the unit.

    A column is one PPO rollout (``rollout`` env steps), or a block of whole rollouts when the run
    has more than ``max_columns`` of them. Returns (shares, last env step of each column, steps per column).
    """
    n = len(run.units)
    rows = [r for r in run.rows if len(r.get("mask_bits") or "") == n and n > 0]
    per = max(1, rollout or run.rollout)
    if len(rows) > per * max_columns:
        per *= math.ceil(len(rows) / (per * max_columns))
    if not rows:
        return np.zeros((n, 0)), [], per
    bits = np.array([[int(b == "1") for b in r["mask_bits"]] for r in rows], dtype=float)
    cols, steps = [], []
    for i in range(0, len(rows), per):
        cols.append(bits[i : i + per].mean(axis=0))
        steps.append(_int(rows[min(i + per, len(rows)) - 1].get("step")))
    return np.stack(cols, axis=1), steps, per


def reward_curves(run: Run) -> dict[str, dict[str, list]]:
    """Per dataset over env steps: rewards, best-so-far and regret (best in the run - best so far)."""
    out: dict[str, dict[str, list]] = {}
    for r in run.ok_rows:
        c = out.setdefault(r["dataset"], {"steps": [], "rewards": [], "best_so_far": [], "regret": []})
        x = _float(r[REWARD])
        c["steps"].append(_int(r.get("step")))
        c["rewards"].append(x)
        c["best_so_far"].append(max(x, c["best_so_far"][-1]) if c["best_so_far"] else x)
    for c in out.values():
        top = c["best_so_far"][-1]
        c["regret"] = [top - b for b in c["best_so_far"]]
    return dict(sorted(out.items()))


def pareto(run: Run) -> list[dict]:
    return pareto_front(run.ok_rows, run.mem_metric) if run.ok_rows else []


def policy_rows(run: Run) -> list[dict]:
    """One entry per dataset of ``policy_eval.json``, with how many of the distinct masks tried on
    it during training scored better than the policy's final choice (training datasets only)."""
    out = []
    for name, c in (run.policy_eval or {}).items():
        if not isinstance(c, dict):
            continue
        tried: dict[str, float] = {}
        for r in run.rows:
            if r.get("dataset") == name and not is_true(r.get("failed")):
                key = f"{r.get('method')}|{r.get('mask_bits')}|{r.get('lr')}"
                tried[key] = max(tried.get(key, -math.inf), _float(r.get(REWARD)))
        pr = _float(c.get("policy_reward"))
        better = f"{sum(v > pr for v in tried.values())} of {len(tried)}" if tried else "-"
        rm, rs = _float(c.get("random_reward_mean")), _float(c.get("random_reward_std"))
        out.append({
            "dataset": str(name),
            "heldout": bool(c.get("heldout")),
            "policy_reward": pr,
            "random_mean": rm,
            "random_std": rs,
            "random_n": _int(c.get("random_masks", len(c.get("random") or []))),
            "beats_random": bool(math.isfinite(pr) and math.isfinite(rm) and pr > rm),
            "policy_mask": c.get("policy_mask"),
            "policy_fid": c.get("policy_fid"),
            "policy_nn_own_rate": c.get(f"policy_{NN_OWN}"),
            "full_fid": c.get("full_finetune_fid"),
            "full_nn_own_rate": c.get(f"full_finetune_{NN_OWN}"),
            "better_in_training": better,
            "random": [x for x in (c.get("random") or []) if isinstance(x, dict)],
        })  # fmt: skip
    return out


# ============================================================================ a tiny document model
class Doc:
    """Blocks rendered to HTML or Markdown with the same content. Text is plain; `backticks` mark code."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        self.blocks.append(("h", level, text, anchor))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: list[str], rows: list[list[object]], numeric: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.blocks.append(("table", list(header), [[str(c) for c in r] for r in rows], set(numeric)))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", text, lang))

    def images(self, items: list[tuple[str, str]], widths: list[int | None] | None = None) -> None:
        """Pictures shown side by side: (path relative to the page, caption); HTML ``widths`` in pixels
        enlarge small sample grids (drawn pixelated)."""
        self.blocks.append(("img", list(items), list(widths or [None] * len(items))))


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}
.note{color:#666;font-style:italic}.figs{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
figure{margin:0}figure img{max-width:100%;border:1px solid #ddd}img.pixels{image-rendering:pixelated;height:auto}figcaption{font-size:.85em;color:#555}
nav a{margin-right:.8em}"""


def _inline_html(text: str) -> str:
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(s)}</code>" if i % 2 else html.escape(s) for i, s in enumerate(parts))


def _src(path: str) -> str:
    return quote(path, safe="/")


def _width_attr(width: int | None) -> str:
    return f' width="{int(width)}" class="pixels"' if width else ""


def render_html(doc: Doc, title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{html.escape(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>"]
    toc = [(b[3], b[2]) for b in doc.blocks if b[0] == "h" and b[1] == 2 and b[3]]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            _, level, text, anchor = b
            ident = f' id="{html.escape(anchor)}"' if anchor else ""
            out.append(f"<h{level}{ident}>{_inline_html(text)}</h{level}>")
            if level == 1 and toc:
                out.append("<nav>" + "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in toc) + "</nav>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(b[1])}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{_inline_html(b[1])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(t)}</li>" for t in b[1]) + "</ul>")
        elif kind == "table":
            _, header, rows, numeric = b
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for r in rows:
                cells = "".join(f'<td class="num">{html.escape(c)}</td>' if i in numeric else f"<td>{html.escape(c)}</td>" for i, c in enumerate(r))
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
        elif kind == "img":
            figs = "".join(
                f'<figure><img src="{html.escape(_src(src))}" alt="{html.escape(cap)}"{_width_attr(w)}><figcaption>{html.escape(cap)}</figcaption></figure>'
                for (src, cap), w in zip(b[1], b[2])
            )
            out.append(f'<div class="figs">{figs}</div>')
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_md(doc: Doc, title: str) -> str:  # noqa: ARG001 - same signature as render_html
    out: list[str] = []
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"{'#' * b[1]} {b[2]}")
        elif kind == "p":
            out.append(b[1])
        elif kind == "note":
            out.append(f"*{b[1]}*")
        elif kind == "ul":
            out.append("\n".join(f"* {t}" for t in b[1]))
        elif kind == "table":
            _, header, rows, numeric = b
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "code":
            longest = max((len(m) for m in re.findall(r"`+", b[1])), default=0)
            fence = "`" * max(3, longest + 1)
            out.append(f"{fence}{b[2]}\n{b[1].rstrip()}\n{fence}")
        elif kind == "img":
            out.append("\n\n".join(f"![{cap}]({_src(src)})  \n*{cap}*" for src, cap in b[1]))
    return "\n\n".join(out) + "\n"


# ============================================================================ the report
def compose(run: Run, assets: Path, assets_rel: str, block: int | None = None, rollout: int | None = None) -> tuple[Doc, list[str]]:
    """Lay the report out as a :class:`Doc`, writing its figures and pictures into ``assets``
    (referenced as ``assets_rel/NAME``). Returns the document and the notes of skipped parts."""
    from memrl.reporting import plots

    doc, skipped = Doc(), list(run.notes)
    mem = run.mem_metric
    rows, ok, failed = run.rows, run.ok_rows, run.failed_rows
    best = best_per_dataset(run)
    front = pareto(run)
    rollout = max(1, rollout or run.rollout)
    block = max(1, block or 4 * rollout)

    def skip(text: str) -> None:
        doc.note(text)
        skipped.append(text)

    def figure(fig, name: str, caption: str) -> None:  # noqa: ANN001
        plots.save(fig, assets / name)
        doc.images([(f"{assets_rel}/{name}", caption)])

    doc.h(1, f"memrl report: {run.path.resolve().name}")
    doc.p(f"Run folder `{run.path}`, written by `memrl train`. Everything below is read from its files; nothing is recomputed.")
    for n in run.notes:
        doc.note(n)

    # ---------------------------------------------------------------- summary
    doc.h(2, "Summary", "summary")
    n_cached = sum(1 for r in rows if is_true(r.get("cached")))
    items = [f"evaluations (env steps): {len(rows)}" + (f", steps {_int(rows[0].get('step'))} to {_int(rows[-1].get('step'))}" if rows else "")]
    if rows:
        items.append(f"fresh: {len(rows) - n_cached}, answered from the cache: {n_cached} ({100 * n_cached / len(rows):.0f}%)")
    items.append(f"failed: {len(failed)}" + (" (listed under Failed evaluations)" if failed else ""))
    datasets = sorted({r.get("dataset", "") for r in rows})
    if datasets:
        items.append(f"datasets evaluated in training: {', '.join(datasets)}")
    if run.heldout:
        items.append(f"held-out datasets (never trained on): {', '.join(run.heldout)}")
    methods = sorted({r.get("method", "") for r in rows})
    if methods:
        items.append(f"method(s): {', '.join(methods)}; memorization metric of the reward: `{mem}`")
    top = max(ok, key=lambda r: _float(r[REWARD])) if ok else None
    if top is not None:
        items.append(f"best reward: {fnum(top[REWARD])} on {top['dataset']} ({top.get('method')}, units {_units(top.get('mask'))}, FID {fnum(top[FID], 1)}, {NN_OWN} {fnum(top.get(NN_OWN))}) at env step {_int(top.get('step'))}")
    items.append(f"Pareto-optimal evaluations (FID vs {mem}): {len(front)}")
    secs = fresh_seconds(run)
    if secs.size:
        items.append(f"fresh evaluations: {secs.size} of {len(rows)}, {secs.min():.1f} to {secs.max():.1f} s, mean {secs.mean():.1f} s, {secs.sum() / 60:.1f} min in all")
    if rows:
        items.append(f"mean training reward per block of {block} evaluations (failures included): " + ", ".join(fnum(b) for b in reward_blocks(run, block)))
    if (run.path / "tb").is_dir():
        items.append(f"TensorBoard: `tensorboard --logdir {run.path / 'tb'}`")
    doc.bullets(items)
    if not rows:
        skip("evaluations.csv holds no evaluations yet (the run stopped before its first step): the sections below are empty.")

    # ---------------------------------------------------------------- config
    doc.h(2, "Configuration", "config")
    doc.p("The run's `config.yaml` (env, ppo and train sections):")
    doc.code(run.config_text, "yaml")

    # ---------------------------------------------------------------- best masks
    doc.h(2, "Best mask per dataset", "best")
    if best:
        mem_cols = [NN_OWN] if mem == NN_OWN else [NN_OWN, mem]
        header = ["dataset", "units trained", "method", "lr", "reward", "FID", *mem_cols, "trainable %", "env step", "successful evaluations"]
        per_ds_ok = {d: sum(1 for r in ok if r["dataset"] == d) for d in best}
        table = [[d, _units(r.get("mask")), r.get("method", ""), _lr(r.get("lr")), fnum(r[REWARD]), fnum(r[FID], 1), *(fnum(r.get(c)) for c in mem_cols), _pct(r.get("trainable_fraction")), _int(r.get("step")), per_ds_ok[d]] for d, r in best.items()]
        doc.table(header, table, numeric={3, 4, 5, 6, 7, 8, 9} | ({10} if len(mem_cols) > 1 else set()))
        doc.p("The highest reward among each dataset's successful evaluations; units are the ones actually trained (units where the method has nothing to train are dropped).")
    else:
        skip("No successful evaluation yet, so no best mask.")
    pics = [(name, cap) for name, cap in BEST_PICTURES if (run.path / "best" / name).is_file()]
    if pics:
        b = run.best or {}
        what = f" ({b.get('method')} on {b.get('dataset')}, units {', '.join(b.get('mask_units') or []) or 'none'}, reward {fnum((b.get('metrics') or {}).get(REWARD))})" if b else ""
        doc.h(3, "The best mask's pictures")
        doc.p(f"The best mask overall{what}, re-run once with pictures at the end of training (same seed, same numbers):")
        for name, _ in pics:
            shutil.copy2(run.path / "best" / name, assets / f"best_{name}")
        doc.images([(f"{assets_rel}/best_{name}", cap) for name, cap in pics], [_display_width(assets / f"best_{name}") for name, _ in pics])
    else:
        skip("No pictures of the best mask (best/samples.png, best/nearest_neighbours.png): the run has not finished, or train.final_pictures was off.")

    # ---------------------------------------------------------------- Pareto
    doc.h(2, "Quality against memorization (Pareto fronts)", "pareto")
    if ok:
        figure(plots.pareto_by_dataset(ok, front, mem, best), "pareto.png", f"FID vs {mem} per dataset: every evaluation, the Pareto front joined, the best reward ringed")
        doc.p(f"An evaluation is on the front when no other evaluation of the same dataset has both a lower FID and a lower {mem}. Lower is better on both axes.")
        shown = front[:MAX_LISTED]
        doc.table(["dataset", "units trained", "method", "lr", "FID", mem, "reward", "trainable %"], [[r["dataset"], _units(r.get("mask")), r.get("method", ""), _lr(r.get("lr")), fnum(r[FID], 1), fnum(r[mem]), fnum(r[REWARD]), _pct(r.get("trainable_fraction"))] for r in shown], numeric={3, 4, 5, 6, 7})
        if len(front) > len(shown):
            doc.note(f"{len(front) - len(shown)} more Pareto points are in pareto.csv.")
    else:
        skip("No successful evaluation with FID and memorization numbers: no Pareto plot.")

    # ---------------------------------------------------------------- heatmap
    doc.h(2, "Which units the agent trains", "masks")
    shares, steps, per = mask_bit_shares(run, rollout)
    units = run.units
    if shares.shape[1]:
        col = "rollout" if per == rollout else f"block of {per} env steps"
        figure(plots.mask_frequency_heatmap(shares, units, steps), "mask_bits.png", f"share of the proposals training each unit, per {col} (x: last env step of the column)")
        doc.p(f"Each column is one {col} ({per} proposals; failed evaluations included). A unit's share is how many of those proposals trained it. Learning shows as columns turning decisive (near 0 or 1) as the run goes on.")
        doc.table(["unit", "share over the run", "first column", "last column"], [[u, fnum(_overall_share(run, i), 2), fnum(shares[i, 0], 2), fnum(shares[i, -1], 2)] for i, u in enumerate(units)], numeric={1, 2, 3})
    else:
        skip("No mask bits recorded: no heatmap.")

    # ---------------------------------------------------------------- reward and regret
    doc.h(2, "Reward and regret over env steps", "rewards")
    curves = reward_curves(run)
    if curves:
        figure(plots.reward_curves(curves), "rewards.png", "left: each evaluation's reward and the best so far; right: regret against the best found in the run")
        doc.p(
            "Regret here is the best reward found for that dataset anywhere in this run minus the best found so far. "
            "It is measured against the best found in this run, not against an exhaustive optimum over all masks "
            "(which the run never computes), so it reaches 0 by construction at the step the run's best was found; "
            "a flat curve that reaches 0 early means the run stopped finding better masks, not that it found the optimum."
        )
        half = (_int(rows[0].get("step")) + _int(rows[-1].get("step"))) / 2 if rows else 0
        table = []
        for d, c in curves.items():
            at_half = [g for s, g in zip(c["steps"], c["regret"]) if s <= half]
            first_best = c["steps"][c["regret"].index(0.0)]
            table.append([d, len(c["steps"]), fnum(c["rewards"][0]), fnum(c["best_so_far"][-1]), first_best, fnum(at_half[-1]) if at_half else "-"])
        doc.table(["dataset", "successful evaluations", "first reward", "best reward", "best found at env step", f"regret at env step {int(half)}"], table, numeric={1, 2, 3, 4, 5})
    else:
        skip("No successful evaluation: no reward curves.")

    # ---------------------------------------------------------------- policy vs baselines
    doc.h(2, "The policy against random masks", "policy")
    prs = policy_rows(run)
    if prs:
        doc.p(
            "After training, the policy's deterministic mask for each dataset (held-out ones only through their descriptor) "
            "against uniformly random masks, from the same evaluation code and cache (`policy_eval.json`). "
            "Full fine-tuning is the reward's reference on the same budget."
        )
        header = ["dataset", "held-out", "policy reward", "random mean ± std (n)", "policy - random mean", "policy mask", f"policy FID / {NN_OWN}", f"full-FT FID / {NN_OWN}", "masks tried in training scoring better"]
        table = [[
            p["dataset"], "yes" if p["heldout"] else "no", fnum(p["policy_reward"]),
            f"{fnum(p['random_mean'])} ± {fnum(p['random_std'])} ({p['random_n']})", fnum(p["policy_reward"] - p["random_mean"]),
            _units(p["policy_mask"]), f"{fnum(p['policy_fid'], 1)} / {fnum(p['policy_nn_own_rate'])}",
            f"{fnum(p['full_fid'], 1)} / {fnum(p['full_nn_own_rate'])}", p["better_in_training"],
        ] for p in prs]  # fmt: skip
        doc.table(header, table, numeric={2, 4})
        wins = [p for p in prs if p["beats_random"]]
        ho = [p for p in prs if p["heldout"]]
        line = f"The policy beats the random masks' mean reward on {len(wins)} of {len(prs)} datasets"
        if ho:
            line += f" ({sum(p['beats_random'] for p in ho)} of {len(ho)} held-out)"
        doc.p(line + ". \"Masks tried in training scoring better\" counts the distinct masks evaluated on that dataset during training whose reward beat the policy's final choice.")
        doc.h(3, "Random masks")
        rand = []
        for p in prs:
            for x in p["random"]:
                rand.append([p["dataset"], _units(x.get("mask")), fnum(x.get(REWARD)), fnum(x.get(FID), 1), fnum(x.get(NN_OWN)), "yes" if x.get("failed") else "no"])
        if rand:
            doc.table(["dataset", "random mask", "reward", "FID", NN_OWN, "failed"], rand, numeric={2, 3, 4})
            spans = []
            for p in prs:
                nn = [_float(x.get(NN_OWN)) for x in p["random"]]
                nn = [v for v in nn if math.isfinite(v)]
                if nn:
                    spans.append(f"{p['dataset']}: {min(nn):.3f} to {max(nn):.3f}")
            if spans:
                doc.p(f"{NN_OWN} of the random masks: " + "; ".join(spans) + ".")
        else:
            doc.note("policy_eval.json lists no random masks.")
    else:
        skip("No policy_eval.json (the run has not finished): the policy-vs-random comparison is skipped.")

    # ---------------------------------------------------------------- failures
    doc.h(2, "Failed evaluations", "failures")
    if failed:
        doc.p(f"{len(failed)} evaluation(s) failed; each scored the failure reward (below the reward floor) and the run went on.")
        shown = failed[:MAX_LISTED]
        doc.table(["env step", "dataset", "method", "units", "lr", "reward", "error"], [[_int(r.get("step")), r.get("dataset", ""), r.get("method", ""), _units(r.get("mask")), _lr(r.get("lr")), fnum(r.get(REWARD)), r.get("error") or "(no message)"] for r in shown], numeric={0, 4, 5})
        if len(failed) > len(shown):
            doc.note(f"{len(failed) - len(shown)} more failed evaluations are in evaluations.csv.")
    else:
        doc.note("No evaluation failed.")
    return doc, skipped


def _display_width(path: Path, target: int = 420) -> int | None:
    """An integer upscale of a small picture (the embedded model's are 16 px a tile), for HTML."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w = im.size[0]
    except Exception:  # noqa: BLE001 - an unreadable picture is shown as it is
        return None
    k = target // w if w else 0
    return w * k if k >= 2 else None


def _overall_share(run: Run, i: int) -> float:
    n = len(run.units)
    bits = [r["mask_bits"][i] == "1" for r in run.rows if len(r.get("mask_bits") or "") == n]
    return sum(bits) / len(bits) if bits else float("nan")


def infer_format(out_path: str | Path, fmt_: str | None = None) -> str:
    """``fmt_`` if given, else ``md`` for a ``.md``/``.markdown`` path, else ``html``."""
    if fmt_ is not None:
        if fmt_ not in FORMATS:
            raise MemrlError(f"unknown report format {fmt_!r}; choose one of {', '.join(FORMATS)}")
        return fmt_
    return "md" if Path(out_path).suffix.lower() in (".md", ".markdown") else "html"


def write_report(run_dir: str | Path, out_path: str | Path | None = None, fmt: str | None = None, block: int | None = None, rollout: int | None = None) -> dict:
    """:func:`build_report` returning what it wrote: ``report``, ``format``, ``assets``, ``skipped``."""
    run = load_run(run_dir)
    out = Path(out_path) if out_path is not None else run.path / "report.html"
    kind = infer_format(out, fmt)
    if out.is_dir():
        raise MemrlError(f"--out {out} is a folder; give the report's file name, e.g. {out / ('report.' + kind)}")
    assets_name = f"{out.stem}_files"
    with atomic_dir(out.parent / assets_name) as tmp:
        doc, skipped = compose(run, tmp, assets_name, block=block, rollout=rollout)
    title = f"memrl report: {run.path.resolve().name}"
    write_text_atomic(out, render_html(doc, title) if kind == "html" else render_md(doc, title))
    return {"report": str(out), "format": kind, "assets": str(out.parent / assets_name), "skipped": skipped}


def build_report(run_dir: str | Path, out_path: str | Path | None = None, fmt: str | None = None, block: int | None = None, rollout: int | None = None) -> Path:
    """Write the report of the run folder ``run_dir`` to ``out_path`` (default ``RUN/report.html``).

    ``fmt`` is ``"html"`` or ``"md"`` (default: from the suffix, ``.md`` for Markdown). Pictures go
    to ``<out stem>_files/`` beside the page. ``block``: evaluations per block of the reward trend
    (default 4 rollouts); ``rollout``: env steps per heatmap column (default ``ppo.n_steps x train.n_envs``).
    """
    return Path(write_report(run_dir, out_path, fmt, block, rollout)["report"])


# ============================================================================ plain text (experiments/agent_report.py)
def text_summary(run_dir: str | Path, block: int = 32) -> str:
    """The terminal summary of ``experiments/agent_report.py``: policy vs random masks, the random
    masks, the mean reward per block of ``block`` evaluations and the cost of fresh evaluations."""
    run = load_run(run_dir)
    lines = []
    prs = policy_rows(run)
    if prs:
        lines.append(f"| dataset | held-out | policy reward | random mean ± std (n) | policy mask | policy FID / {NN_OWN} | full-FT FID | masks tried in training scoring better |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for p in prs:
            lines.append(
                f"| {p['dataset']} | {'yes' if p['heldout'] else 'no'} | {fnum(p['policy_reward'])} | {fnum(p['random_mean'])} ± {fnum(p['random_std'])} ({p['random_n']}) | "
                f"{p['policy_mask']} | {fnum(p['policy_fid'], 1)} / {fnum(p['policy_nn_own_rate'])} | {fnum(p['full_fid'], 1)} | {p['better_in_training']} |"
            )
        lines.append(f"\nrandom masks per dataset (mask: reward, FID, {NN_OWN}):")
        for p in prs:
            rs = p["random"]
            lines.append(f"  {p['dataset']}: " + "; ".join(f"{x.get('mask')}: {fnum(x.get(REWARD))}, {fnum(x.get(FID), 1)}, {fnum(x.get(NN_OWN))}" for x in rs))
            nn = [v for v in (_float(x.get(NN_OWN)) for x in rs) if math.isfinite(v)]
            if nn:
                lines.append(f"    {NN_OWN} of the random masks: {min(nn):.3f} to {max(nn):.3f}")
    else:
        lines.append(f"no policy_eval.json in {run.path}: the run has not finished (no policy-vs-random comparison)")
    lines.append(f"\nmean training reward per block of {block} evaluations: " + ", ".join(fnum(b) for b in reward_blocks(run, block)))
    secs = fresh_seconds(run)
    if secs.size:
        lines.append(f"fresh evaluations: {secs.size} of {len(run.rows)}, {secs.min():.1f} to {secs.max():.1f} s, mean {secs.mean():.1f} s")
    return "\n".join(lines)


def save_mask_heatmap(run_dir: str | Path, path: str | Path, rollout: int | None = None) -> Path:
    """Save the mask-bit frequency heatmap (share of each rollout's proposals per unit) as a PNG."""
    from memrl.reporting import plots

    run = load_run(run_dir)
    shares, steps, _ = mask_bit_shares(run, rollout, max_columns=10**9)
    if not shares.shape[1]:
        raise MemrlError(f"{run.path / 'evaluations.csv'} records no mask bits: no heatmap to draw")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.save(plots.mask_frequency_heatmap(shares, run.units, steps), path)
    return path
