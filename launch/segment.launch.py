"""Start masqclip_node, e.g. `ros2 launch masqclip_ros segment.launch.py image:=/camera/image`.

Arguments: image (camera topic), params_file, vocabulary (a YAML file under
config/vocabularies/ or a path; empty = the params file's list), namespace, use_depth (with
depth:=... and camera_info:=... topics). The node brings itself to active.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
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
            OpaqueFunction(function=make_node),
        ]
    )
