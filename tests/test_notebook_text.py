"""What a learner reads in the saved notebooks: no figure shown twice, no pointer to this
project's internal files or the essays' internal numbering."""
from __future__ import annotations

import re

import nbformat
import pytest

from mi_tutor.notebooks import source_notebooks, student_path

SOURCES = source_notebooks()
#: names that exist only inside the project's own workspace, never for a learner
INTERNAL = re.compile(r"\bseeds? ?0\d\d\b|\bthe seed's\b|shared/|FACTS\.md|TL4\.md|DESIGN\.md|reviews/", re.I)


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_no_figure_is_shown_twice(src):
    """A cell that ends with a call returning a Figure shows it twice (the inline backend, then
    the Figure's repr): assign it (`fig = ...`) instead."""
    nb = nbformat.read(str(src), as_version=4)
    doubled = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
               and sum("image/png" in o.get("data", {}) for o in c.outputs) > 1
               and any(o.output_type == "execute_result" and "image/png" in o.get("data", {}) for o in c.outputs)]
    assert not doubled, f"{src.name}: cells {doubled} show their figure twice: write `fig = ...` on the last line"


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_text_speaks_of_the_field_not_of_internal_files(src):
    for path in (src, student_path(src)):
        nb = nbformat.read(str(path), as_version=4)
        hits = [(i, m.group(0)) for i, c in enumerate(nb.cells) for m in INTERNAL.finditer(c.source)]
        assert not hits, f"{path.name}: cells point at internal files or essay numbers: {hits}"
