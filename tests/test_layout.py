"""The package's shape: lessons import instruments and infrastructure, never another lesson; no module
over 700 lines; the instruments (`mi_tutor.lab`) never import a lesson; hook names are spelled once.

Every module must appear in `LAYERS` below, so a new module is placed on purpose.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mi_tutor"

#: notebook -> the lesson modules it owns (a lesson may span two modules, which may import each other)
LESSONS = {
    "00": {"blackbox", "blackbox_attribution", "history"},
    "01": {"grokking", "fourier", "fourier_circuit"},
    "02": {"induction", "induction_lm"},
    "03": {"ioi_circuit", "ioi_evidence", "ioi_templates"},
    "04": {"successor", "successor_figures", "successor_sources", "successor_toy"},
    "05": {"ablation", "ablation_views", "ablation_evidence", "ablation_screen"},
    "06": {"gradients", "multitask", "attribution"},
    "07": {"superposition", "sae", "spd"},
    "08": {"representations"},
}
#: prompt sets shared by several lessons (03, 04, 05): data, not lessons
DATA = {"ioi", "ordinal"}
INFRA = {"__init__", "env", "models", "training", "plots", "widgets", "notebooks", "cli", "bench", "grade", "validate",
         "model_cache"}
LAYERS = {m: f"lesson {nb}" for nb, ms in LESSONS.items() for m in ms} | {m: "data" for m in DATA} | {m: "infra" for m in INFRA}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts[:-1])


def _imports(path: Path) -> set[str]:
    """The mi_tutor modules `path` imports (top-level names: `lab`, `ablation`, ...), relative or absolute."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.startswith("mi_tutor."):
                names = [node.module.split(".")[1]]
            elif node.module == "mi_tutor":
                names = [a.name for a in node.names]
            else:
                continue
            out |= set(names)
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mi_tutor.")}
    return out


def test_every_top_level_module_has_a_place():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top - set(LAYERS) == set(), "place the new module in LESSONS, DATA or INFRA of tests/test_layout.py"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_is_longer_than_700_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 700, f"{path.relative_to(PKG)} has {n} lines: split it so that a learner reads it in one sitting"


@pytest.mark.parametrize("name", sorted(m for m, layer in LAYERS.items() if layer.startswith("lesson")
                                        and (PKG / f"{m}.py").exists()))
def test_a_lesson_imports_no_other_lesson(name):
    own = LAYERS[name]
    others = {m for m in _imports(PKG / f"{name}.py") if LAYERS.get(m, "").startswith("lesson") and LAYERS[m] != own}
    assert not others, f"{name} ({own}) imports {others}: move what both need into mi_tutor.lab"


@pytest.mark.parametrize("path", sorted((PKG / "lab").glob("*.py")), ids=lambda p: p.name)
def test_the_instruments_import_no_lesson(path):
    bad = {m for m in _imports(path) if m not in {"lab", "validate", "hooks", "patching", "readout", "scores", "fast_llama",
                                                  "reference", "env"}}  # env: the platform layer, below everything
    assert not bad, f"lab/{path.name} imports {bad}: the instruments stand below every lesson"


def test_hook_names_are_spelled_only_in_lab_hooks():
    """Everything else asks `hook_name(layer, site)`; a typed "blocks.{l}.attn.hook_z" is a second spelling."""
    pattern = re.compile(r"""f?["']blocks\.\{?\w*\}?\.(attn\.)?hook_""")
    offenders = []
    for path in _modules():
        if path == PKG / "lab" / "hooks.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PKG)}:{i}")
    assert not offenders, f"hook names typed inline (use lab.hooks.hook_name): {offenders}"
