"""Lookup tables: finished evaluations exported from a cache, answered without fine-tuning.

Comparing outer loops (PPO, random search, Optuna samplers, ...) needs the same evaluations
many times over. :func:`export_table` writes the finished entries of an evaluation cache
(:class:`~memrl.evaluation.cache.EvalCache`) to a *table*, and :class:`LookupEvaluator` answers
requests from one or more tables with the interface of :class:`~memrl.evaluation.Evaluator`
(:class:`memrl.evaluation.protocol.MaskEvaluator`), so ``memrl search`` and ``memrl train
--lookup DIR`` cost no fine-tuning.

Table format (JSON lines, one file per table, ``*.jsonl``):

* first line ``{"meta": {...}}``: ``units``, ``granularity``, ``trainable_units`` (method -> the
  units where it trains something), ``model`` and ``feature_net`` (content hashes),
  ``pretrained`` (the model folder), ``image_size``, ``image_channels``, ``eval_version`` (of the
  code that computed the rows) and ``created`` (when the newest row was stored, UTC);
* then one line per evaluation, sorted by key: ``{"key", "request", "status": "ok" | "failed",
  "result" (null for a failure), "error", "deterministic"}``; ``request`` is the cache key's
  content (:func:`memrl.evaluation.evaluator.build_request`).

Matching. A request is the real evaluator's cache key content without ``runtime`` (library
versions, device, dtype, CPU threads): a table made with 1 CPU thread answers a 2-thread
caller. The row's runtime is reported in the result as ``table_runtime``. Everything else (model,
feature network, units, dataset contents, method, trained mask, learning rate, seed, budget and
metric settings, evaluation version) must match exactly; the reward settings are not part of a
request (the reward is recomputed from the table's reference row, so another ``lam`` or ``mu``
needs no new table).

Refusals (:class:`~memrl.errors.MemrlError`): tables over other units, another granularity,
model or feature network than each other; a dataset no table holds; a request with no row (the
message names what differs, dataset / method / config / seed / lr / mask, and what the tables
hold); ``out_dir`` (a lookup has no pictures). A stored failure is raised as
:class:`~memrl.errors.EvaluationFailed` (a failed evaluation, penalised like a real one).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from memrl.data.dataset import DatasetSplits
from memrl.errors import EvaluationFailed, MemrlError
from memrl.evaluation.cache import EvalCache, open_backend, request_key
from memrl.evaluation.config import EvalConfig
from memrl.evaluation.evaluator import EVAL_VERSION, Evaluator, _file_hash, build_request
from memrl.peft_masking import Mask

__all__ = ["META_KEYS", "TABLE_SUFFIX", "LookupEvaluator", "export_table", "read_table", "table_datasets", "table_meta"]

#: Tables are ``*.jsonl`` files; :meth:`LookupEvaluator.from_dir` loads every one under a folder.
TABLE_SUFFIX = ".jsonl"
#: What a table's meta line must hold (``export_table`` adds ``eval_version`` and ``created``).
META_KEYS = ("units", "granularity", "trainable_units", "model", "feature_net", "pretrained", "image_size", "image_channels")
#: The parts of a request a missing row is explained by, in the order they are narrowed down.
FACETS = ("model", "dataset", "method", "config", "seed", "lr", "mask")


# ---------------------------------------------------------------------------------- export
def table_meta(evaluator: Evaluator, methods: Iterable[str] | None = None) -> dict:
    """The meta line of a table made with the real ``evaluator`` (``methods``: default every method)."""
    from memrl.peft_masking import METHODS

    names = list(METHODS) if methods is None else list(methods)
    return {
        "units": list(evaluator.units),
        "granularity": evaluator.granularity,
        "trainable_units": {m: list(evaluator.trainable_units(m)) for m in names},
        "model": evaluator.model_hash,
        "feature_net": evaluator.feature_net_hash,
        "pretrained": str(evaluator.pretrained_dir),
        "image_size": int(evaluator.image_size),
        "image_channels": int(evaluator.image_channels),
    }


def _check_meta(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise MemrlError(f"{where}: the table meta must be a mapping, got {type(meta).__name__}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise MemrlError(f"{where}: the table meta lacks {', '.join(missing)} (it needs {', '.join(META_KEYS)}; see memrl.evaluation.lookup.table_meta)")
    if not isinstance(meta["trainable_units"], dict):
        raise MemrlError(f"{where}: meta 'trainable_units' must map each method to its list of units")
    return meta


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), the form rows are compared in."""
    return json.loads(json.dumps(obj, default=str))


def require_cache(location: str | Path) -> None:
    """Refuse (one line) an SQLite cache ``location`` that does not exist; a database URL passes
    (its server answers for it). Cheap: call it before loading a model."""
    file = getattr(open_backend(location), "path", None)  # None: a database server
    if file is not None and not file.is_file():
        raise MemrlError(f"no evaluation cache at {file} (an SQLite file written by memrl evaluate / train / search, or a postgresql:// URL)")


def export_table(cache: EvalCache | str | Path, out: str | Path, meta: dict, include_transient: bool = False) -> int:
    """Write the finished evaluations of ``cache`` to the table ``out``; returns the number of rows.

    Exported: results (``ok``) and deterministic failures (a diverged fine-tune, which repeats for
    the same request); claims in progress are skipped, and so are failures that a retry could
    turn into a result unless ``include_transient`` (a lookup then raises them as non-deterministic
    :class:`EvaluationFailed`). Only rows of ``meta``'s model, feature network and units computed
    by this code's evaluation version are written (a cache can hold older ones); a cache whose
    finished rows are all for something else is refused.

    The file is written atomically (temporary file + rename) and is the same bytes for the same
    cache content: rows sorted by key, ``created`` the time the newest row was stored.
    """
    meta = _jsonable(_check_meta(dict(meta), f"export to {out}"))
    if not isinstance(cache, EvalCache):
        require_cache(cache)
        cache = EvalCache(cache)
    rows = cache.finished_rows()
    lines, newest, finished = [], None, 0
    for key, status, request, result, error, deterministic, created in rows:
        if status == "failed" and not (deterministic or include_transient):
            continue
        finished += 1
        req = json.loads(request)
        if (
            req.get("eval_version") != EVAL_VERSION
            or req.get("model") != meta["model"]
            or req.get("feature_net") != meta["feature_net"]
            or req.get("units") != meta["units"]
        ):
            continue
        ok = status == "ok"
        lines.append(
            {
                "key": key,
                "request": req,
                "status": status,
                "result": json.loads(result) if ok else None,
                "error": None if ok else error,
                "deterministic": bool(deterministic) if not ok else False,
            }
        )
        newest = created if newest is None else max(newest, created)
    if finished and not lines:
        raise MemrlError(
            f"cache {cache.location} holds {finished} finished evaluation(s), none for this table's model {meta['model']}, "
            f"feature network {meta['feature_net']}, {len(meta['units'])} units and evaluation version {EVAL_VERSION}: "
            "check the meta (memrl.evaluation.lookup.table_meta of the evaluator that filled the cache)"
        )
    meta["eval_version"] = EVAL_VERSION
    meta["created"] = datetime.fromtimestamp(newest, timezone.utc).isoformat(timespec="seconds") if newest is not None else None
    text = json.dumps({"meta": meta}, sort_keys=True) + "\n" + "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    from memrl.utils.io import write_text_atomic

    write_text_atomic(out, text)
    return len(lines)


# ---------------------------------------------------------------------------------- reading
def read_table(path: str | Path) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of one table file, checked (format, evaluation version, units of every row)."""
    path = Path(path)
    if not path.is_file():
        raise MemrlError(f"no lookup table at {path}")
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if not lines:
        raise MemrlError(f"lookup table {path} is empty (its first line must be {{\"meta\": ...}})")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise MemrlError(f"{path}:1 is not JSON ({exc.msg}): not a memrl lookup table") from None
    if not isinstance(head, dict) or "meta" not in head:
        raise MemrlError(f"{path}: the first line must be {{\"meta\": ...}}: not a memrl lookup table (write one with memrl.evaluation.lookup.export_table)")
    meta = _check_meta(head["meta"], str(path))
    version = meta.get("eval_version")
    if version != EVAL_VERSION:
        raise MemrlError(
            f"lookup table {path} was computed by evaluation version {version}, this memrl computes version {EVAL_VERSION} "
            "(results could differ): evaluate the masks again and export a new table"
        )
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MemrlError(f"{path}:{i} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("request"), dict) or row.get("status") not in ("ok", "failed"):
            raise MemrlError(f"{path}:{i}: a row needs 'request' (a mapping) and 'status' ok or failed")
        if row["status"] == "ok" and not isinstance(row.get("result"), dict):
            raise MemrlError(f"{path}:{i}: an ok row needs 'result' (a mapping)")
        req = row["request"]
        if req.get("units") != meta["units"]:
            raise MemrlError(
                f"{path}:{i}: the row is over {len(req.get('units') or [])} units {req.get('units')}, the table's meta over "
                f"{len(meta['units'])} units {meta['units']}"
            )
        rows.append(row)
    return meta, rows


def table_datasets(tables: str | Path | Sequence[str | Path]) -> list[str]:
    """The datasets whose evaluations the tables hold, spelled as ``load_dataset`` takes them
    (``family/80`` -> ``family:80``), in table order."""
    names: list[str] = []
    for path in _table_paths(tables):
        _, rows = read_table(path)
        for row in rows:
            name = (row.get("result") or {}).get("dataset") if row.get("status") == "ok" else None
            if name:
                spec = "family:" + str(name).split("/", 1)[1] if str(name).startswith("family/") else str(name)
                if spec not in names:
                    names.append(spec)
    return names


def import_tables(tables: str | Path | Sequence[str | Path], cache: EvalCache | str | Path) -> dict[str, int]:
    """Copy the rows of lookup tables into the evaluation cache ``cache`` (the inverse of
    :func:`export_table`); returns the counts ``tables``, ``imported``, ``present``, ``failures``.

    Why: a table is the committed, portable record of evaluations; its cache is a run folder's
    file that a fresh machine does not have. Importing the tables into a run's cache lets real
    runs (``memrl train``, ``memrl search``) reuse those fine-tunes as cache hits instead of
    computing them again. Each row's key is the hash of its request, so a row only ever answers
    the very request that produced it (same model, data, config, seed, thread count, versions).

    Every table is read and checked first (format, evaluation version, each row's key against its
    request): a bad file is refused before anything is written. Results (``ok``) are stored where
    the cache has none for the key yet (``present`` counts those it had), deterministic failures
    where it has neither (``failures``); failures that a retry could turn into a result are left
    out. Importing again changes nothing.
    """
    paths = _table_paths(tables)
    checked: list[dict] = []
    for path in paths:
        _, rows = read_table(path)
        for i, row in enumerate(rows, start=2):
            key = row.get("key")
            if key != request_key(row["request"]):
                raise MemrlError(
                    f"{path}:{i}: 'key' {key!r} is not the hash of the row's request (memrl.evaluation.cache.request_key): "
                    "the row was edited or written by something else; nothing was imported"
                )
            checked.append(row)
    if not isinstance(cache, EvalCache):
        cache = EvalCache(cache)
    counts = {"tables": len(paths), "imported": 0, "present": 0, "failures": 0}
    for row in checked:
        key = row["key"]
        if row["status"] == "ok":
            if cache.get(key) is not None:
                counts["present"] += 1
                continue
            result = row["result"]
            seconds = result.get("seconds")
            cache.put(key, row["request"], result, float(seconds) if isinstance(seconds, (int, float)) else 0.0)
            counts["imported"] += 1
        elif row.get("deterministic") and cache.status(key) is None:
            cache.put_failed(key, row["request"], str(row.get("error") or "failed"), deterministic=True)
            counts["failures"] += 1
    return counts


def _table_paths(tables: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [tables] if isinstance(tables, (str, Path)) else list(tables)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(q for q in p.rglob(f"*{TABLE_SUFFIX}") if q.is_file() and not any(part.startswith(".") for part in q.relative_to(p).parts))
            found = [q for q in files if _is_table(q)]  # a dataset's metadata.jsonl in the folder is not a table
            if not found:
                other = f" ({', '.join(str(q) for q in files[:3])}{', ...' if len(files) > 3 else ''} are not tables)" if files else ""
                raise MemrlError(f"no lookup tables (*{TABLE_SUFFIX} starting with a {{\"meta\": ...}} line) under {p}{other}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise MemrlError(f"no lookup table or folder of tables at {p}")
    if not out:
        raise MemrlError("no lookup tables given")
    return list(dict.fromkeys(out))


def _is_table(path: Path) -> bool:
    """Whether ``path`` starts like a lookup table (its first line a ``{"meta": ...}`` object)."""
    try:
        with open(path) as f:
            head = f.readline()
        if not head.lstrip().startswith("{"):
            return False
        first = json.loads(head)
        return isinstance(first, dict) and "meta" in first
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _facets(req: dict) -> dict[str, Any]:
    """A request (without runtime) cut into the parts a missing row is explained by."""
    cfg = _jsonable(req.get("config") or {})
    ft = dict(cfg.get("finetune") or {})
    seed = ft.pop("seed", None)
    ft.pop("method", None)
    lr_given = ft.pop("lr", None)
    rest = _flatten({**cfg, "finetune": ft})
    return {
        "model": (req.get("eval_version"), req.get("model"), req.get("feature_net"), tuple(req.get("units") or ())),
        "dataset": req.get("dataset"),
        "method": req.get("method"),
        "config": rest,
        "seed": seed,
        "lr": (req.get("lr"), lr_given),
        "mask": req.get("mask"),
    }


def _strip(req: dict) -> dict:
    return {k: v for k, v in req.items() if k != "runtime"}


class _Row:
    """One stored evaluation: the row, its table and its match key."""

    __slots__ = ("row", "path", "facets", "key")

    def __init__(self, row: dict, path: Path) -> None:
        self.row = row
        self.path = path
        self.facets = _facets(row["request"])
        self.key = request_key(_strip(row["request"]))


# ---------------------------------------------------------------------------------- evaluator
class LookupEvaluator:
    """Answers evaluation requests from lookup tables (no model, no fine-tuning).

    The same interface as :class:`~memrl.evaluation.Evaluator`
    (:class:`memrl.evaluation.protocol.MaskEvaluator`): :meth:`evaluate` reduces the mask with
    :meth:`effective_mask`, answers from the tables and computes the reward with the real
    evaluator's code against the table's reference row (full fine-tuning, mask ``all``, same
    config and seed), so its result has the real one's fields, plus ``lookup: True``,
    ``cached: True``, ``computed_seconds`` (what the evaluation cost once), ``seconds`` (what the
    lookup cost), ``table_runtime`` (the stored row's runtime) and ``lookup_table`` (its file).

    ``tables``: table files and/or folders (every ``*.jsonl`` under them). ``feature_net``: the
    feature network folder that describes datasets for the environment; by default the tables'
    ``pretrained/feature_net`` when it exists and is the network the tables were made with, else
    none (:meth:`require_feature_net` then says so).
    """

    def __init__(self, tables: str | Path | Sequence[str | Path], feature_net: str | Path | None = None) -> None:
        self.tables = _table_paths(tables)
        loaded = [(p, *read_table(p)) for p in self.tables]
        first_path, meta, _ = loaded[0]
        for path, other, _ in loaded[1:]:
            _check_agree(first_path, meta, path, other)
        trainable: dict[str, tuple[list[str], Path]] = {}
        for path, m, _ in loaded:
            for method, units in m["trainable_units"].items():
                if method in trainable and list(units) != trainable[method][0]:
                    held, origin = trainable[method]
                    raise MemrlError(f"lookup tables {origin} and {path} disagree on the units {method} can train: {held} and {list(units)}")
                trainable.setdefault(method, (list(units), path))
        self.meta = meta
        self._units = tuple(meta["units"])
        self._granularity = str(meta["granularity"])
        self._trainable = {m: tuple(u) for m, (u, _) in trainable.items()}
        self._rows: list[_Row] = []
        self._index: dict[str, _Row] = {}
        self._dataset_names: dict[str, set[str]] = {}
        for path, _, rows in loaded:
            for row in rows:
                r = _Row(row, path)
                self._rows.append(r)
                held = self._index.get(r.key)
                # one request in two tables (e.g. made with 1 and 2 CPU threads): a result beats a failure, else the first
                if held is None or (held.row["status"] != "ok" and row["status"] == "ok"):
                    self._index[r.key] = r
                names = self._dataset_names.setdefault(r.facets["dataset"], set())
                if row["status"] == "ok" and row["result"].get("dataset"):
                    names.add(str(row["result"]["dataset"]))
        self.feature_net_dir, self._feature_net, self._feature_net_note = self._load_feature_net(feature_net)
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_dir(cls, path: str | Path, feature_net: str | Path | None = None) -> "LookupEvaluator":
        """Every ``*.jsonl`` table under the folder ``path``."""
        p = Path(path)
        if not p.is_dir():
            raise MemrlError(f"--lookup {p}: not a folder of lookup tables (*{TABLE_SUFFIX})")
        return cls(p, feature_net=feature_net)

    # ------------------------------------------------------------------ the interface
    @property
    def units(self) -> tuple[str, ...]:
        return self._units

    @property
    def granularity(self) -> str:
        return self._granularity

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def image_channels(self) -> int:
        return int(self.meta["image_channels"])

    @property
    def model_hash(self) -> str:
        return str(self.meta["model"])

    @property
    def feature_net_hash(self) -> str:
        return str(self.meta["feature_net"])

    @property
    def feature_net(self):  # noqa: ANN201
        """The feature network (describes datasets for the environment), or ``None``."""
        return self._feature_net

    def require_feature_net(self):  # noqa: ANN201
        """The feature network, or a :class:`MemrlError` saying why there is none and what to do."""
        if self._feature_net is None:
            raise MemrlError(
                f"the lookup tables ({self._where()}) come without a feature network to describe datasets: "
                f"{self._feature_net_note}; give the folder of feature network {self.feature_net_hash} (MODEL/feature_net)"
            )
        return self._feature_net

    def set_feature_net(self, folder: str | Path) -> None:
        """Describe datasets with the feature network in ``folder`` (it must be the tables' one)."""
        self.feature_net_dir, self._feature_net = self._checked_feature_net(Path(folder))
        self._feature_net_note = ""

    @property
    def n_rows(self) -> int:
        """How many evaluations the tables hold (a request in two tables counts once)."""
        return len(self._index)

    def parse_mask(self, spec: str | Mask) -> Mask:
        return Evaluator.parse_mask(self, spec)  # type: ignore[arg-type]

    def trainable_units(self, method: str) -> tuple[str, ...]:
        if method not in self._trainable:
            raise MemrlError(
                f"the lookup tables ({self._where()}) do not say which units {method} can train "
                f"(their meta knows {', '.join(sorted(self._trainable)) or 'no method'}): export the table with that method in its meta"
            )
        return self._trainable[method]

    def effective_mask(self, method: str, mask: Mask, strict: bool = False) -> tuple[Mask, tuple[str, ...]]:
        return Evaluator.effective_mask(self, method, mask, strict=strict)  # type: ignore[arg-type]

    def holds(self, data: DatasetSplits) -> bool:
        """Whether some table has rows for ``data``'s contents (a dataset without any is refused by :meth:`check_data`)."""
        return data.fingerprint() in self._dataset_names

    def check_data(self, data: DatasetSplits) -> None:
        """Refuse a dataset of another image shape, or one whose contents no table holds."""
        want = (self.image_channels, self.image_size, self.image_size)
        if tuple(data.image_shape) != want:
            raise MemrlError(f"dataset {data.name} has images {tuple(data.image_shape)}, the lookup tables' model makes {want}")
        if not self.holds(data):
            raise MemrlError(f"dataset {data.name} (contents {data.fingerprint()}) has no row in the lookup tables ({self._where()}); they hold {self._datasets_text()}")

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
        """What :meth:`Evaluator.evaluate` returns, answered from the tables (the same code computes
        the mask reduction, the reward and the reference fields)."""
        if out_dir is not None:
            raise MemrlError(f"a lookup table has no pictures (out_dir {out_dir}): evaluate the mask with the model (memrl evaluate) for samples")
        return Evaluator.evaluate(self, data, method, mask, cfg, lr=lr, seed=seed, out_dir=None, with_reward=with_reward, progress=progress, strict=strict)  # type: ignore[arg-type]

    def reference(self, data: DatasetSplits, cfg: EvalConfig, progress: bool = False) -> dict:
        """The table's full fine-tuning row with the same budget, data and seed."""
        return Evaluator.reference(self, data, cfg, progress=progress)  # type: ignore[arg-type]

    def base(self, data: DatasetSplits, cfg: EvalConfig, progress: bool = False) -> dict:
        """The table's row of the pretrained model (mask ``none``), as :meth:`Evaluator.base`."""
        return Evaluator.base(self, data, cfg, progress=progress)  # type: ignore[arg-type, attr-defined]

    def request(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig) -> dict:
        """The request ``(data, mask, cfg)`` is looked up by (``runtime`` left out)."""
        return build_request(self.model_hash, self.feature_net_hash, self.units, self.granularity, data.fingerprint(), mask.bitstring, cfg, None)

    def _cached_run(self, data: DatasetSplits, mask: Mask, cfg: EvalConfig, out_dir, progress: bool) -> dict:  # noqa: ANN001
        """The stored answer to one request (what :meth:`Evaluator._cached_run` computes or reads)."""
        if out_dir is not None:
            raise MemrlError("a lookup table has no pictures: out_dir needs the model (memrl evaluate)")
        t0 = time.time()
        req = self.request(data, mask, cfg)
        found = self._index.get(request_key(_strip(req)))
        if found is None:
            self.misses += 1
            raise MemrlError(self._no_row(data, req))
        self.hits += 1
        row = found.row
        if row["status"] != "ok":
            raise EvaluationFailed(f"{row.get('error')} (recorded in lookup table {found.path})", deterministic=bool(row.get("deterministic", True)))
        result = copy.deepcopy(row["result"])
        result["cached"] = True
        result["lookup"] = True
        result["computed_seconds"] = result.get("seconds")
        result["seconds"] = round(time.time() - t0, 4)
        result["table_runtime"] = row["request"].get("runtime")
        result["lookup_table"] = str(found.path)
        return result

    # ------------------------------------------------------------------ coverage (memrl train --lookup)
    def coverage(self, data: DatasetSplits, method: str, cfg: EvalConfig, lr: float | None = None, seed: int | None = None) -> dict:
        """How much of one (dataset, method, lr, seed, config) the tables hold.

        ``{"masks": distinct trained masks held, "possible": 2 ** units the method can train,
        "reference": the reference row is there, "base": the pretrained model's row is there}``.
        """
        cfg = cfg.with_method(method, lr, cfg.finetune.seed if seed is None else seed)
        can = set(self.trainable_units(method))
        want = _facets(self.request(data, Mask.parse("none", self.units), cfg))
        masks = {
            r.facets["mask"]
            for r in self._rows
            if all(r.facets[f] == want[f] for f in FACETS if f != "mask")
            and all(b == "0" or u in can for u, b in zip(self.units, r.facets["mask"]))
        }
        full = cfg.with_method("full", None, cfg.finetune.seed)
        has = lambda m: request_key(_strip(self.request(data, Mask.parse(m, self.units), full))) in self._index  # noqa: E731
        return {"masks": len(masks), "possible": 2 ** len(can), "reference": has("all"), "base": has("none")}

    # ------------------------------------------------------------------ messages
    def _where(self) -> str:
        return ", ".join(str(p) for p in self.tables) if len(self.tables) <= 3 else f"{len(self.tables)} tables under {self.tables[0].parent}"

    def _dataset_text(self, fp: str) -> str:
        names = sorted(self._dataset_names.get(fp) or ())
        return f"{'/'.join(names)} ({fp})" if names else fp

    def _datasets_text(self) -> str:
        fps = list(self._dataset_names)
        return f"{len(fps)} dataset(s): " + ", ".join(self._dataset_text(fp) for fp in fps[:12]) + (", ..." if len(fps) > 12 else "")

    def _load_feature_net(self, given: str | Path | None):  # noqa: ANN202
        """``(folder, network, why none)``: the given folder (its hash must be the tables'), else the
        tables' model folder's feature_net/ when present and the same network."""
        if given is not None:
            return (*self._checked_feature_net(Path(given)), "")
        folder = Path(str(self.meta["pretrained"])) / "feature_net"
        if not folder.is_dir():
            return None, None, f"{folder} (the tables' model folder) does not exist here"
        if _file_hash(folder) != self.feature_net_hash:
            return None, None, f"{folder} is another feature network than the tables' ({self.feature_net_hash})"
        return folder, _load_net(folder), ""

    def _checked_feature_net(self, folder: Path):  # noqa: ANN202
        if not folder.is_dir():
            raise MemrlError(f"no feature network folder at {folder}")
        got = _file_hash(folder)
        if got != self.feature_net_hash:
            raise MemrlError(
                f"feature network {folder} (contents {got}) is not the one the lookup tables were made with ({self.feature_net_hash}); "
                "the environment's dataset descriptors would differ"
            )
        return folder, _load_net(folder)

    def _no_row(self, data: DatasetSplits, req: dict) -> str:
        """Which part of the request no table holds, narrowed facet by facet, and what they hold instead."""
        want = _facets(_strip(req))
        ctx = f"{req['method']} on {data.name}, seed {want['seed']}, lr {want['lr'][0]:g}"
        if req["method"] == "full" and req["mask"] in ("1" * len(self.units), "0" * len(self.units)):
            ctx += " (the reward's reference run)" if set(req["mask"]) == {"1"} else " (the pretrained model, measured beside every result)"
        head = f"the lookup tables ({self._where()}) cannot answer {ctx}"
        cands = self._rows
        for facet in FACETS:
            match = [r for r in cands if r.facets[facet] == want[facet]]
            if match:
                cands = match
                continue
            if facet == "model":
                return f"{head}: they were made for another model, feature network or evaluation version"
            if facet == "dataset":
                return f"{head}: no row for dataset {data.name} ({want['dataset']}); they hold {self._datasets_text()}"
            if facet == "method":
                held = sorted({r.facets["method"] for r in cands})
                return f"{head}: no row for method {want['method']} on this dataset; they hold methods {', '.join(held)}"
            if facet == "config":
                return f"{head}: no row for this evaluation config; {self._config_diff(want['config'], cands)}"
            if facet == "seed":
                held = sorted({r.facets["seed"] for r in cands}, key=str)
                return f"{head}: no row for seed {want['seed']}; they hold seeds {', '.join(map(str, held))}"
            if facet == "lr":
                held = sorted({r.facets["lr"][0] for r in cands}, key=float)
                given = "the method's default" if want["lr"][1] is None else "given explicitly"
                return f"{head}: no row for learning rate {want['lr'][0]:g} ({given}); they hold {', '.join(f'{x:g}' for x in held)}"
            held_masks = sorted({r.facets["mask"] for r in cands})
            shown = "; ".join(str(Mask.from_bits(b, self.units)) for b in held_masks[:8]) + ("; ..." if len(held_masks) > 8 else "")
            return f"{head}: no row for mask {Mask.from_bits(want['mask'], self.units)}; they hold {len(held_masks)} mask(s) for it: {shown}"
        return head  # pragma: no cover - a full match is found by the index

    @staticmethod
    def _config_diff(want: dict, cands: list[_Row]) -> str:
        """The fewest config differences to a stored row, named key by key."""
        best: list[str] | None = None
        for r in cands:
            have = r.facets["config"]
            diff = [
                f"{k} is {json.dumps(want.get(k))} here, {json.dumps(have.get(k))} in the tables"
                for k in sorted(set(want) | set(have))
                if want.get(k, "<absent>") != have.get(k, "<absent>")
            ]
            if best is None or len(diff) < len(best):
                best = diff
        assert best is not None
        return "; ".join(best[:6]) + ("; ..." if len(best) > 6 else "")


def _load_net(folder: Path):  # noqa: ANN202
    from memrl.models.feature_net import FeatureNet

    return FeatureNet.from_pretrained(folder)


def _check_agree(path_a: Path, a: dict, path_b: Path, b: dict) -> None:
    """All tables of one lookup are over the same units of the same model and feature network."""
    if list(a["units"]) != list(b["units"]):
        raise MemrlError(
            f"lookup tables disagree on the mask units: {path_a} has {len(a['units'])} units {list(a['units'])}, "
            f"{path_b} has {len(b['units'])} units {list(b['units'])}; every table must be over one model's units at one granularity"
        )
    for key, what in (("granularity", "granularity"), ("model", "model"), ("feature_net", "feature network"), ("image_size", "image size"), ("image_channels", "image channels")):
        if a[key] != b[key]:
            raise MemrlError(f"lookup tables disagree on the {what}: {path_a} has {a[key]!r}, {path_b} has {b[key]!r}")
