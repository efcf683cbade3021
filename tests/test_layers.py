"""The layering: nothing imports upward (README, "Layout").

    core -> storage -> features -> loading -> model -> analysis -> training | inference -> applications

A module may import from its own layer or any below; training and inference are peers and import
neither each other. Every import in product code is read with `ast` (module level and inside
functions alike), so a lazy import counts as much as one at the top.
"""
import ast
import os

from helpers import ROOT

LAYERS = {"core": 0, "storage": 1, "features": 2, "loading": 3, "model": 4, "analysis": 5, "training": 6,
          "inference": 6, "apps": 9}
APPS = {"train", "predict", "predict_collection", "preprocess", "bench", "tools"}


def layer_of(module: str) -> tuple[str, int] | None:
    top = module.split(".")[0]
    if top in APPS:
        return "apps", LAYERS["apps"]
    return (top, LAYERS[top]) if top in LAYERS else None


def imports(path: str) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def product_modules() -> dict[str, str]:
    mods = {}
    for package in LAYERS:
        folder = os.path.join(ROOT, package)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                mods[f"{package}.{name[:-3]}"] = os.path.join(folder, name)
    return mods


def test_no_module_imports_a_higher_layer():
    mods = product_modules()
    assert {m.split(".")[0] for m in mods} == {"core", "storage", "features", "loading", "model", "analysis",
                                                 "training", "inference"}
    bad = []
    for mod, path in mods.items():
        own_name, own = layer_of(mod)
        for imported in imports(path):
            target = layer_of(imported)
            if target is None:
                continue  # the standard library and third-party packages
            name, level = target
            if level > own or (level == own and name != own_name):
                bad.append(f"{mod} ({own_name}) imports {imported} ({name})")
    assert not bad, "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test above can fail: a planted lazy upward import is found."""
    path = tmp_path / "planted.py"
    path.write_text("def f():\n    from training.amp import Amp\n    return Amp\n")
    assert "training.amp" in imports(str(path))
    assert layer_of("training.amp")[1] > layer_of("storage.cache")[1]
