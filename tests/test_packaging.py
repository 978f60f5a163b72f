"""What `pip install` brings: ranges in the package, exact versions in constraints.txt, and an
inference install (`nailseg[onnx]`, `[serve]`) without the training packages."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
TRAINING_ONLY = {"albumentations", "matplotlib", "scipy", "torch", "tensorflow"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def closure(extra: str) -> set[str]:
    """The distributions an extra brings, following nailseg[...] self-references."""
    names = {_name(r) for r in PROJECT["dependencies"]}
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for req in PROJECT["optional-dependencies"][current]:
            if req.startswith("nailseg["):
                todo += [e for e in req[len("nailseg["):-1].split(",") if e not in seen]
            else:
                names.add(_name(req))
    return names


def test_the_package_declares_ranges_not_exact_pins():
    every = PROJECT["dependencies"] + [r for reqs in PROJECT["optional-dependencies"].values() for r in reqs]
    exact = [r for r in every if "==" in r]
    assert not exact, f"exact pins belong in constraints.txt: {exact}"


def test_constraints_pin_exactly_what_the_package_allows():
    lines = [x.strip() for x in (REPO / "constraints.txt").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", x) for x in lines), lines
    pinned = {_name(x): x.split("==")[1] for x in lines}
    assert pinned["torch"] == "2.14.1" and pinned["albumentations"] == "2.0.8"
    from packaging.requirements import Requirement

    every = PROJECT["dependencies"] + [r for reqs in PROJECT["optional-dependencies"].values() for r in reqs]
    for req in (Requirement(r) for r in every if not r.startswith("nailseg[")):
        name = req.name.lower()
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), f"{req} excludes the pinned {pinned[name]}"


def test_inference_installs_leave_the_training_packages_out():
    for extra in ("onnx", "serve"):
        assert not closure(extra) & TRAINING_ONLY, (extra, closure(extra) & TRAINING_ONLY)
    assert {"albumentations", "matplotlib", "pycocotools"} <= closure("torch") & closure("tf") & closure("mmdet")
