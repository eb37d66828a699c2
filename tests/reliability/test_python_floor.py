"""setup.cfg's python_requires and the code agree: nothing newer than the floor runs at import or call time."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "mechdiff"
# Standard-library names added after Python 3.10, by module ("" = builtins).
NEWER_THAN_310 = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple",
               "Unpack", "Required", "NotRequired", "dataclass_transform", "get_overloads", "clear_overloads"},
    "datetime": {"UTC"},
    "enum": {"StrEnum", "verify", "ReprEnum", "EnumCheck"},
    "contextlib": {"chdir"},
    "asyncio": {"TaskGroup", "timeout", "Runner"},
    "": {"ExceptionGroup", "BaseExceptionGroup"},
}
NEW_MODULES = {"tomllib"}


def python_floor() -> tuple[int, int]:
    """(major, minor) of setup.cfg's ``python_requires = >=X.Y``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", cfg["options"]["python_requires"].strip())
    assert match, "python_requires must be a plain lower bound '>=X.Y'"
    return int(match[1]), int(match[2])


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imported there, never at run time."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def runtime_uses_newer_than_310(path: Path, root: Path = ROOT) -> list[str]:
    """Names from NEWER_THAN_310 / NEW_MODULES that ``path`` imports or reads at run time."""
    tree = ast.parse(path.read_text(), feature_version=(3, 10))  # also rejects 3.11+ syntax (except*)
    skip, aliases, found = _type_checking_lines(tree), {}, []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
                if alias.name in NEW_MODULES:
                    found.append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES:
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if a.name in NEWER_THAN_310.get(node.module, ())]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id, node.value.id)
            if node.attr in NEWER_THAN_310.get(module, ()):
                found.append(f"{module}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEWER_THAN_310[""]:
            found.append(node.id)
    return [f"{path.relative_to(root)}:{name}" for name in found]


def test_code_runs_on_the_python_that_setup_cfg_allows():
    """typing.Self / datetime.UTC at run time would break the 3.10 that python_requires admits."""
    assert python_floor() == (3, 10)
    uses = [use for path in sorted(SRC.rglob("*.py")) for use in runtime_uses_newer_than_310(path)]
    assert uses == []


def test_the_checker_sees_a_runtime_self_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import datetime as dt\nfrom typing import Self\nnow = dt.datetime.now(dt.UTC)\n")
    assert [u.split(":")[1] for u in runtime_uses_newer_than_310(bad, tmp_path)] == ["typing.Self", "datetime.UTC"]

