"""The shape every recipe command shares: ``pluralign NAME RECIPE.yaml [key.sub=value ...]``.

``train``, ``rm``, ``rl``, ``online`` and ``em`` each take one YAML recipe and any number of
overrides; :func:`add_recipe_command` adds such a sub-command, so the arguments and their help read
the same everywhere. It lives apart from :mod:`pluralign.cli` so that the packages registering a
command need not import the entry point (which may be running as ``__main__``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_recipe_command(sub: Any, name: str, help_text: str, run: Callable[[argparse.Namespace], int],
                       overrides_example: str, recipes: str | None = None) -> argparse.ArgumentParser:
    """Add ``NAME RECIPE [OVERRIDES ...]`` to the sub-parsers ``sub``; ``run(args)`` executes it.

    The recipe's help points at ``recipes/<recipes>`` (default ``NAME_*.yaml``; ``""`` for the
    folder itself) and the overrides' help gives ``overrides_example``.
    """
    p = sub.add_parser(name, help=help_text)
    p.add_argument("recipe", help=f"YAML recipe (see recipes/{f'{name}_*.yaml' if recipes is None else recipes})")
    p.add_argument("overrides", nargs="*", help=f"key.sub=value overrides, e.g. {overrides_example}")
    p.set_defaults(func=run)
    return p
