"""The real ``ros2`` command line against a launched masqclip_node, the way a robotics engineer
drives it: ``ros2 launch`` with arguments, then ``lifecycle``, ``service call``, ``param set``,
``topic echo`` and ``interface show``, each a subprocess of the venv's ``ros2``.

Everything runs from a shell where the venv is not activated: its bin folder is off PATH and a
``python3`` that cannot run the node comes first, so the node starts only through the
interpreter its installed executable names. ROS_DOMAIN_ID is the inherited one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)
for _module in ('ros2cli', 'ros2launch', 'launch_ros.actions'):
    pytest.importorskip(
        _module,
        reason=f'{_module} not importable: the ros2 CLI and launch wheels (and '
        'composition_interfaces) come from ../shared/ros-wheels via scripts/setup_ros.sh',
    )

from ros_testing import Client, image_msg, stamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from masqclip_ros.conversions import array_to_image_msg  # noqa: E402

pytestmark = pytest.mark.ros

VENV_BIN = Path(sys.executable).parent
ROS2 = VENV_BIN / 'ros2'
NAMESPACE = '/robot1'
NODE = f'{NAMESPACE}/masqclip_node'
CAMERA = f'{NAMESPACE}/camera/color/image_raw'
H, W = 48, 64
DEPTH_M = 1.25
KITCHEN = ['cup', 'plate', 'table']

if not ROS2.is_file():
    pytest.skip(f'no {ROS2} (scripts/setup_ros.sh installs ros2cli)', allow_module_level=True)


def run_ros2(env: dict[str, str], *args: str, timeout: float = 30.0, retry: bool = True):
    """One ``ros2`` command (with ``retry``, re-run while it answers "Node not found":
    daemon-less discovery misses a node that is there now and then); its stdout, stderr and
    exit status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = subprocess.run(
                [str(ROS2), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
            )
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f'ros2 {" ".join(args)} still running after {timeout} s:\n'
                f'{error.stdout}{error.stderr}'
            ) from None
        if not retry or 'Node not found' not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def ok(env: dict[str, str], *args: str, expect: str, timeout: float = 30.0) -> str:
    """Run ``ros2 *args``; fail unless it exits 0 with ``expect`` in its stdout."""
    result = run_ros2(env, *args, timeout=timeout)
    assert result.returncode == 0 and expect in result.stdout, (
        f'ros2 {" ".join(args)} -> {result.returncode}, no {expect!r} in:\n'
        f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    )
    return result.stdout


def _default_sigint() -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored, and an ignored
    # signal stays ignored across exec: ros2 launch would then never see our Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launch:
    """``ros2 launch masqclip_ros segment.launch.py ARGS`` in a session of its own, its output in
    ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path, *arguments: str) -> None:
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, 'w')  # noqa: SIM115 - closed in stop()
        command = [str(ROS2), 'launch', 'masqclip_ros', 'segment.launch.py', *arguments]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def node_pid(self) -> int:
        found = re.search(r'\[masqclip_node-1\]: process started with pid \[(\d+)\]', self.log())
        assert found, f'launch never started the node:\n{self.log()[-3000:]}'
        return int(found.group(1))

    def check_alive(self) -> None:
        """Fail when the node died: launch itself goes on (and later exits 0) when it does."""
        log = self.log()
        if 'process has died' in log or self.process.poll() is not None:
            raise AssertionError(
                f'masqclip_node process has died (launch exit {self.process.poll()}):\n'
                f'{log[-4000:]}'
            )

    def wait_active(self, node: str, timeout: float = 60.0) -> None:
        """Poll ``ros2 lifecycle get`` until the node answers ``active`` (daemon-less discovery
        can miss a node that is there, so one call proves nothing)."""
        deadline = time.monotonic() + timeout
        answer = ''
        while True:
            self.check_alive()
            result = run_ros2(self.env, 'lifecycle', 'get', '--no-daemon', node, retry=False)
            answer = f'{result.stdout}{result.stderr}'.strip()
            if result.returncode == 0 and answer.startswith('active'):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f'{node} not active after {timeout} s (last answer {answer!r}):\n'
                    f'{self.log()[-4000:]}'
                )
            time.sleep(0.3)

    def stop(self, timeout: float = 20.0) -> int:
        """Ctrl-C as in a terminal, SIGKILL of the whole session after ``timeout``; the exit
        status (negative: killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode


class Camera:
    """A camera driver in the test process: colour image, registered depth (a plane at
    DEPTH_M) and camera_info at 5 Hz, in the node's namespace."""

    def __init__(self) -> None:
        self.client = Client('masqclip_cli_test_camera')
        node = self.client.node
        self.image = node.create_publisher(Image, CAMERA, 10)
        # The launch file leaves depth and camera_info relative: they land in the namespace.
        self.depth = node.create_publisher(Image, f'{NAMESPACE}/depth', 10)
        self.info = node.create_publisher(CameraInfo, f'{NAMESPACE}/camera_info', 10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='camera', daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sec = 0
        plane = np.full((H, W), DEPTH_M, np.float32)
        while not self._stop.wait(0.2):
            sec += 1
            info = CameraInfo(header=stamped(sec), height=H, width=W)
            info.k = [50.0, 0.0, W / 2 - 0.5, 0.0, 50.0, H / 2 - 0.5, 0.0, 0.0, 1.0]
            self.info.publish(info)
            self.depth.publish(array_to_image_msg(plane, '32FC1', stamped(sec)))
            self.image.publish(image_msg(sec, seed=sec % 7))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


@pytest.fixture(scope='module')
def cli_env(tmp_path_factory):
    """The environment of every ros2 command: not activated, logs in a temporary folder."""
    folder = tmp_path_factory.mktemp('ros2_cli')
    shims = folder / 'bin'
    shims.mkdir()
    for name in ('python3', 'python'):
        shim = shims / name
        shim.write_text('#!/bin/sh\necho "wrong interpreter: $0 (from PATH)" >&2\nexit 97\n')
        shim.chmod(0o755)
    venv_bin = VENV_BIN.resolve()
    path = [p for p in os.environ.get('PATH', '').split(os.pathsep)
            if p and Path(p).resolve() != venv_bin]  # fmt: skip
    prefix = str(VENV_BIN.parent)
    ament = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(shims), *path]),
        AMENT_PREFIX_PATH=os.pathsep.join([prefix, *(p for p in ament if p != prefix)]),
        ROS_LOG_DIR=str(folder / 'log'),
        ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
        # The node's output reaches the launch log line by line.
        RCUTILS_LOGGING_BUFFERED_STREAM='0',
        PYTHONUNBUFFERED='1',
    )
    env.pop('VIRTUAL_ENV', None)
    env.pop('PYTHONPATH', None)
    env['ROS_DOMAIN_ID'] = os.environ.get('ROS_DOMAIN_ID', '42')
    yield env
    # A verb without --no-daemon would have left a daemon on this domain.
    run_ros2(env, 'daemon', 'stop', timeout=30)


@pytest.fixture(scope='module')
def vocabularies(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('vocabularies')
    files = {'kitchen': folder / 'kitchen.yaml', 'fruit': folder / 'fruit.yaml'}
    files['kitchen'].write_text(f'classes: [{", ".join(KITCHEN)}]\n')
    files['fruit'].write_text('classes:\n  - name: apple\n    synonyms: [red apple]\n  - banana\n')
    return files


@pytest.fixture(scope='module')
def launched(cli_env, vocabularies, tmp_path_factory):
    """The node, launched once for the whole file with every kind of argument."""
    log = tmp_path_factory.mktemp('launch') / 'launch.log'
    launch = Launch(cli_env, log, f'namespace:={NAMESPACE.lstrip("/")}', f'image:={CAMERA}',
                    f'vocabulary:={vocabularies["kitchen"]}', 'use_depth:=true',
                    'rviz:=true')  # fmt: skip
    try:
        launch.wait_active(NODE)
        yield launch
    finally:
        launch.stop()


@pytest.fixture(scope='module')
def camera(launched):
    camera = Camera()
    yield camera
    camera.close()


def echo_instances(env: dict[str, str], launch: Launch, condition: str = '') -> dict:
    """The first ``~/instances`` message (matching the Python ``condition`` on ``m``) that
    ``ros2 topic echo --once`` prints, as a dict."""
    args = ['topic', 'echo', '--once', '--no-daemon', '--timeout', '30']
    if condition:
        args += ['--filter', condition]
    # The type given: daemon-less, echo can miss the publisher when it looks the type up.
    out = ok(env, *args, f'{NODE}/instances', 'masqclip_ros/msg/InstanceSegmentation',
             expect='instances:', timeout=45)  # fmt: skip
    launch.check_alive()
    return yaml.safe_load(out.split('\n---')[0])


def vocabulary_names(env: dict[str, str]) -> tuple[list[str], int]:
    out = ok(env, 'service', 'call', f'{NODE}/get_vocabulary',
             'masqclip_ros/srv/GetVocabulary', expect='GetVocabulary_Response')  # fmt: skip
    version = re.search(r'\bversion=(\d+)\)\)\s*$', out.strip())
    assert version, out
    return re.findall(r"VocabularyEntry\(name='([^']*)'", out), int(version.group(1))


def test_a_node_that_dies_at_start_is_a_failure_though_launch_exits_0(cli_env, tmp_path):
    # First in the file: the camera's rclpy threads do not exist yet when preexec_fn runs.
    missing = tmp_path / 'missing.yaml'
    launch = Launch(cli_env, tmp_path / 'launch.log', 'namespace:=robot_dead',
                    f'vocabulary:={missing}')  # fmt: skip
    try:
        # The node refuses to configure and exits 1; launch treats its last process ending as
        # the end of the launch: success. (No CLI call here: on a loaded machine a daemon-less
        # `ros2 lifecycle get` alone can take longer than the node takes to die.)
        assert launch.process.wait(timeout=120) == 0
        assert 'exit code 1' in launch.log() and str(missing) in launch.log()
    finally:
        launch.stop()


def test_launch_with_arguments_starts_the_node_active_on_the_venv_python(cli_env, launched):
    log = launched.log()
    assert 'wrong interpreter' not in log, log
    pid = launched.node_pid()
    # Started through its shebang: the interpreter the package was built for, not PATH's.
    assert Path(f'/proc/{pid}/exe').resolve() == Path(sys.executable).resolve()
    assert ok(cli_env, 'lifecycle', 'get', '--no-daemon', NODE, expect='active').startswith(
        'active [3]'
    )
    # The launch arguments reached the node's parameters (and, below, its remappings).
    dumped = yaml.safe_load(ok(cli_env, 'param', 'dump', '--no-daemon', NODE, expect=NODE))
    parameters = dumped[NODE]['ros__parameters']
    assert parameters['depth']['enabled'] is True
    assert parameters['vocabulary_file'].endswith('kitchen.yaml')
    assert f'active: segmenting {CAMERA}' in log, log
    if shutil.which('rviz2') is None:  # rviz:=true says in one line why there is no viewer
        assert log.count('rviz2 is not installed here') == 1, log


def test_images_in_give_instances_out_with_3d(cli_env, launched, camera):
    message = echo_instances(cli_env, launched)
    assert message['header']['frame_id'] == 'camera_optical'
    assert (message['height'], message['width']) == (H, W)
    assert message['instances'], 'the demo model proposes masks on any scene'
    assert {inst['label'] for inst in message['instances']} <= set(KITCHEN)
    with_3d = [inst for inst in message['instances'] if inst['has_3d']]
    assert with_3d, 'use_depth:=true and a depth plane give 3D'
    assert all(abs(inst['centroid']['z'] - DEPTH_M) < 1e-4 for inst in with_3d)


def test_vocabulary_and_find_services(cli_env, launched, camera):
    names, version = vocabulary_names(cli_env)
    assert names == KITCHEN and version >= 1
    out = ok(cli_env, 'service', 'call', f'{NODE}/set_vocabulary',
             'masqclip_ros/srv/SetVocabulary',
             '{entries: [{name: mug}, {name: bowl, synonyms: [dish, basin]}], mode: 0}',
             expect='SetVocabulary_Response')  # fmt: skip
    assert 'success=True' in out and f'version={version + 1},' in out, out
    # The demo model was trained on colour x pattern words only: the caller is told.
    assert "does not know 'mug', 'bowl', 'dish', 'basin'" in out, out
    assert vocabulary_names(cli_env) == (['mug', 'bowl'], version + 1)

    message = echo_instances(cli_env, launched, f'm.vocabulary_version == {version + 1}')
    assert {inst['label'] for inst in message['instances']} <= {'mug', 'bowl'}

    out = ok(cli_env, 'service', 'call', f'{NODE}/find', 'masqclip_ros/srv/FindObjects',
             "{query: 'red mug', negative_queries: [blue mug], max_results: 3, "
             'return_masks: false}', expect='FindObjects_Response')  # fmt: skip
    assert 'status=0,' in out and "match(es) for 'red mug'" in out, out
    assert 1 <= out.count("label='red mug'") <= 3, out
    assert "does not know 'mug':" in out, out
    assert 'vocabulary from set_vocabulary: this model' in launched.log()

    # docs/teach.md's call: the latest frame's proposal 0 taught; then REMOVEd, as a REPLACE
    # (the later tests') keeps a taught class.
    out = ok(cli_env, 'service', 'call', f'{NODE}/teach', 'masqclip_ros/srv/TeachClass',
             "{name: 'my toy', proposal_index: 0}", expect='TeachClass_Response')  # fmt: skip
    assert 'success=True' in out and 'class_id=2' in out and 'example_count=1' in out, out
    listed = ok(cli_env, 'service', 'call', f'{NODE}/get_vocabulary',
                'masqclip_ros/srv/GetVocabulary', expect='GetVocabulary_Response')  # fmt: skip
    assert "name='my toy', synonyms=[], is_thing=True, exemplar_count=1)" in listed, listed
    ok(cli_env, 'service', 'call', f'{NODE}/set_vocabulary', 'masqclip_ros/srv/SetVocabulary',
       "{entries: [{name: 'my toy'}], mode: 2}", expect='success=True')  # fmt: skip
    assert vocabulary_names(cli_env) == (['mug', 'bowl'], version + 3)


def test_param_set_of_live_parameters(cli_env, launched, vocabularies, camera):
    set_, get = ('param', 'set', '--no-daemon', NODE), ('param', 'get', '--no-daemon', NODE)
    ok(cli_env, *set_, 'overlay.alpha', '0.25', expect='Set parameter successful')
    ok(cli_env, *set_, 'vocabulary_file', str(vocabularies['fruit']),
       expect='Set parameter successful')  # fmt: skip
    names, version = vocabulary_names(cli_env)
    assert names == ['apple', 'banana']
    message = echo_instances(cli_env, launched, f'm.vocabulary_version == {version}')
    assert {inst['label'] for inst in message['instances']} <= {'apple', 'banana'}

    # Out of range, and not live while configured: refused with the reason, values kept.
    refused = run_ros2(cli_env, *set_, 'overlay.alpha', '1.5')
    assert 'Setting parameter failed' in refused.stderr, refused
    refused = run_ros2(cli_env, *set_, 'score_threshold', '0.5')
    assert 'Setting parameter failed: score_threshold takes effect on configure' in (
        refused.stderr
    ), refused
    assert 'Double value is: 0.25' in ok(cli_env, *get, 'overlay.alpha', expect='Double')


def test_lifecycle_set_through_cleanup_and_back(cli_env, launched, camera):
    lifecycle = ('lifecycle', 'set', '--no-daemon', NODE)

    def state() -> str:
        return ok(cli_env, 'lifecycle', 'get', '--no-daemon', NODE, expect='[').strip()

    ok(cli_env, *lifecycle, 'deactivate', expect='Transitioning successful')
    ok(cli_env, *lifecycle, 'cleanup', expect='Transitioning successful')
    assert state() == 'unconfigured [1]'
    # A configure-time parameter, set while unconfigured, is used by the next configure.
    ok(cli_env, 'param', 'set', '--no-daemon', NODE, 'max_instances', '2',
       expect='Set parameter successful')  # fmt: skip
    ok(cli_env, *lifecycle, 'configure', expect='Transitioning successful')
    ok(cli_env, *lifecycle, 'activate', expect='Transitioning successful')
    message = echo_instances(cli_env, launched)
    assert 1 <= len(message['instances']) <= 2, message['instances']


def test_interface_show_puts_the_response_comment_below_the_separator(cli_env):
    out = ok(cli_env, 'interface', 'show', 'masqclip_ros/srv/GetVocabulary', expect='---')
    lines = out.splitlines()
    separator = lines.index('---')
    assert separator == 0, 'GetVocabulary has an empty request'
    assert lines[separator + 1] == '# The vocabulary in force and its version.'
    assert lines[separator + 2] == 'Vocabulary vocabulary'


def test_sigint_stops_launch_and_node_cleanly(launched):
    # Last: stops the launch the other tests share.
    pid = launched.node_pid()
    launched.check_alive()
    code = launched.stop()
    log = launched.log()
    assert code == 0, f'ros2 launch exited {code} after SIGINT:\n{log[-3000:]}'
    assert re.search(r'\[masqclip_node-1\]: process has finished cleanly', log), log[-3000:]
    assert 'process has died' not in log, log[-3000:]
    deadline = time.monotonic() + 10
    while Path(f'/proc/{pid}').exists() and 'Z' not in _state_of(pid):
        assert time.monotonic() < deadline, f'node process {pid} still running after launch'
        time.sleep(0.1)


def _state_of(pid: int) -> str:
    """The process state letter from /proc (Z: a zombie, dead), '' when it is gone."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return ''
