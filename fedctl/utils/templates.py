"""Shipped YAML templates: `templates/` in a checkout, `fedctl/templates/` inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

import fedctl
from fedctl.errors import FedctlError


def templates_dir() -> Path:
    pkg = Path(fedctl.__file__).parent
    for candidate in (pkg / "templates", pkg.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FedctlError("the shipped templates folder is missing", "reinstall fedctl (pip install fedctl)")


def list_templates() -> list[Path]:
    return sorted(templates_dir().glob("*.yaml"))


def resolve_template(config: str | Path) -> Path:
    """A path as given if it exists, else a shipped template by name (with or without .yaml)."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    shipped = templates_dir() / name
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in list_templates())
    raise FedctlError(f"config file not found: {config}", f"give a path, or a shipped template name: {names}")
