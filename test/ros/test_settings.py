"""The node's parameters (masqclip_ros.settings) without a node: each value checked against
its declared range or choices, the whole set validated into Settings at configure, the live
ones changed later, and the descriptors the node declares them with."""

import math

import pytest

pytest.importorskip('rcl_interfaces')

from masqclip.inference.predictor import TASKS  # noqa: E402
from masqclip.inference.tracking import TrackerCfg  # noqa: E402
from masqclip_ros.settings import (  # noqa: E402
    PARAMETERS,
    SPECS,
    SettingsError,
    check_change,
    check_value,
    settings_from_values,
    with_live_values,
)

DEFAULTS = {spec.name: spec.default for spec in PARAMETERS}


def settings(**changes):
    """Settings from the declared defaults with ``changes`` (dots written as '__')."""
    return settings_from_values(
        {**DEFAULTS, **{name.replace('__', '.'): value for name, value in changes.items()}}
    )


def test_the_defaults_are_valid_settings() -> None:
    valid = settings()
    assert valid.tasks == TASKS and valid.input_size == (640, 480)
    assert valid.checkpoint == 'demo' and valid.vocabulary == ('object',)
    assert valid.vocabulary_file is None
    # Unset optional values become None: the model config's own values apply.
    assert valid.object_mask_threshold is valid.overlap_threshold is valid.max_instances is None
    assert valid.model_name == 'masqclip_demo'


@pytest.mark.parametrize(
    ('name', 'value', 'message'),
    [
        ('model.backend', 'cuda', "parameter model.backend='cuda': choose one of torch, "
                                  'inductor, onnxruntime, tensorrt'),
        ('input.reliability', 'Reliable', 'choose one of auto, reliable, best_effort'),
        ('score_threshold', 1.5, r'parameter score_threshold=1.5 is outside \[0, 1\]'),
        ('score_threshold', -0.01, 'is outside'),
        ('score_threshold', math.nan, r'parameter score_threshold=nan is outside \[0, 1\]'),
        ('input.max_rate_hz', math.inf, 'parameter input.max_rate_hz=inf is outside'),
        ('find.buffer_size', 0, r'parameter find.buffer_size=0 is outside \[1, 1000\]'),
        ('diagnostics.period_s', 0.01, r'is outside \[0.05, 60\]'),
    ],
)  # fmt: skip
def test_check_value_refuses_bad_choices_out_of_bounds_and_nan(name, value, message) -> None:
    with pytest.raises(SettingsError, match=message):
        check_value(name, value)


@pytest.mark.parametrize(
    ('name', 'value'),
    [('model.backend', 'onnxruntime'), ('score_threshold', 0.0), ('score_threshold', 1.0),
     ('find.buffer_size', 1000), ('model.device', 'cuda:3'), ('tasks', ['panoptic'])],
)  # fmt: skip
def test_check_value_takes_values_within_range_and_unchecked_kinds(name, value) -> None:
    check_value(name, value)


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'tasks': ['instance', 'depth']}, r"parameter tasks=\['instance', 'depth'\]: unknown "
                                           r"tasks \['depth'\]: choose one or more of instance"),
        ({'tasks': []}, r'parameter tasks=\[\]: no task given'),
        ({'vocabulary_file': '/nonexistent/kitchen.yaml'},
         "parameter vocabulary_file: no file at '/nonexistent/kitchen.yaml'"),
        ({'model__input_size': [640]}, r'parameter model.input_size=\[640\]: give \[width, '
                                       r'height\] of the camera'),
        ({'model__input_size': [640, 8]}, r'model.input_size=\[640, 8\]'),
        ({'model__input_size': [640, 480, 3]}, r'model.input_size=\[640, 480, 3\]'),
        ({'model__checkpoint': '/nonexistent.pt'}, 'parameter model.checkpoint: no file at'),
        ({'model__clip_weights': '/nonexistent.bin'}, 'parameter model.clip_weights: no file'),
        ({'overlay__alpha': math.nan}, 'parameter overlay.alpha=nan is outside'),
    ],
)  # fmt: skip
def test_settings_from_values_refuses_naming_the_parameter(changes, message) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**changes)


def test_settings_from_values_reads_files_names_and_optional_values(tmp_path) -> None:
    vocabulary = tmp_path / 'kitchen.yaml'
    vocabulary.write_text('- mug\n')
    valid = settings(vocabulary_file=str(vocabulary), model__checkpoint='', model__config='x',
                     object_mask_threshold=0.8, max_instances=5, tasks=['semantic'],
                     model__engine_cache_dir='')  # fmt: skip
    assert valid.vocabulary_file == str(vocabulary) and valid.checkpoint is None
    assert (valid.object_mask_threshold, valid.max_instances) == (0.8, 5)
    assert valid.tasks == ('semantic',) and valid.engine_cache_dir is None


def test_teach_file_is_off_by_default_and_may_start_at_home(monkeypatch, tmp_path) -> None:
    assert settings().teach_file is None
    monkeypatch.setenv('HOME', str(tmp_path))
    # Need not exist: the first class taught writes it.
    assert settings(teach__file='~/taught.json').teach_file == str(tmp_path / 'taught.json')


def test_tracking_parameters_make_the_trackers_settings() -> None:
    default = settings()
    assert default.tracking == TrackerCfg(reid_same_class=False)  # the demo model's labels flicker
    assert (default.tracking_min_score, default.marker_lifetime_s) == (0.3, 1.0)
    assert default.tracking_problem is None
    tuned = settings(tracking__iou_weight=1.0, tracking__embedding_weight=0.0,
                     tracking__lost_track_s=2.5, tracking__reid_min_similarity=0.8,
                     tracking__reid_same_class=True)  # fmt: skip
    assert tuned.tracking == TrackerCfg(
        iou_weight=1.0, embedding_weight=0.0, lost_track_seconds=2.5, reid_min_similarity=0.8
    )
    assert settings(tracking__enabled=False).tracking is None
    assert settings(tasks=['semantic']).tracking_problem == (
        'tracking.enabled is true but tasks has no instance: nothing is tracked'
    )
    assert settings(tasks=['semantic'], tracking__enabled=False).tracking_problem is None


@pytest.mark.parametrize(
    ('changes', 'message'),
    [({'tracking__iou_weight': 0.0, 'tracking__embedding_weight': 0.0},
      'tracking.iou_weight and tracking.embedding_weight are both 0'),
     ({'tracking__iou_weight': 1.5}, r'tracking.iou_weight=1.5 is outside \[0, 1\]'),
     ({'tracking__lost_track_s': -1.0}, 'tracking.lost_track_s=-1.0 is outside'),
     ({'tracking__reid_min_similarity': math.nan}, 'tracking.reid_min_similarity=nan'),
     ({'tracking__min_score': 2.0}, 'tracking.min_score=2.0 is outside'),
     ({'tracking__marker_lifetime_s': 0.0}, 'tracking.marker_lifetime_s=0.0 is outside')],
)  # fmt: skip
def test_bad_tracking_parameters_are_refused(changes, message) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**changes)


def test_a_change_of_a_configure_time_parameter_waits_for_configure() -> None:
    check_change('score_threshold', 0.5, configured=False)
    check_change('overlay.alpha', 0.5, configured=True)
    with pytest.raises(SettingsError, match='score_threshold takes effect on configure: '):
        check_change('score_threshold', 0.5, configured=True)
    with pytest.raises(SettingsError, match='is outside'):
        check_change('overlay.alpha', 1.5, configured=False)


LIVE = {spec.name: spec.default for spec in PARAMETERS if spec.live}


def test_live_values_replace_only_their_fields(tmp_path) -> None:
    before = settings()
    path = tmp_path / 'fruit.yaml'
    path.write_text('- apple\n')
    changes = {'overlay.alpha': 0.25, 'input.max_rate_hz': 3.0, 'vocabulary_file': str(path),
               'vocabulary': ['pear'], 'input.warn_after_s': 9.0}  # fmt: skip
    after = with_live_values(before, {**LIVE, **changes})
    assert (after.overlay_alpha, after.max_rate_hz, after.warn_after_s) == (0.25, 3.0, 9.0)
    assert (after.vocabulary, after.vocabulary_file) == (('pear',), str(path))
    # Back to the live defaults gives the settings before: no other field changed.
    assert with_live_values(after, LIVE) == before


@pytest.mark.parametrize(
    ('changes', 'message'),
    [({'vocabulary_file': '/nonexistent.yaml'}, 'parameter vocabulary_file: no file at'),
     ({'overlay.alpha': -0.5}, r'parameter overlay.alpha=-0.5 is outside \[0, 1\]')],
)  # fmt: skip
def test_bad_live_values_are_refused(changes, message) -> None:
    with pytest.raises(SettingsError, match=message):
        with_live_values(settings(), {**LIVE, **changes})


def test_descriptors_carry_description_choices_and_ranges() -> None:
    backend = SPECS['model.backend'].descriptor()
    assert backend.additional_constraints == 'one of: torch, inductor, onnxruntime, tensorrt'
    assert backend.description == 'Inference backend.' and not backend.floating_point_range
    alpha = SPECS['overlay.alpha'].descriptor().floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    buffer = SPECS['find.buffer_size'].descriptor()
    assert (buffer.integer_range[0].from_value, buffer.integer_range[0].to_value) == (1, 1000)
    assert not buffer.floating_point_range and not SPECS['tasks'].descriptor().integer_range
