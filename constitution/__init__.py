"""Constitution files: the swappable principles that guide the judge.

A constitution is a YAML file (schema in `loader.py` and the README). Ship-in files:
`harmless.yaml` (default), `helpful.yaml`, `concise.yaml`. Load one by name or by path.
"""

from constitution.loader import (
    Constitution,
    ConstitutionError,
    Example,
    Principle,
    check_markers,
    load_constitution,
    shipped_constitutions,
)

__all__ = [
    "Constitution",
    "ConstitutionError",
    "Example",
    "Principle",
    "check_markers",
    "load_constitution",
    "shipped_constitutions",
]
