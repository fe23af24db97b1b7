"""Shared set-up of the ROS tests: loopback-only DDS, a node process, a client node."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The same environment as scripts/test.sh, for a plain `pytest test/ros`: discovery must stay
# on loopback, on a domain of the tests' own.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', '42')
if (ROOT / 'config' / 'fastdds_local.xml').is_file():
    os.environ.setdefault(
        'FASTDDS_DEFAULT_PROFILES_FILE', str(ROOT / 'config' / 'fastdds_local.xml')
    )
