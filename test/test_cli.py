"""The ``masqclip`` command, called as a user types it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from masqclip.cli import main


@pytest.fixture
def image_path(tmp_path, rng):
    path = tmp_path / 'scene.png'
    cv2.imwrite(str(path), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    return path


def test_segment_writes_overlay_json_and_maps(image_path, tmp_path):
    out = tmp_path / 'out'
    assert (
        main(
            [
                'segment',
                str(image_path),
                '--vocabulary',
                'red mug, table',
                '--score-threshold',
                '0',
                '--out',
                str(out),
            ]
        )
        == 0
    )
    overlay = cv2.imread(str(out / 'scene_overlay.png'))
    assert overlay.shape == (60, 80, 3)
    semantic = cv2.imread(str(out / 'scene_semantic.png'), cv2.IMREAD_UNCHANGED)
    assert semantic.dtype == np.uint16 and semantic.shape == (60, 80)
    assert cv2.imread(str(out / 'scene_panoptic.png')).shape == (60, 80, 3)
    data = json.loads((out / 'scene.json').read_text())
    assert data['vocabulary'] == ['red mug', 'table']
    assert data['instances'] and data['instances'][0]['mask_rle']['size'] == [60, 80]


def test_segment_with_a_vocabulary_file_and_one_task(image_path, tmp_path):
    vocabulary = tmp_path / 'v.yaml'
    vocabulary.write_text('- mug\n- {name: floor, is_thing: false}\n')
    out = tmp_path / 'out'
    assert (
        main(
            [
                'segment',
                str(image_path),
                '--vocabulary-file',
                str(vocabulary),
                '--tasks',
                'semantic',
                '--out',
                str(out),
            ]
        )
        == 0
    )
    assert (out / 'scene_semantic.png').exists() and not (out / 'scene_panoptic.png').exists()


@pytest.mark.parametrize(
    'args, message',
    [
        (['--vocabulary', ' , '], 'no class in the vocabulary'),
        (['--vocabulary', 'mug', '--checkpoint', '/nonexistent.pt'], 'not found'),
        (['--vocabulary', 'mug', '--model', 'no_such_model'], 'unknown model'),
        (['--vocabulary', 'mug', '--precision', 'fp16'], 'fp16 needs a CUDA device'),
    ],
)
def test_segment_errors_are_one_clear_line(image_path, capsys, args, message):
    assert main(['segment', str(image_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    assert main(['segment', str(bad), '--vocabulary', 'mug']) == 2
    assert 'cannot read' in capsys.readouterr().err


def test_argument_errors_name_what_is_allowed(capsys):
    with pytest.raises(SystemExit):
        main(['segment', 'x.png', '--vocabulary', 'mug', '--tasks', 'instance,depth'])
    assert "unknown tasks ['depth']: choose one or more of" in capsys.readouterr().err


def test_precision_choices_are_each_commands_own(capsys):
    # segment runs the torch backend (bf16 included); an export has no bf16 graph.
    with pytest.raises(SystemExit):
        main(['export', 'onnx', '--precision', 'bf16'])
    assert "invalid choice: 'bf16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['segment', 'x.png', '--vocabulary', 'mug', '--precision', 'int8'])
    assert "'fp32', 'fp16', 'bf16'" in capsys.readouterr().err


def test_every_command_keeps_freed_cpu_memory_for_reuse(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr('masqclip.cli.keep_freed_memory', lambda: calls.append(True))
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    main(['segment', str(bad), '--vocabulary', 'mug'])
    assert calls == [True]
