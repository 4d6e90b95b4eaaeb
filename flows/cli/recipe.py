"""``facefoundry recipe check``: validate a recipe without running anything."""

from __future__ import annotations

import argparse

from facefoundry.flows.cli._common import add_set_option, load_recipe

CHECK_DESCRIPTION = """\
Read a recipe YAML (or the defaults when none is given), apply the --set overrides,
validate every section strictly and print the resolved recipe: every field with its
value, defaults included. Writes nothing. An unknown or misspelled key is an error
that names the key and the nearest valid one."""


def cmd_recipe_check(args: argparse.Namespace) -> int:
    import yaml

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    recipe = commands.add_parser(
        "recipe",
        help="check recipes",
        description="Recipes: the YAML files `facefoundry run` builds a dataset from.",
    )
    actions = recipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a recipe and print it resolved",
        description=CHECK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "recipe", nargs="?", default=None, help="recipe YAML, e.g. recipes/demo.yaml"
    )
    add_set_option(check, "override a field, e.g. --set faces.embedder=dlib")
    check.set_defaults(func=cmd_recipe_check)
