"""The node's parameters: one table of names, defaults, descriptions and ranges (with the
descriptors the node declares them with), and their validation into a ``Settings`` object,
whole at configure or only the live ones on a change (no rclpy node needed to test it:
test/ros/test_settings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from masqclip import factory
from masqclip.inference.predictor import TASKS, validate_tasks
from masqclip.inference.tracking import TrackerCfg
from masqclip.modeling.precision import PRECISIONS

RELIABILITIES = ('auto', 'reliable', 'best_effort')


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter: ``bounds`` is (min, max) for numbers, ``choices`` for strings."""

    name: str
    default: object
    description: str
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    live: bool = False
    """True when a change takes effect at once; others wait for the next configure."""

    def descriptor(self) -> ParameterDescriptor:
        """What ``ros2 param describe`` shows: the description, choices and range."""
        descriptor = ParameterDescriptor(description=self.description)
        if self.choices:
            descriptor.additional_constraints = 'one of: ' + ', '.join(self.choices)
        if self.bounds is not None and isinstance(self.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=self.bounds[0], to_value=self.bounds[1])
            ]
        elif self.bounds is not None:
            descriptor.integer_range = [
                IntegerRange(from_value=int(self.bounds[0]), to_value=int(self.bounds[1]))
            ]
        return descriptor


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        'model.config',
        '',
        "Named architecture (masqclip/model_configs); empty = the checkpoint's.",
    ),
    ParameterSpec(
        'model.checkpoint',
        'demo',
        "MasQCLIP checkpoint file; 'demo' = the shipped demo model; empty = random weights.",
    ),
    ParameterSpec('model.clip_weights', '', "CLIP weights file; empty = the checkpoint's."),
    ParameterSpec('model.backend', 'torch', 'Inference backend.', choices=factory.BACKENDS),
    ParameterSpec('model.device', 'cpu', 'Torch device, e.g. cpu or cuda:0.'),
    ParameterSpec('model.precision', 'fp32', 'Numeric precision.', choices=PRECISIONS),
    ParameterSpec(
        'model.engine_cache_dir',
        '',
        'Folder for ONNX exports, TensorRT engines and inductor compiles; empty = default.',
    ),
    ParameterSpec(
        'model.input_size',
        [640, 480],
        'Camera width, height the inductor/onnxruntime/tensorrt backends are built for.',
    ),
    ParameterSpec('tasks', list(TASKS), 'Outputs to compute (instance, semantic, panoptic).'),
    ParameterSpec('score_threshold', 0.0, 'Instances scoring lower are dropped.', (0.0, 1.0)),
    ParameterSpec(
        'object_mask_threshold',
        -1.0,
        "Panoptic: minimum class score of a kept mask; -1 = the model config's value.",
        (-1.0, 1.0),
    ),
    ParameterSpec(
        'overlap_threshold',
        -1.0,
        "Panoptic: minimum visible fraction of a kept mask; -1 = the model config's value.",
        (-1.0, 1.0),
    ),
    ParameterSpec(
        'max_instances', 0, "Most instances per frame; 0 = the model config's value.", (0, 10000)
    ),
    ParameterSpec('min_area_px', 0, 'Instances with fewer mask pixels are dropped.', (0, 1e9)),
    ParameterSpec(
        'vocabulary', ['object'], 'Class names (used when vocabulary_file is empty).', live=True
    ),
    ParameterSpec(
        'vocabulary_file', '', 'YAML vocabulary file; overrides vocabulary when set.', live=True
    ),
    ParameterSpec(
        'input.reliability',
        'auto',
        'Image subscription reliability; auto matches the publishers found at activation.',
        choices=RELIABILITIES,
    ),
    ParameterSpec('input.compressed', False, 'Subscribe to image/compressed instead of image.'),
    ParameterSpec(
        'input.max_rate_hz',
        0.0,
        'Process at most this many frames/s; 0 = all.',
        (0.0, 1000.0),
        live=True,
    ),
    ParameterSpec(
        'input.warn_after_s',
        5.0,
        'Warn (naming topic and QoS) when no image arrived for this long.',
        (0.1, 3600.0),
        live=True,
    ),
    ParameterSpec('input.max_pixels', 16_777_216, 'Larger images are rejected.', (1, 40_000_000)),
    ParameterSpec('depth.enabled', False, 'Subscribe to depth and camera_info for 3D.'),
    ParameterSpec('depth.scale', 0.001, 'Metres per 16UC1 depth unit.', (1e-6, 1.0)),
    ParameterSpec(
        'depth.sync_slop_s', 0.05, 'Largest image/depth stamp difference accepted.', (0.0, 10.0)
    ),
    ParameterSpec(
        'depth.min_points', 20, "Fewest valid depth pixels for an instance's 3D.", (1, 1e9)
    ),
    ParameterSpec('find.buffer_size', 8, 'Recent frames kept for the find service.', (1, 1000)),
    ParameterSpec(
        'overlay.alpha', 0.5, "Opacity of the overlay's colour fill.", (0.0, 1.0), live=True
    ),  # fmt: skip
    ParameterSpec('tracking.enabled', True, 'Give instances track ids that last across frames.'),
    ParameterSpec(
        'tracking.min_score', 0.3, 'Instances scoring lower are not tracked.', (0.0, 1.0)
    ),
    ParameterSpec(
        'tracking.iou_weight',
        0.5,
        'Weight of 1 - mask IoU (against the motion prediction) in following a track.',
        (0.0, 1.0),
    ),
    ParameterSpec(
        'tracking.embedding_weight',
        0.5,
        'Weight of 1 - embedding cosine in following a track.',
        (0.0, 1.0),
    ),
    ParameterSpec(
        'tracking.lost_track_s',
        10.0,
        'How long a track out of view is kept for re-identification.',
        (0.0, 3600.0),
    ),
    ParameterSpec(
        'tracking.reid_min_similarity',
        0.6,
        'Lowest embedding cosine at which a lost track is re-identified.',
        (-1.0, 1.0),
    ),
    ParameterSpec(
        'tracking.reid_same_class',
        False,
        'Re-identify a lost track only as its own class (for models whose labels are stable).',
    ),
    ParameterSpec(
        'tracking.marker_lifetime_s',
        1.0,
        "How long a track's RViz marker outlives its last frame.",
        (0.01, 3600.0),
    ),
    ParameterSpec(
        'teach.file',
        '',
        'JSON file keeping the classes taught by showing them (~/teach) across restarts: read '
        'at configure, written after each change of them; empty = not kept.',
    ),
    ParameterSpec(
        'diagnostics.period_s', 1.0, 'Period of /diagnostics and rate windows.', (0.05, 60.0)
    ),
)
SPECS = {spec.name: spec for spec in PARAMETERS}


class SettingsError(ValueError):
    """A parameter value the node cannot use; the message names the parameter."""


@dataclass(frozen=True)
class Settings:
    """Validated parameters (see ``PARAMETERS`` for meanings)."""

    model_config: str
    checkpoint: str | None
    clip_weights: str | None
    backend: str
    device: str
    precision: str
    engine_cache_dir: str | None
    input_size: tuple[int, int]
    tasks: tuple[str, ...]
    score_threshold: float
    object_mask_threshold: float | None
    overlap_threshold: float | None
    max_instances: int | None
    min_area_px: int
    vocabulary: tuple[str, ...]
    vocabulary_file: str | None
    reliability: str
    compressed: bool
    max_rate_hz: float
    warn_after_s: float
    max_pixels: int
    depth_enabled: bool
    depth_scale: float
    depth_sync_slop_s: float
    depth_min_points: int
    find_buffer_size: int
    overlay_alpha: float
    diagnostics_period_s: float
    tracking: TrackerCfg | None
    """None when tracking is off."""
    tracking_min_score: float
    marker_lifetime_s: float
    teach_file: str | None
    """None: taught classes are not kept across restarts."""

    @property
    def model_name(self) -> str:
        """The model as logs and diagnostics name it (``masqclip.factory.model_name``)."""
        return factory.model_name(self.model_config or None, self.checkpoint)

    @property
    def model_summary(self) -> str:
        """'<model> on <device> (<backend>, <precision>)', as logs name what runs."""
        return f'{self.model_name} on {self.device} ({self.backend}, {self.precision})'

    def diagnostic_values(self) -> dict[str, str]:
        """The model's entries of the node's /diagnostics."""
        return {
            'model': self.model_name,
            'backend': self.backend,
            'device': self.device,
            'precision': self.precision,
        }

    @property
    def tracking_problem(self) -> str | None:
        """Why tracking is on but tracks nothing (tracks follow instances); None otherwise."""
        if self.tracking is not None and 'instance' not in self.tasks:
            return 'tracking.enabled is true but tasks has no instance: nothing is tracked'
        return None

    def predictor_options(self) -> dict[str, object]:
        """Keyword arguments of ``masqclip.factory.create_predictor``.

        :return: model, weights, backend and inference options; unset ones left out.
        """
        options: dict[str, object] = {
            'model': self.model_config or None,
            'checkpoint': self.checkpoint,
            'clip_weights': self.clip_weights,
            'device': self.device,
            'backend': self.backend,
            'precision': self.precision,
            'tasks': self.tasks,
            'score_threshold': self.score_threshold,
            'min_area_px': self.min_area_px,
        }
        optional = {
            'object_mask_threshold': self.object_mask_threshold,
            'overlap_threshold': self.overlap_threshold,
            'max_instances': self.max_instances,
            'engine_cache_dir': self.engine_cache_dir,
        }
        if self.backend != 'torch':  # the others are built for a fixed (H, W)
            options['frame_size'] = (self.input_size[1], self.input_size[0])
        options.update({key: value for key, value in optional.items() if value is not None})
        return options


def check_value(name: str, value: object) -> None:
    """Check one parameter value against its declared range or choices.

    :param name: a name of ``PARAMETERS``.
    :param value: the value.
    :raises SettingsError: naming the parameter, the value and what is allowed.
    """
    spec = SPECS[name]
    if spec.choices and value not in spec.choices:
        raise SettingsError(f'parameter {name}={value!r}: choose one of {", ".join(spec.choices)}')
    if spec.bounds is not None:
        low, high = spec.bounds
        if not low <= value <= high:  # also rejects NaN
            raise SettingsError(f'parameter {name}={value!r} is outside [{low:g}, {high:g}]')


def check_change(name: str, value: object, configured: bool) -> None:
    """Check a parameter change: the value and, while the node is configured, that the
    parameter is live (the others take effect on the next configure).

    :raises SettingsError: naming the parameter and what to do.
    """
    check_value(name, value)
    if configured and not SPECS[name].live:
        raise SettingsError(
            f'{name} takes effect on configure: deactivate, clean up, set it, then configure '
            'and activate again'
        )


def settings_from_values(values: Mapping[str, object]) -> Settings:
    """Validate parameter values (as declared, by name) into ``Settings``.

    :param values: every name of ``PARAMETERS`` with its value.
    :return: the settings.
    :raises SettingsError: naming the first bad parameter (unknown task, missing vocabulary
        file, value out of range).
    """
    for name, value in values.items():
        check_value(name, value)
    tasks = tuple(values['tasks'])
    try:
        validate_tasks(tasks)
    except ValueError as error:
        raise SettingsError(f'parameter tasks={list(tasks)}: {error}') from error
    live = _live_fields(values)
    input_size = tuple(int(v) for v in values['model.input_size'])
    if len(input_size) != 2 or min(input_size) < 16:
        raise SettingsError(
            f'parameter model.input_size={list(input_size)}: give [width, height] of the camera'
        )
    checkpoint = str(values['model.checkpoint']) or None
    if checkpoint not in (None, 'demo') and not Path(checkpoint).is_file():
        raise SettingsError(f'parameter model.checkpoint: no file at {checkpoint!r}')
    clip_weights = str(values['model.clip_weights']) or None
    if clip_weights is not None and not Path(clip_weights).is_file():
        raise SettingsError(f'parameter model.clip_weights: no file at {clip_weights!r}')
    teach_file = str(values['teach.file'])  # need not exist yet: the first teach writes it

    def optional_threshold(name: str) -> float | None:
        value = float(values[name])
        if value < 0:
            return None
        return value

    return Settings(
        model_config=str(values['model.config']),
        checkpoint=checkpoint,
        clip_weights=clip_weights,
        backend=str(values['model.backend']),
        device=str(values['model.device']),
        precision=str(values['model.precision']),
        engine_cache_dir=str(values['model.engine_cache_dir']) or None,
        input_size=input_size,
        tasks=tasks,
        score_threshold=float(values['score_threshold']),
        object_mask_threshold=optional_threshold('object_mask_threshold'),
        overlap_threshold=optional_threshold('overlap_threshold'),
        max_instances=int(values['max_instances']) or None,
        min_area_px=int(values['min_area_px']),
        reliability=str(values['input.reliability']),
        compressed=bool(values['input.compressed']),
        max_pixels=int(values['input.max_pixels']),
        depth_enabled=bool(values['depth.enabled']),
        depth_scale=float(values['depth.scale']),
        depth_sync_slop_s=float(values['depth.sync_slop_s']),
        depth_min_points=int(values['depth.min_points']),
        find_buffer_size=int(values['find.buffer_size']),
        diagnostics_period_s=float(values['diagnostics.period_s']),
        tracking=_tracker_cfg(values),
        tracking_min_score=float(values['tracking.min_score']),
        marker_lifetime_s=float(values['tracking.marker_lifetime_s']),
        teach_file=str(Path(teach_file).expanduser()) if teach_file else None,
        **live,
    )


def _tracker_cfg(values: Mapping[str, object]) -> TrackerCfg | None:
    """The tracker's settings from the (checked) tracking parameters; None when it is off."""
    if not values['tracking.enabled']:
        return None
    iou_weight, embedding_weight = (
        float(values[f'tracking.{name}']) for name in ('iou_weight', 'embedding_weight')
    )
    if iou_weight + embedding_weight == 0:
        raise SettingsError(
            'parameters tracking.iou_weight and tracking.embedding_weight are both 0: every '
            'detection would follow any track'
        )
    return TrackerCfg(
        iou_weight=iou_weight,
        embedding_weight=embedding_weight,
        lost_track_seconds=float(values['tracking.lost_track_s']),
        reid_min_similarity=float(values['tracking.reid_min_similarity']),
        reid_same_class=bool(values['tracking.reid_same_class']),
    )


def with_live_values(settings: Settings, values: Mapping[str, object]) -> Settings:
    """``settings`` after a change of the live parameters, which take effect without a
    configure.

    :param values: every live parameter (``ParameterSpec.live``) with its value, the changed
        ones new.
    :return: the settings with those fields replaced.
    :raises SettingsError: naming the first bad parameter.
    """
    for name, value in values.items():
        check_value(name, value)
    return replace(settings, **_live_fields(values))


def _live_fields(values: Mapping[str, object]) -> dict[str, object]:
    """The ``Settings`` fields of the live parameters, from their (checked) values."""
    vocabulary_file = str(values['vocabulary_file']) or None
    if vocabulary_file is not None and not Path(vocabulary_file).is_file():
        raise SettingsError(f'parameter vocabulary_file: no file at {vocabulary_file!r}')
    return {
        'vocabulary': tuple(values['vocabulary']),
        'vocabulary_file': vocabulary_file,
        'max_rate_hz': float(values['input.max_rate_hz']),
        'warn_after_s': float(values['input.warn_after_s']),
        'overlay_alpha': float(values['overlay.alpha']),
    }
