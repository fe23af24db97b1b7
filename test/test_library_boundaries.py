"""The library stays ROS-free: the node is the only layer that knows about ROS."""

from __future__ import annotations

import subprocess
import sys

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
