"""Where the runbook finds its own files: in a checkout, or in an installed wheel (no checkout around)."""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

DISTRIBUTION = "convex-asset-runbook"
_PARENT = Path(__file__).resolve().parent.parent

#: The checkout the helpers run from (an editable install, `make setup`), or None when they run from a wheel.
CHECKOUT_ROOT: Path | None = _PARENT if (_PARENT / "pyproject.toml").is_file() and (_PARENT / "notebooks").is_dir() else None

#: The step notebooks: a checkout's notebooks/ (the one copy developers edit), else the copies the wheel ships
#: inside the package (setup.py puts them there at build time).
NOTEBOOKS_DIR: Path = CHECKOUT_ROOT / "notebooks" if CHECKOUT_ROOT else Path(str(resources.files(__package__) / "notebooks"))


def installed_version() -> str:
    """The runbook's version as installed: what identifies it when there is no git checkout to ask."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
