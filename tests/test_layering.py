"""The package layout stays layered: every import points to a lower layer, never up or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "memrl"

#: Higher numbers may import lower ones. Packages of one rank are siblings: neither imports the other.
#: agents sits above search (``memrl replay --budget`` refines a policy's mask with a search); search
#: never imports agents (a trained policy, for ``--warm-start``, is loaded by memrl.envs.policy).
RANK = {
    "cli": 11, "interop": 10, "agents": 9, "search": 8, "reporting": 7, "envs": 7, "evaluation": 6, "training": 5,
    "data": 4, "metrics": 3, "peft_masking": 3, "models": 3, "utils": 2, "errors": 1, "__init__": 12, "__main__": 12,
}  # fmt: skip


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memrl."):
            out.append(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out += [a.name.split(".")[1] for a in node.names if a.name.startswith("memrl.")]
    return out


def test_every_import_points_down():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        own = _package(path)
        assert own in RANK, f"new package {own}: give it a rank here"
        for target in _imports(path):
            if target != own and RANK[target] >= RANK[own]:
                bad.append(f"{path.relative_to(ROOT.parent)} ({own}) imports memrl.{target}")
    assert not bad, "\n".join(bad)
