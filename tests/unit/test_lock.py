"""The lock (requirements/lock.txt) agrees with pyproject.toml, and the venv holds what it pins.

CI runs this on a clean clone after ``make install``: a dependency added to pyproject.toml without
``make lock``, a pin that no longer satisfies a requirement, a lock entry nothing asks for any
more, or an install that did not use the lock, all fail here with the command that fixes them.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
FIX = "run `make lock` and commit requirements/lock.txt"


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    specs = [
        *project["project"]["dependencies"],
        *extras["dev"],
        *extras["experiments"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(s) for s in specs]


def _lock() -> tuple[dict[str, Version], set[str]]:
    """Pins by canonical name, and the names the lock says pyproject.toml asks for directly."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = Version(pin.group(2))
        elif current is not None and "data-appraisal (pyproject.toml" in line:
            direct.add(current)
    return pins, direct


def test_every_requirement_is_pinned_at_a_version_it_allows() -> None:
    pins, _ = _lock()
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in the lock: {FIX}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {req.name}=={pins[name]}, which pyproject.toml's {req} refuses: {FIX}"
        )


def test_the_lock_holds_no_direct_requirement_that_pyproject_dropped() -> None:
    _, direct = _lock()
    wanted = {canonicalize_name(r.name) for r in _pyproject_requirements()}
    assert direct == wanted, (
        f"the lock was made from other requirements (only in the lock: {sorted(direct - wanted)}; "
        f"only in pyproject.toml: {sorted(wanted - direct)}): {FIX}"
    )


def test_the_installed_environment_is_the_lock() -> None:
    """`make install` installed exactly the pinned versions (torch: any build of its version)."""
    pins, _ = _lock()
    wrong = []
    for name, version in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} (not installed)")
            continue
        if installed.public != version.public:
            wrong.append(f"{name} {installed} (the lock: {version})")
    assert not wrong, (
        f"the environment differs from the lock: {wrong}; reinstall with `make install`"
    )
    crypten = re.search(r"^crypten==(\S+)", (ROOT / "requirements/crypten.txt").read_text(), re.M)
    assert crypten is not None and metadata.version("crypten") == crypten.group(1)
