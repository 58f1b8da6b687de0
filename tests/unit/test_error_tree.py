"""Every exception class defined in libs/ and services/ derives from MetergateError (errors.py's tree)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Deliberate exceptions outside the tree, each documented in metergate/errors.py's docstring.
OUTSIDE_THE_TREE = {("libs/metergate/wire/fastwire.py", "_NotFast")}

TREE_ROOTS = {"MetergateError"}


def _exception_classes() -> dict[tuple[str, str], list[str]]:
    """(file, class) -> base names, for every class in libs/ and services/ whose bases look like errors."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted([*ROOT.glob("libs/**/*.py"), *ROOT.glob("services/**/*.py")]):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
                found[(str(path.relative_to(ROOT)), node.name)] = bases
    return found


def _is_exception(name: str, classes_by_name: dict[str, list[str]], seen: set[str]) -> bool:
    if name in {"Exception", "BaseException"} or name.endswith(("Error", "Exception", "Fault")):
        return True
    if name in seen or name not in classes_by_name:
        return False
    seen.add(name)
    return any(_is_exception(base, classes_by_name, seen) for base in classes_by_name[name])


def _reaches_root(name: str, classes_by_name: dict[str, list[str]], seen: set[str]) -> bool:
    if name in TREE_ROOTS:
        return True
    if name in seen or name not in classes_by_name:
        return False
    seen.add(name)
    return any(_reaches_root(base, classes_by_name, seen) for base in classes_by_name[name])


def test_every_exception_class_in_libs_and_services_derives_from_metergate_error() -> None:
    classes = _exception_classes()
    by_name = {name: bases for (_, name), bases in classes.items()}
    exceptions = {
        key for key, bases in classes.items() if any(_is_exception(b, by_name, set()) for b in bases)
    }
    assert ("libs/metergate/db/rating_store.py", "StaleAssignment") in exceptions  # the walk sees them
    outside = sorted(
        key for key in exceptions if key not in OUTSIDE_THE_TREE and not _reaches_root(key[1], by_name, set())
    )
    assert outside == [], f"exception classes outside MetergateError's tree: {outside}"


def test_the_named_errors_are_in_the_tree_by_runtime_check() -> None:
    from metergate.db.rating_store import IntegrityFault, StaleAssignment
    from metergate.domain.ledger import GrantError
    from metergate.domain.pricing import PricingError
    from metergate.errors import ConfigurationError, InvalidInput, MetergateError, SubscriptionError

    for bad_input in (GrantError, PricingError, SubscriptionError):
        assert issubclass(bad_input, InvalidInput)
    for ours in (StaleAssignment, IntegrityFault, ConfigurationError):
        assert issubclass(ours, MetergateError) and not issubclass(ours, InvalidInput)
