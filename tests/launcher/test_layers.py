"""The layering ARCHITECTURE.md states, read from the code: every import of ours (at module level or
inside a function) goes to the same layer or one below, and the ground floor imports nothing of ours
but itself. A new module must be placed in a layer here, or this test names it."""
import ast
from pathlib import Path

from common import REPO

LAYERS = [  # lowest first
    ("ground floor", {"launcher.errors", "launcher.spec", "launcher.dataspec", "launcher.manifest"}),
    ("shared services", {"launcher.models", "launcher.storage", "launcher.runlock", "launcher.tpu_plan"}),
    ("the work", {"dataprep", "trainers"}),
    ("the user's machine", {"launcher.backends", "launcher.sky_api", "launcher.state", "launcher.sync",
                            "launcher.teardown", "launcher.watch", "launcher.build", "launcher.estimate",
                            "launcher.hub"}),
    ("the command line", {"launcher.cli"}),
]


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/launcher/test_layers.py (and ARCHITECTURE.md)")
    return best[0]


def modules():
    for pkg in ("launcher", "dataprep", "trainers"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from launcher import state` imports the module launcher.state
                sub = f"{target}.{a.name}"
                is_module = (REPO / Path(*sub.split("."))).with_suffix(".py").exists() or (REPO / Path(*sub.split("."))).is_dir()
                yield node.lineno, sub if is_module else target


def ours(module: str) -> bool:
    return module.split(".")[0] in ("launcher", "dataprep", "trainers") and module != "launcher"


def test_no_import_runs_against_the_layers():
    wrong = []
    for name, path in modules():
        if name == "launcher":
            continue
        mine = layer_of(name)
        for line, target in imports(name, path):
            if ours(target) and layer_of(target) > mine:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {name} ({LAYERS[mine][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def test_the_ground_floor_imports_nothing_of_ours_but_itself():
    floor = LAYERS[0][1]
    for name, path in modules():
        if name in floor:
            for line, target in imports(name, path):
                assert not ours(target) or target in floor, f"{path.name}:{line} imports {target}"


def test_the_cli_imports_only_click_and_the_errors_at_load():
    tree = ast.parse((REPO / "launcher" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert names <= {"__future__", "sys", "time", "pathlib", "click", "launcher.errors"}, names
