"""The node under config/fastdds_loopback.xml binds loopback sockets only and still serves."""

import contextlib
import ipaddress
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from masqclip_ros.msg import InstanceSegmentation  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_testing import ROOT, NodeProcess, image_msg, serving  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(sys.platform != 'linux', reason='reads sockets from /proc'),
]

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

LOOPBACK_PROFILE = {
    'FASTDDS_DEFAULT_PROFILES_FILE': str(ROOT / 'config' / 'fastdds_loopback.xml'),
    # With LOCALHOST, rmw_fastrtps adds a UDPv4 transport on every interface to the profile's.
    'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SYSTEM_DEFAULT',
}


def socket_inodes(pid: int) -> set[str]:
    """The inode of every socket the process holds open."""
    inodes = set()
    for fd in Path(f'/proc/{pid}/fd').iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            target = os.readlink(fd)
            if target.startswith('socket:['):
                inodes.add(target[len('socket:[') : -1])
    return inodes


def kernel_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/{udp,tcp}[6] print it: 32-bit words in host (little) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b''.join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def bound_sockets(
    pid: int,
) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(protocol, local address, port) of every UDP and TCP socket of the process."""
    inodes = socket_inodes(pid)
    found = []
    for protocol in ('udp', 'udp6', 'tcp', 'tcp6'):
        table = Path(f'/proc/{pid}/net/{protocol}').read_text().splitlines()[1:]
        for row in table:
            columns = row.split()
            if columns[9] in inodes:
                address, port = columns[1].split(':')
                found.append((protocol, kernel_address(address), int(port, 16)))
    return found


def beyond_loopback(pid: int) -> list:
    return [entry for entry in bound_sockets(pid) if not entry[1].is_loopback]


@contextlib.contextmanager
def node_under(tmp_path, monkeypatch, namespace: str, environment: dict[str, str]):
    """The node (under ``namespace``, with ``environment`` on top of the tests'), active, and a
    client in the tests' own environment; yields (process, client)."""
    with monkeypatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        process = NodeProcess(tmp_path / 'node.log', {}, name='masqclip_net', namespace=namespace)
    with serving(process, namespace) as running:
        yield running


def test_the_loopback_profile_binds_loopback_only_and_the_node_still_serves(
    tmp_path, monkeypatch
) -> None:
    with node_under(tmp_path, monkeypatch, '/net', LOOPBACK_PROFILE) as (process, client):
        camera = client.node.create_publisher(Image, '/net/image', QOS)
        outputs = []
        client.node.create_subscription(
            InstanceSegmentation, '/net/masqclip_net/instances', outputs.append, QOS
        )
        sent = [0.0]

        def answered() -> bool:
            if time.monotonic() - sent[0] > 0.5:
                sent[0] = time.monotonic()
                camera.publish(image_msg(5))
            return bool(outputs)

        client.spin_until(answered, 30, f'an output on ~/instances\n{process.log()[-2000:]}')
        assert outputs[0].header.stamp.sec == 5
        # Checked after discovery and traffic, once every send and receive socket exists.
        sockets = bound_sockets(process.process.pid)
        assert sockets, 'the node holds no UDP socket: is the profile loaded?'
        assert beyond_loopback(process.process.pid) == []


def test_the_default_profile_binds_beyond_loopback(tmp_path, monkeypatch) -> None:
    # The contrary, under the tests' usual environment (fastdds_local.xml, LOCALHOST range):
    # rmw_fastrtps's own UDPv4 transport always opens a send socket on 0.0.0.0.
    with node_under(tmp_path, monkeypatch, '/net_default', {}) as (process, _):
        outside = beyond_loopback(process.process.pid)
        assert any(address == ipaddress.ip_address('0.0.0.0') for _, address, _ in outside), (
            bound_sockets(process.process.pid)
        )
