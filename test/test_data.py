"""Tests of masqclip.data: readers, open-vocabulary split, LSJ and the scene generator."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from masqclip.cli import main as cli_main
from masqclip.data import (
    COCO_48_17,
    IGNORE_LABEL,
    CategorySplit,
    DatasetFormatError,
    LsjCfg,
    SceneCfg,
    filter_coco_instances,
    generate_scene,
    large_scale_jitter,
    load_coco_instances,
    load_coco_panoptic,
    load_semantic_dataset,
    load_split,
    read_label_map,
    sample_lsj,
    synthetic,
    write_dataset,
    write_ov_split,
)
from masqclip.data.io import id_to_rgb, rgb_to_id

NUM_IMAGES = 6


@pytest.fixture(scope='module')
def dataset(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticPaths:
    return write_dataset(tmp_path_factory.mktemp('synth'), NUM_IMAGES, SceneCfg(), seed=3)


def _scene(i: int) -> synthetic.Scene:
    return generate_scene(np.random.default_rng([3, i]), SceneCfg())


def test_instance_reader_on_generated_dataset(dataset: synthetic.SyntheticPaths) -> None:
    data = load_coco_instances(dataset.instances_json, dataset.image_dir)
    assert len(data) == NUM_IMAGES
    assert [c.name for c in data.categories] == list(synthetic.THING_NAMES)
    for i, record in enumerate(data.records):
        scene = _scene(i)
        things = [k for k, s in enumerate(scene.segments) if s.is_thing]
        assert record.caption == scene.caption
        assert (record.height, record.width) == (64, 64)
        np.testing.assert_array_equal(record.load_image(), scene.image)
        np.testing.assert_array_equal(record.masks(), scene.masks()[things])
        assert [a.category_id for a in record.annotations] == [
            scene.segments[k].category_id for k in things
        ]
        for annotation in record.annotations:
            assert annotation.is_thing and not annotation.is_crowd
            assert annotation.area == annotation.mask().sum()


def test_panoptic_reader_on_generated_dataset(dataset: synthetic.SyntheticPaths) -> None:
    data = load_coco_panoptic(dataset.panoptic_json, dataset.panoptic_dir, dataset.image_dir)
    assert len(data.categories) == len(synthetic.CATEGORIES)
    assert data.category(26).name == 'sky' and not data.category(26).is_thing
    for i, record in enumerate(data.records):
        scene = _scene(i)
        np.testing.assert_array_equal(record.panoptic_ids(), scene.panoptic)
        np.testing.assert_array_equal(record.masks(), scene.masks())
        assert [(a.id, a.category_id, a.is_thing) for a in record.annotations] == [
            (s.id, s.category_id, s.is_thing) for s in scene.segments
        ]
        np.testing.assert_array_equal(record.annotations[-1].mask(), scene.masks()[-1])


def test_instance_reader_polygon_rle_and_crowd(tmp_path: Path) -> None:
    h, w = 5, 6
    compressed = np.zeros((h, w), np.uint8)
    compressed[3:5, 0:2] = 1
    rle = mask_util.encode(np.asfortranarray(compressed))
    # Uncompressed RLE counts run down the columns: 7 off, then 3 on (column 1, rows 2..4).
    uncompressed = {'size': [h, w], 'counts': [7, 3, 20]}
    coco = {
        'images': [{'id': 7, 'file_name': 'a.png', 'height': h, 'width': w}],
        'annotations': [
            {
                'id': 1,
                'image_id': 7,
                'category_id': 3,
                'iscrowd': 0,
                'segmentation': [[1, 1, 4, 1, 4, 3, 1, 3]],
                'area': 6,
                'bbox': [1, 1, 3, 2],
            },
            {
                'id': 2,
                'image_id': 7,
                'category_id': 3,
                'iscrowd': 1,
                'segmentation': uncompressed,
                'area': 3,
                'bbox': [1, 2, 1, 3],
            },
            {
                'id': 3,
                'image_id': 7,
                'category_id': 5,
                'iscrowd': 0,
                'segmentation': {'size': [h, w], 'counts': rle['counts'].decode()},
                'area': 4,
            },
        ],
        'categories': [{'id': 3, 'name': 'cup'}, {'id': 5, 'name': 'cat'}],
    }
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps(coco))
    record = load_coco_instances(path, tmp_path / 'images')[0]
    assert record.image_path == str(tmp_path / 'images' / 'a.png')
    polygon = np.zeros((h, w), bool)
    polygon[1:3, 1:4] = True
    column = np.zeros((h, w), bool)
    column[2:5, 1] = True
    expected = np.stack([polygon, column, compressed.astype(bool)])
    np.testing.assert_array_equal(record.masks(), expected)
    assert [a.is_crowd for a in record.annotations] == [False, True, False]
    assert [a.category_id for a in record.annotations] == [3, 3, 5]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_coco_instances(tmp_path / 'missing.json', tmp_path)
    (tmp_path / 'bad.json').write_text('{"images": []}')
    with pytest.raises(DatasetFormatError, match='annotations'):
        load_coco_instances(tmp_path / 'bad.json', tmp_path)
    (tmp_path / 'inst.json').write_text(
        json.dumps({'images': [], 'annotations': [], 'categories': []})
    )
    (tmp_path / 'one.json').write_text(
        json.dumps(
            {
                'images': [{'id': 1, 'file_name': 'a.png', 'height': 2, 'width': 2}],
                'annotations': [],
                'categories': [],
            }
        )
    )
    record = load_coco_instances(tmp_path / 'one.json', tmp_path)[0]
    assert record.masks().shape == (0, 2, 2)
    with pytest.raises(ValueError, match='load_coco_panoptic'):
        record.panoptic_ids()
    with pytest.raises(FileNotFoundError, match='cannot read image'):
        record.load_image()


def test_panoptic_id_encoding_round_trip() -> None:
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 256**3 - 1]])
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    assert tuple(id_to_rgb(np.array([[1 + 2 * 256 + 3 * 65536]]))[0, 0]) == (1, 2, 3)


def test_semantic_reader_png_and_16bit(tmp_path: Path) -> None:
    (tmp_path / 'img').mkdir()
    (tmp_path / 'lbl').mkdir()
    png = np.array([[0, 1, 149], [255, 3, 0]], np.uint8)
    tif = np.array([[0, 846, 65535], [12, 65535, 1]], np.uint16)
    cv2.imwrite(str(tmp_path / 'lbl' / 'a.png'), png)
    cv2.imwrite(str(tmp_path / 'lbl' / 'b.tif'), tif)
    for stem in ('a', 'b'):
        cv2.imwrite(str(tmp_path / 'img' / f'{stem}.jpg'), np.zeros((2, 3, 3), np.uint8))

    labels = read_label_map(tmp_path / 'lbl' / 'a.png')
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [[0, 1, 149], [IGNORE_LABEL, 3, 0]])
    # ADE raw: 0 = other -> ignored, 1..150 -> 0..149.
    ade = read_label_map(tmp_path / 'lbl' / 'a.png', label_offset=-1)
    np.testing.assert_array_equal(ade, [[-1, 0, 148], [-1, 2, -1]])
    wide = read_label_map(tmp_path / 'lbl' / 'b.tif', ignore_value=65535)
    np.testing.assert_array_equal(wide, [[0, 846, -1], [12, -1, 1]])

    records = load_semantic_dataset(
        tmp_path / 'img', tmp_path / 'lbl', label_ext='.tif', ignore_value=65535
    )
    assert [r.image_id for r in records] == ['b']
    np.testing.assert_array_equal(records[0].load_labels(), wide)
    assert records[0].load_image().shape == (2, 3, 3)
    only_a = load_semantic_dataset(tmp_path / 'img', tmp_path / 'lbl', ids=['a\n', ''])
    assert [r.image_id for r in only_a] == ['a']
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_semantic_dataset(tmp_path / 'img', tmp_path / 'lbl', ids=['zzz'])


def _ov_coco() -> dict:
    names = list(COCO_48_17.all) + ['hair drier']
    categories = [{'id': i + 1, 'name': n} for i, n in enumerate(names)]
    cid = {n: i + 1 for i, n in enumerate(names)}
    images = [{'id': k, 'file_name': f'{k}.jpg', 'height': 4, 'width': 4} for k in (1, 2, 3, 4)]
    seg = [[0, 0, 2, 0, 2, 2]]
    anns = [
        (1, 'person'),  # image 1: base only
        (2, 'person'),  # image 2: base and novel
        (2, 'dog'),
        (3, 'cat'),  # image 3: novel only
        (4, 'hair drier'),  # image 4: a class outside the 65
    ]
    annotations = [
        {
            'id': k + 1,
            'image_id': im,
            'category_id': cid[n],
            'segmentation': seg,
            'area': 2.0,
            'bbox': [0, 0, 2, 2],
            'iscrowd': 0,
        }
        for k, (im, n) in enumerate(anns)
    ]
    return {
        'info': {'v': 1},
        'images': images,
        'annotations': annotations,
        'categories': categories,
    }


def test_coco_ov_split_files(tmp_path: Path) -> None:
    path = tmp_path / 'instances_val2017.json'
    path.write_text(json.dumps(_ov_coco()))
    assert cli_main(['ov-split', str(path), str(tmp_path / 'ov')]) == 0
    out = {
        k: json.loads((tmp_path / 'ov' / f'instances_val2017_{k}.json').read_text())
        for k in ('seen48', 'unseen17', 'instances65')
    }

    def image_ids(d: dict) -> list[int]:
        return sorted(im['id'] for im in d['images'])

    def ann_names(d: dict) -> set[str]:
        names = {c['id']: c['name'] for c in d['categories']}
        return {names[a['category_id']] for a in d['annotations']}

    # Image 2 holds a dog: it stays in seen48 with its dog unlabelled.
    assert image_ids(out['seen48']) == [1, 2]
    assert ann_names(out['seen48']) == {'person'}
    assert image_ids(out['unseen17']) == [2, 3]
    assert ann_names(out['unseen17']) == {'dog', 'cat'}
    assert image_ids(out['instances65']) == [1, 2, 3]
    assert len(out['seen48']['categories']) == 48
    assert len(out['unseen17']['categories']) == 17
    assert out['seen48']['info'] == {'v': 1}


def test_generic_split_and_errors(tmp_path: Path) -> None:
    split_path = tmp_path / 'split.json'
    split_path.write_text(json.dumps({'base': ['person', 'cat'], 'novel': ['dog']}))
    split = load_split(split_path)
    assert split.all == ('person', 'cat', 'dog')
    paths = write_ov_split(_write(tmp_path / 'x.json', _ov_coco()), tmp_path, split)
    assert paths['base'].name == 'x_seen2.json' and paths['all'].name == 'x_instances3.json'
    assert sorted(im['id'] for im in json.loads(paths['novel'].read_text())['images']) == [2]
    with pytest.raises(ValueError, match='not in the annotation file'):
        filter_coco_instances(_ov_coco(), ['unicorn'])
    with pytest.raises(ValueError, match='both base and novel'):
        CategorySplit(('cat',), ('cat',))


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_ov_split_of_generated_dataset(dataset: synthetic.SyntheticPaths) -> None:
    split = load_split(dataset.split_json)
    assert split == synthetic.DEFAULT_SPLIT
    assert (len(split.base), len(split.novel)) == (18, 7)
    seen = json.loads(dataset.ov_split['base'].read_text())
    full = json.loads(dataset.instances_json.read_text())
    novel_ids = {c['id'] for c in full['categories'] if c['name'] in split.novel}
    assert all(a['category_id'] not in novel_ids for a in seen['annotations'])
    base_images = {a['image_id'] for a in full['annotations'] if a['category_id'] not in novel_ids}
    assert {im['id'] for im in seen['images']} == base_images
    # The readers take the split JSONs like any instance file.
    assert len(load_coco_instances(dataset.ov_split['all'], dataset.image_dir)) == NUM_IMAGES


def test_base_panoptic_keeps_stuff_and_base_things_only(dataset: synthetic.SyntheticPaths):
    split = load_split(dataset.split_json)
    base = load_coco_panoptic(dataset.panoptic_base_json, dataset.panoptic_dir, dataset.image_dir)
    full = load_coco_panoptic(dataset.panoptic_json, dataset.panoptic_dir, dataset.image_dir)
    names = {c.name for c in base.categories}
    assert names == set(split.base) | set(synthetic.STUFF_NAMES)
    novel = {c.id for c in full.categories if c.name in split.novel}
    dropped = sum(a.category_id in novel for r in full.records for a in r.annotations)
    kept = sum(len(r.annotations) for r in base.records)
    assert dropped > 0
    assert kept == sum(len(r.annotations) for r in full.records) - dropped


def test_every_colour_and_pattern_is_in_a_base_class() -> None:
    words = {w for name in synthetic.DEFAULT_SPLIT.base for w in name.split(' ')}
    assert words == set(synthetic.COLOURS) | set(synthetic.PATTERNS)
    with pytest.raises(ValueError, match='not synthetic thing classes'):
        write_dataset('/nonexistent', 1, split=CategorySplit(('red circle',), ()))


def _square_scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((60, 80, 3), 40, np.uint8)
    image[10:40, 20:50] = (250, 0, 0)
    masks = np.zeros((1, 60, 80), bool)
    masks[0, 10:40, 20:50] = True
    return image, masks


def test_lsj_keeps_masks_on_their_content() -> None:
    image, masks = _square_scene()
    cfg = LsjCfg(size=64, pad_value=128)
    rng = np.random.default_rng(0)
    seen_flip = seen_pad = seen_inside = 0
    for _ in range(40):
        out, out_masks, transform = large_scale_jitter(image, masks, rng, cfg)
        assert out.shape == (64, 64, 3) and out_masks.shape == (1, 64, 64)
        pad = transform.padding_mask()
        assert (out[pad] == 128).all()
        assert not out_masks[:, pad].any()
        seen_pad += int(pad.any())
        seen_flip += int(transform.flip)
        inside = out_masks[0]
        # Resampling blends the square's border pixels; one pixel in from the mask border
        # (or out from it) the image must be more red (or less red) than halfway.
        kernel = np.ones((3, 3), np.uint8)
        interior = cv2.erode(inside.astype(np.uint8), kernel, borderValue=0).astype(bool)
        exterior = ~cv2.dilate(inside.astype(np.uint8), kernel).astype(bool) & ~pad
        assert (out[interior][:, 0] > 145).all()
        assert (out[exterior][:, 0] < 145).all()
        seen_inside += int(interior.sum() > 20)
        labels = transform.apply_label_map(masks[0].astype(np.int32) * 5, pad_value=-1)
        np.testing.assert_array_equal(labels == 5, inside)
        assert (labels[pad] == -1).all()
    assert 0 < seen_flip < 40 and seen_pad > 0 and seen_inside > 20


def test_lsj_scale_range_and_determinism() -> None:
    cfg = LsjCfg(size=100, min_scale=0.5, max_scale=0.5, flip_prob=0.0)
    transform = sample_lsj(200, 100, np.random.default_rng(1), cfg)
    assert (transform.scaled_height, transform.scaled_width) == (50, 25)
    assert transform.content_shape == (50, 25) and not transform.flip
    big = sample_lsj(10, 10, np.random.default_rng(2), LsjCfg(size=8, min_scale=2, max_scale=2))
    assert (big.scaled_height, big.content_shape) == (16, (8, 8))
    a = sample_lsj(30, 40, np.random.default_rng(5), LsjCfg(size=32))
    assert a == sample_lsj(30, 40, np.random.default_rng(5), LsjCfg(size=32))
    with pytest.raises(ValueError, match='sampled for'):
        a.apply_image(np.zeros((31, 40, 3), np.uint8))
    with pytest.raises(ValueError, match='min_scale'):
        LsjCfg(min_scale=2.0, max_scale=1.0)


def test_scene_generator_is_deterministic_and_consistent() -> None:
    cfg = SceneCfg(height=48, width=80, min_objects=2, max_objects=5)
    a = generate_scene(np.random.default_rng(11), cfg)
    b = generate_scene(np.random.default_rng(11), cfg)
    c = generate_scene(np.random.default_rng(12), cfg)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.panoptic, b.panoptic)
    assert a.segments == b.segments and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (48, 80, 3) and a.image.dtype == np.uint8
    masks = a.masks()
    # Segments tile the image exactly: every pixel belongs to one segment.
    np.testing.assert_array_equal(masks.sum(0), 1)
    assert all(m.any() for m in masks)
    for s in a.segments:
        name = synthetic.CATEGORIES[s.category_id - 1].name
        assert name in a.caption
        assert s.is_thing == (name in synthetic.THING_NAMES)


def test_write_dataset_is_reproducible(tmp_path: Path, dataset: synthetic.SyntheticPaths) -> None:
    again = write_dataset(tmp_path / 'again', 3, SceneCfg(), seed=3)
    first = json.loads(dataset.panoptic_json.read_text())
    second = json.loads(again.panoptic_json.read_text())
    assert second['annotations'] == first['annotations'][:3]
    assert second['images'] == first['images'][:3]
    assert (again.image_dir / '000002.png').read_bytes() == (
        dataset.image_dir / '000002.png'
    ).read_bytes()


def test_synthetic_cli(tmp_path: Path) -> None:
    assert cli_main(['synth', str(tmp_path / 'd'), '--num-images', '2', '--size', '32']) == 0
    data = load_coco_panoptic(
        tmp_path / 'd' / 'annotations' / 'panoptic.json',
        tmp_path / 'd' / 'panoptic',
        tmp_path / 'd' / 'images',
    )
    assert len(data) == 2 and data[0].load_image().shape == (32, 32, 3)
