"""Start masqclip_node, e.g. `ros2 launch masqclip_ros segment.launch.py image:=/camera/image`.

Arguments: image (camera topic), params_file, vocabulary (a YAML file under
config/vocabularies/ or a path; empty = the params file's list), namespace, use_depth (with
depth:=... and camera_info:=... topics), rviz (start rviz2 with config/masqclip.rviz where
rviz2 is installed). The node brings itself to active.
"""

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = 'masqclip_ros'


def make_node(context, *args, **kwargs) -> list:
    """Build the node action once the arguments are known."""
    share = get_package_share_directory(PACKAGE)

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {'depth.enabled': arg('use_depth').lower() in ('true', '1', 'yes')}
    vocabulary = arg('vocabulary')
    if vocabulary:
        bundled = os.path.join(share, 'config', 'vocabularies', vocabulary)
        overrides['vocabulary_file'] = bundled if os.path.isfile(bundled) else vocabulary
    return [
        Node(
            package=PACKAGE,
            executable='masqclip_node',
            name='masqclip_node',
            namespace=arg('namespace'),
            output='screen',
            parameters=[arg('params_file'), overrides],
            remappings=[
                ('image', arg('image')),
                ('image/compressed', arg('image') + '/compressed'),
                ('depth', arg('depth')),
                ('camera_info', arg('camera_info')),
            ],
        )
    ]


def make_rviz(context, *args, **kwargs) -> list:
    """rviz2 on the node's topics, or one line saying why not."""
    if LaunchConfiguration('rviz').perform(context).lower() not in ('true', '1', 'yes'):
        return []
    try:
        get_package_share_directory('rviz2')
    except LookupError:  # PackageNotFoundError
        return [LogInfo(msg='rviz:=true but rviz2 is not installed here (apt install '
                            'ros-$ROS_DISTRO-rviz2); the node runs without it')]  # fmt: skip
    config = os.path.join(get_package_share_directory(PACKAGE), 'config', 'masqclip.rviz')
    namespace = LaunchConfiguration('namespace').perform(context).strip('/')
    if namespace:  # the shipped view names the un-namespaced topics
        with open(config) as source:
            text = source.read().replace('/masqclip_node/', f'/{namespace}/masqclip_node/')
        with tempfile.NamedTemporaryFile('w', suffix='.rviz', delete=False) as view:
            view.write(text)
        config = view.name
    return [Node(package='rviz2', executable='rviz2', arguments=['-d', config], output='log')]


def generate_launch_description() -> LaunchDescription:
    """The launch arguments and the node."""
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument('image', default_value='image', description='Camera topic.'),
            DeclareLaunchArgument(
                'params_file',
                default_value=os.path.join(share, 'config', 'segment.yaml'),
                description='Parameters YAML of masqclip_node.',
            ),
            DeclareLaunchArgument(
                'vocabulary',
                default_value='',
                description="Vocabulary YAML (e.g. tabletop.yaml); empty = the params file's.",
            ),
            DeclareLaunchArgument('namespace', default_value='', description='Node namespace.'),
            DeclareLaunchArgument(
                'use_depth', default_value='false', description='Add 3D from registered depth.'
            ),
            DeclareLaunchArgument(
                'depth', default_value='depth', description='Registered depth topic.'
            ),
            DeclareLaunchArgument(
                'camera_info', default_value='camera_info', description='CameraInfo topic.'
            ),
            DeclareLaunchArgument(
                'rviz', default_value='false', description='Also start rviz2 (where installed).'
            ),
            OpaqueFunction(function=make_node),
            OpaqueFunction(function=make_rviz),
        ]
    )
