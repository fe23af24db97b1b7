"""Training recipes: YAML files of nested settings, changed from the command line by
``dotted.key=value`` overrides.

An override must name a key the recipe has (a typo is an error listing the close matches)
and its value is parsed as YAML, then checked against the type of the recipe's value, so
``train.lr=1e-4`` is a float, ``train.steps=2`` an int and ``data.root=/data/coco`` a string.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).resolve().parent.parent / 'recipes'


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message says what to fix."""


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``masqclip/recipes``."""
    return sorted(path.stem for path in RECIPE_DIR.glob('*.yaml'))


def load_recipe(name_or_path: str | Path) -> dict:
    """Read a recipe by its name (``masqclip/recipes/<name>.yaml``) or from a YAML file.

    :param name_or_path: e.g. ``'stage1'`` or ``'my_recipe.yaml'``.
    :return: the nested settings.
    """
    text = str(name_or_path)
    path = Path(text) if text.endswith(('.yaml', '.yml')) else RECIPE_DIR / f'{text}.yaml'
    if not path.is_file():
        raise RecipeError(
            f'recipe {text!r} not found: give a YAML file or one of {", ".join(list_recipes())}'
        )
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f'recipe {path} is not valid YAML: {error}') from error
    if not isinstance(recipe, dict):
        raise RecipeError(f'recipe {path} must hold a mapping of settings')
    return recipe


def flatten(recipe: Mapping[str, Any], prefix: str = '') -> Iterator[tuple[str, Any]]:
    """Every leaf setting as (dotted key, value); a mapping value is descended into."""
    for key, value in recipe.items():
        dotted = f'{prefix}{key}'
        if isinstance(value, Mapping) and value:
            yield from flatten(value, dotted + '.')
        else:
            yield dotted, value


def _typed(key: str, text: str, current: Any) -> Any:
    """Parse an override's text as the type of the recipe's current value."""
    if isinstance(current, str):
        return text  # never YAML-parsed: 'no', '1e-4' or '007' stay the strings typed
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise RecipeError(f'{key}={text}: not a valid value ({error})') from error
    if current is None:
        return value
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads '1e-4' (no dot) as a string; Python's float() does not.
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    example = {
        bool: 'true or false',
        int: 'an integer',
        float: 'a number',
        list: 'a list like [1, 2]',
        dict: 'a mapping like {a: 1}',
    }
    raise RecipeError(
        f'{key}={text}: expected {example.get(expected, expected.__name__)}, '
        f'as the recipe value {current!r}'
    )


def apply_overrides(recipe: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """Return a copy of ``recipe`` with ``key=value`` overrides applied.

    :param recipe: nested settings.
    :param overrides: e.g. ``['train.steps=2', 'data.root=/data/synth']``.
    :raises RecipeError: a malformed override, an unknown key (with close matches) or a value
        of the wrong type.
    """
    result = copy.deepcopy(dict(recipe))
    known = dict(flatten(result))
    for override in overrides:
        key, sep, text = override.partition('=')
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f'override {override!r} is not key=value (e.g. train.steps=100)')
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            leaf = key.rsplit('.', 1)[-1]
            close += [k for k in known if k.rsplit('.', 1)[-1] == leaf and k not in close]
            hint = f'; did you mean {" or ".join(close)}?' if close else ''
            raise RecipeError(
                f'unknown setting {key!r}{hint} (the recipe has '
                f'{len(known)} settings; see its YAML file)'
            )
        value = _typed(key, text, known[key])
        node = result
        *parents, leaf = key.split('.')
        for part in parents:
            node = node[part]
        node[leaf] = value
        known[key] = value
    return result


def save_recipe(recipe: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved recipe as YAML (readable back by ``load_recipe``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(recipe), sort_keys=False))


def require(recipe: Mapping[str, Any], *sections: str) -> None:
    """Check that the recipe has the top-level sections a trainer reads.

    :raises RecipeError: naming the missing sections.
    """
    missing = [s for s in sections if not isinstance(recipe.get(s), Mapping)]
    if missing:
        raise RecipeError(
            f'the recipe lacks the sections {missing}; start from one of '
            f'{", ".join(list_recipes())}'
        )
