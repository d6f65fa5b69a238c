"""The direction of the code, read from the imports themselves (ast), so a wrong import fails the suite.

Layers, lowest first: ``paper``/``orient`` (nothing of ours) <- ``errors``, ``geometry``, ``io`` <-
``models`` <- ``stages`` <- ``pipeline`` <- ``serve`` (the web app) <- ``commands``. Training
(``train/``) and data making (``data/``) sit beside inference: nothing on the inference side imports them.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "ecgtrace"

#: module prefix (relative to the package) -> packages of ours it must never import
INFERENCE_FORBIDDEN = ("ecgtrace.train", "ecgtrace.commands", "ecgtrace.data", "ecgtrace.cli", "ecgtrace.config")
RULES: dict[str, tuple[str, ...]] = {
    "geometry": INFERENCE_FORBIDDEN + ("ecgtrace.io", "ecgtrace.models", "ecgtrace.stages", "ecgtrace.pipeline"),
    "io": INFERENCE_FORBIDDEN + ("ecgtrace.models", "ecgtrace.stages", "ecgtrace.pipeline"),
    "models": INFERENCE_FORBIDDEN + ("ecgtrace.stages", "ecgtrace.pipeline"),
    "stages": INFERENCE_FORBIDDEN + ("ecgtrace.pipeline",),
    "pipeline": INFERENCE_FORBIDDEN,
    "serve": INFERENCE_FORBIDDEN,  # the web app runs the pipeline; the command line wraps it, not the reverse
}
#: modules that import nothing of ours at all
LEAVES = ("paper", "orient", "errors")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, wherever it stands (top level, function, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from ecgtrace import train` names a package too
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "ecgtrace"]
    return out


def layer_of(path: Path, pkg: Path) -> str:
    """The rule key of a source file: its top-level module or subpackage name."""
    return path.relative_to(pkg).parts[0].removesuffix(".py")


def forbidden_imports(pkg: Path = PKG) -> list[str]:
    """Every import that goes against the direction, as ``file:line imports module``."""
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        layer = layer_of(path, pkg)
        for line, mod in imported_modules(path):
            ours = mod == "ecgtrace" or mod.startswith("ecgtrace.")
            if layer in LEAVES and ours:
                bad.append(f"{path.relative_to(pkg)}:{line} imports {mod} (a leaf module imports nothing of ours)")
            for banned in RULES.get(layer, ()):
                if mod == banned or mod.startswith(banned + "."):
                    bad.append(f"{path.relative_to(pkg)}:{line} imports {mod}")
    return bad


def test_inference_never_imports_training_and_leaves_import_nothing():
    assert forbidden_imports() == []


def test_the_check_catches_a_training_import_in_a_stage(tmp_path):
    """The same check on a copy of the package with one bad line added to a stage module."""
    pkg = tmp_path / "ecgtrace"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    stage = pkg / "stages" / "stage2.py"
    stage.write_text(stage.read_text() + "\n\ndef _late():\n    from ecgtrace.train.checkpoint import save_checkpoint\n")
    (pkg / "paper.py").write_text((pkg / "paper.py").read_text() + "\nfrom ecgtrace import io\n")
    before = len(forbidden_imports())  # 0 when the suite is green; the copy adds three
    bad = forbidden_imports(pkg)
    assert any(b.startswith("stages/stage2.py:") and "ecgtrace.train.checkpoint" in b for b in bad), bad
    assert any(b.startswith("paper.py:") and "leaf" in b for b in bad), bad
    assert len(bad) == before + 3  # `from ecgtrace import io` names ecgtrace and ecgtrace.io: both reported
