"""The launch file and parameters file against the package: names, executable, parameters."""

import ast
import os
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.msg', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from masqclip_ros.settings import PARAMETERS  # noqa: E402

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / 'launch' / 'segment.launch.py'
ARGUMENTS = {
    'image',
    'params_file',
    'vocabulary',
    'namespace',
    'use_depth',
    'depth',
    'camera_info',
    'rviz',
}


def flatten(tree: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def test_parameters_file_sets_exactly_the_declared_parameters_with_their_defaults() -> None:
    document = yaml.safe_load((ROOT / 'config' / 'segment.yaml').read_text())
    values = flatten(document['/**']['ros__parameters'])
    declared = {spec.name: spec for spec in PARAMETERS}
    assert set(values) == set(declared)
    for name, value in values.items():
        if name != 'vocabulary':  # the file ships an example vocabulary
            assert value == declared[name].default, name


def keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def test_launch_file_names_the_installed_executable_and_its_arguments() -> None:
    tree = ast.parse(LAUNCH.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, 'id')]
    declared = {c.args[0].value for c in calls if c.func.id == 'DeclareLaunchArgument'}
    assert declared == ARGUMENTS
    node = next(c for c in calls if c.func.id == 'Node')
    constants = {
        n.targets[0].id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
    }
    package = keyword(node, 'package')
    package = constants[package.id] if isinstance(package, ast.Name) else package.value
    assert package == 'masqclip_ros'
    assert ast.literal_eval(keyword(node, 'executable')) == 'masqclip_node'
    assert ast.literal_eval(keyword(node, 'name')) == 'masqclip_node'
    overrides = {k.value for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
    assert overrides <= {spec.name for spec in PARAMETERS}
    prefix = Path(os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)[0] or '/nonexistent')
    executable = prefix / 'lib' / 'masqclip_ros' / 'masqclip_node'
    if not executable.exists():
        pytest.skip(f'package not installed under {prefix} (run scripts/setup_ros.sh)')
    assert os.access(executable, os.X_OK)
    share = prefix / 'share' / 'masqclip_ros'
    assert (share / 'launch' / 'segment.launch.py').is_file()
    assert (share / 'config' / 'segment.yaml').is_file()
    assert (share / 'config' / 'vocabularies' / 'tabletop.yaml').is_file()


def launch_description():
    """The launch file's LaunchDescription, loaded as ros2 launch loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def test_launch_description_builds_where_launch_ros_exists() -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installable here (no ros2 launch)')
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchContext

    description = launch_description()
    names = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert names == ARGUMENTS
    context = LaunchContext()
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            context.launch_configurations[action.name] = action.default_value[0].text
    context.launch_configurations['use_depth'] = 'true'
    opaque = next(a for a in description.entities if isinstance(a, OpaqueFunction))
    (node,) = opaque.execute(context)
    assert node.node_package == 'masqclip_ros' and node.node_executable == 'masqclip_node'


def test_rviz_view_names_only_what_the_node_publishes() -> None:
    """config/masqclip.rviz parses and shows the node's own topics and marker namespaces."""
    view = yaml.safe_load((ROOT / 'config' / 'masqclip.rviz').read_text())
    displays = view['Visualization Manager']['Displays']
    topics = {display['Topic']['Value'] for display in displays}
    from masqclip_ros.node import OUTPUTS

    published = {
        '/masqclip_node/' + topic.removeprefix('~/')
        for _, topic, _ in OUTPUTS.values()
        if topic.startswith('~/')
    }
    assert topics == {'/masqclip_node/overlay', '/masqclip_node/markers'} <= published
    namespaces = {ns for d in displays for ns in d.get('Namespaces', {})}
    messages_source = (ROOT / 'masqclip_ros' / 'messages.py').read_text()
    assert namespaces == set(re.findall(r"ns='([\w/]+)'", messages_source))
    assert {d['Class'] for d in displays} == {
        'rviz_default_plugins/Image',
        'rviz_default_plugins/MarkerArray',
    }


def test_rviz_argument_follows_the_namespace_or_says_why_not() -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installable here (no ros2 launch)')
    from launch.actions import LogInfo, OpaqueFunction

    from launch import LaunchContext

    description = launch_description()
    make_rviz = [a for a in description.entities if isinstance(a, OpaqueFunction)][-1]
    context = LaunchContext()
    context.launch_configurations.update({'rviz': 'false', 'namespace': 'robot'})
    assert make_rviz.execute(context) == []
    context.launch_configurations['rviz'] = 'true'
    (action,) = make_rviz.execute(context)
    if isinstance(action, LogInfo):  # no rviz2 here
        assert 'rviz2 is not installed' in action.msg[0].text
    else:
        config = action.cmd[-1][0].perform(context)
        assert '/robot/masqclip_node/overlay' in Path(config).read_text()


def test_precision_parameter_takes_the_predictors_precisions() -> None:
    from masqclip.modeling.precision import PRECISIONS as PREDICTOR_PRECISIONS

    spec = next(spec for spec in PARAMETERS if spec.name == 'model.precision')
    assert tuple(spec.choices) == PREDICTOR_PRECISIONS and 'bf16' in spec.choices
