"""The library's boundaries: it stays ROS-free (the node is the only layer that knows about
ROS), and its packages import only the layers below them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / 'masqclip'

# Bottom to top; a part may import its own layer and the ones below, never one above.
LAYERS = (
    ('modeling', 'data', 'cpu_memory'),
    ('checkpoint',),
    ('inference',),
    ('export', 'evaluation', 'visualization', 'animation'),
    ('factory',),
    ('training', 'tools', 'cli'),
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import masqclip
for module in pkgutil.walk_packages(masqclip.__path__, 'masqclip.'):
    importlib.import_module(module.name)
ros = sorted(name for name in sys.modules
             if name.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'masqclip_ros')
             or name.split('.')[0].endswith('_msgs'))
print(len([m for m in sys.modules if m.startswith('masqclip.')]), ros)
"""


def test_no_masqclip_module_imports_ros():
    # A fresh interpreter, so nothing imported by other tests can hide an import.
    output = subprocess.run(
        [sys.executable, '-c', IMPORT_EVERYTHING], check=True, capture_output=True, text=True
    ).stdout.split(maxsplit=1)
    assert int(output[0]) > 10, 'the walk should have imported the whole library'
    assert output[1].strip() == '[]'


def _imported_parts(path: Path) -> set[str]:
    """The library parts (``masqclip.<part>``) a module imports, at any depth of its code."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ''] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        parts |= {name.split('.')[1] for name in names if name.startswith('masqclip.')}
    return parts


def test_no_library_part_imports_a_layer_above_it():
    upward = []
    for path in LIBRARY.rglob('*.py'):
        relative = path.relative_to(LIBRARY)
        if relative == Path('__init__.py'):
            continue  # the package's public names, gathered from the top
        part = relative.parts[0].removesuffix('.py')
        assert part in LAYER_OF, f'{relative}: add masqclip.{part} to LAYERS'
        upward += [
            f'{relative} imports masqclip.{other}'
            for other in sorted(_imported_parts(path))
            if LAYER_OF[other] > LAYER_OF[part]
        ]
    assert upward == []


def test_every_test_module_has_a_basename_of_its_own():
    # pytest imports test modules by basename (rootdir-relative imports are off): two files
    # of one name in test/ and test/ros/ make the whole run stop at collection.
    names = [path.name for path in LIBRARY.parent.joinpath('test').rglob('test_*.py')]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
