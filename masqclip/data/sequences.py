"""Procedural sequences: the scene generator's objects moving past a slowly panning camera,
with tracking, depth and camera ground truth.

A sequence has a world, stuff bands larger than a frame by the camera's travel, and N objects
drawn with the scene vocabulary (25 colour x fill-pattern classes over 4 stuff textures) and
the same drawing code as ``generate_scene``. Each object keeps its class, look, silhouette and
depth for the whole sequence; it moves in a straight line, spins, and bounces: sideways off
walls 1.1 object radii beyond the world (an object that gets there has left every frame, and
comes back), up and down off the world's top and bottom edges. Objects are painted far to
near: a nearer one occludes a farther one. The camera pans (a small rotation: the image
shifts, without parallax) along (1 - cos) / 2 curves. Frame ``k`` shows time ``k / fps`` and
is a pure function of the plan and ``k`` (``render_frame``), so any frame can be regenerated
alone.

``write_sequence`` writes (frame ``k``, from 1, is ``00000k``: names sort in time order)::

    images/00000k.jpg            colour, JPEG (RGB)
    panoptic/00000k.png          COCO panoptic PNG, id = R + 256 G + 256^2 B, 0 = void
    depth/00000k.png             registered depth, 16UC1 PNG in millimetres
    annotations/instances.json   COCO instances (RLE masks) with COCO-video (TAO) fields
    annotations/panoptic.json    COCO panoptic JSON
    split.json                   the base / novel thing names (for the _base/_novel metrics)
    gt/gt.txt, seqinfo.ini       MOT-challenge ground truth and sequence info
    camera_info.json             sensor_msgs/CameraInfo fields of the colour and depth images

- Panoptic ids are stable: stuff band ``b`` is ``b + 1``, the object of track ``t`` is
  ``B + t`` (B stuff bands). An object showing fewer than ``min_area`` of the frame (a sliver
  at the border or behind a nearer object) is void there and absent from the annotations of
  that frame, the rule that culls single-scene objects; it keeps its track id when it shows
  again. ``masqclip eval --data-root DIR --format panoptic --annotations
  annotations/panoptic.json --split split.json`` evaluates the frames like any synthetic set.
- COCO-video fields: ``videos`` (one: ``id``, ``name``, ``width``, ``height``, ``fps``,
  ``num_frames``), ``images[i].video_id`` and ``frame_index`` (from 0), ``annotations[j]`` and
  panoptic ``segments_info[j]`` carry ``track_id``, and ``tracks`` lists ``id``,
  ``category_id``, ``video_id`` and ``depth_m``. ``info`` records the seed, the generator
  settings and the ``command`` that regenerates the sequence.
- ``gt/gt.txt`` (MOT16/17 ground truth, read by ``motmetrics.io.loadtxt(path, fmt='mot16')``):
  one line per annotated object per frame, ``frame,id,bb_left,bb_top,bb_width,bb_height,
  conf,class,visibility``: frame = image id, id = track id, the box of the visible pixels in
  1-based pixel coordinates, conf 1, class = category id (1..25), visibility = the fraction of
  the silhouette in view (occlusion and frame border).
- Depth: the stuff lies on a fronto-parallel plane at ``background_depth``, each object at its
  own depth in ``object_depth`` (no two alike), so the painting order is the depth order.
- ``camera_info.json``: ``header.frame_id``, ``height``, ``width``, ``distortion_model``
  (plumb_bob), ``d`` (zeros), ``k`` (3x3 row-major), ``r``, ``p`` (3x4), ``binning_x``,
  ``binning_y``, ``roi``: a pinhole of ``horizontal_fov``, no distortion.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from masqclip.data.ov_split import CategorySplit
from masqclip.data.synthetic import (
    DEFAULT_SPLIT,
    THING_NAMES,
    Background,
    CocoPaths,
    CocoWriter,
    Look,
    Scene,
    SceneCfg,
    SceneSegment,
    check_split,
    finish_scene,
    paint_object,
    pixel_grid,
    posed,
    sample_background,
    sample_look,
    sample_shape,
    silhouette_mask,
    texture_unit,
    write_encoded,
)

CAMERA_FRAME = 'camera_optical_frame'
JPEG_QUALITY = 55
# The smallest PNGs: panoptic and depth maps are flat regions, level 9 halves them.
PNG_COMPRESSION = 9


@dataclass(frozen=True)
class SequenceCfg:
    """Sequence settings.

    :param scene: frame size, object count and size, stuff count and ``min_area`` (its
        ``min_visible`` is not used: objects are never culled, only occluded).
    :param fps: frames per second.
    :param seconds: duration; the sequence has ``round(seconds * fps)`` frames.
    :param speed: range of an object's speed, in min(height, width) per second.
    :param spin: range of an object's angular speed, radians per second (either way).
    :param pan: the camera's travel as fractions of the frame's width and height.
    :param pan_period: seconds for the camera to go and come back, along x and along y.
    :param object_depth: range of the objects' depths, metres.
    :param background_depth: depth of the stuff's plane, metres.
    :param horizontal_fov: the camera's horizontal field of view, degrees.
    """

    scene: SceneCfg = SceneCfg(480, 640, min_objects=4, max_objects=6)
    fps: float = 10.0
    seconds: float = 15.0
    speed: tuple[float, float] = (0.15, 0.4)
    spin: tuple[float, float] = (0.2, 0.8)
    pan: tuple[float, float] = (0.25, 0.06)
    pan_period: tuple[float, float] = (30.0, 20.0)
    object_depth: tuple[float, float] = (1.0, 3.0)
    background_depth: float = 4.0
    horizontal_fov: float = 60.0

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.seconds <= 0:
            raise ValueError('SequenceCfg needs fps > 0 and seconds > 0')
        if not 0 < self.object_depth[0] < self.object_depth[1] < self.background_depth < 65:
            raise ValueError('SequenceCfg needs 0 < object depths < background_depth < 65 m')
        if not 0 < self.horizontal_fov < 180:
            raise ValueError('SequenceCfg needs a horizontal_fov in (0, 180) degrees')

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def travel(self) -> tuple[int, int]:
        """The camera's travel over the world, (x, y) pixels."""
        return round(self.pan[0] * self.scene.width), round(self.pan[1] * self.scene.height)


@dataclass(frozen=True)
class Track:
    """One object of a sequence, for its whole life.

    :param track_id: 1, 2, ...
    :param look: its class, colour and pattern phase.
    :param shape: float (P, 2) its silhouette around its centre, unrotated.
    :param depth: metres from the camera.
    :param start: its centre in the world at t = 0, (x, y) pixels.
    :param velocity: (x, y) pixels per second.
    :param angle: its rotation at t = 0, radians.
    :param spin: radians per second.
    :param box: (x_min, y_min, x_max, y_max) in the world, the walls its centre bounces off.
    """

    track_id: int
    look: Look
    shape: np.ndarray
    depth: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    spin: float
    box: tuple[float, float, float, float]

    def pose(self, t: float) -> tuple[np.ndarray, float]:
        """Its centre in the world, float (2,) x, y, and its rotation at time ``t``."""
        lo, hi = np.array(self.box[:2]), np.array(self.box[2:])
        free = np.array(self.start) + np.array(self.velocity) * t
        return _bounce(free, lo, hi), self.angle + self.spin * t


def _bounce(position: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold a straight-line position into [lo, hi] as a ball bouncing between the walls."""
    span = hi - lo
    return hi - np.abs((position - lo) % (2 * span) - span)


@dataclass(frozen=True)
class SequencePlan:
    """Everything random about a sequence, drawn before its first frame.

    :param cfg: the settings.
    :param background: the world's stuff, ``cfg.travel`` larger than a frame.
    :param tracks: the objects, far to near (their painting order).
    """

    cfg: SequenceCfg
    background: Background
    tracks: tuple[Track, ...]


@dataclass(frozen=True)
class SequenceFrame:
    """One frame of a sequence.

    :param index: from 0; the frame shows time ``index / fps``.
    :param scene: image, panoptic ids (0 = void), segments (objects carry their track ids,
        in painting order) and caption.
    :param depth: uint16 (H, W) millimetres, registered to the image.
    :param visibility: track id -> the fraction of its silhouette in view, for the
        annotated objects.
    """

    index: int
    scene: Scene
    depth: np.ndarray
    visibility: dict[int, float]


def _stratified_depths(
    rng: np.random.Generator, count: int, near: float, far: float
) -> np.ndarray:
    """``count`` depths in [near, far], one in each of ``count`` equal strata (no ties)."""
    strata = rng.permutation(count) + rng.uniform(0.15, 0.85, count)
    return near + (far - near) * strata / count


def _sample_track(
    rng: np.random.Generator,
    cfg: SequenceCfg,
    track_id: int,
    depth: float,
    world: tuple[int, int],
    unit: float,
) -> Track:
    size = min(cfg.scene.height, cfg.scene.width)
    shape = sample_shape(rng, rng.uniform(*cfg.scene.object_scale) * size)
    look = sample_look(rng, int(rng.integers(len(THING_NAMES))), unit)
    # At the side walls the whole silhouette lies outside the world, so outside every frame.
    reach = 1.1 * float(np.hypot(shape[:, 0], shape[:, 1]).max())
    width, height = world
    start = (rng.uniform(0, width), rng.uniform(0, height))
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(*cfg.speed) * size
    spin = rng.uniform(*cfg.spin) * rng.choice((-1.0, 1.0))
    return Track(
        track_id=track_id,
        look=look,
        shape=shape,
        depth=float(depth),
        start=start,
        velocity=(speed * np.cos(heading), speed * np.sin(heading)),
        angle=rng.uniform(0, 2 * np.pi),
        spin=float(spin),
        box=(-reach, 0.0, width + reach, float(height)),
    )


def plan_sequence(rng: np.random.Generator, cfg: SequenceCfg) -> SequencePlan:
    """Draw a sequence's world and objects.

    :param rng: the random generator (the only source of randomness).
    :param cfg: the settings.
    """
    height, width = cfg.scene.height, cfg.scene.width
    world = (width + cfg.travel[0], height + cfg.travel[1])
    yy, xx = pixel_grid(world[1], world[0])
    unit = texture_unit(height, width)  # the world is larger, its textures are not coarser
    background = sample_background(rng, cfg.scene, yy, xx, unit, grain=unit)
    count = int(rng.integers(cfg.scene.min_objects, cfg.scene.max_objects + 1))
    depths = _stratified_depths(rng, count, *cfg.object_depth)
    tracks = [_sample_track(rng, cfg, k + 1, depths[k], world, unit) for k in range(count)]
    return SequencePlan(cfg, background, tuple(sorted(tracks, key=lambda t: -t.depth)))


def camera_offset(cfg: SequenceCfg, t: float) -> tuple[int, int]:
    """The frame's top-left corner in the world at time ``t``, (x, y) pixels."""
    return tuple(
        round(travel * (1 - math.cos(2 * math.pi * t / period)) / 2)
        for travel, period in zip(cfg.travel, cfg.pan_period, strict=True)
    )


def _millimetres(metres: float) -> int:
    return round(1000 * metres)


def _object_coordinates(
    px: np.ndarray, py: np.ndarray, cx: float, cy: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in the object's own frame: its pattern moves and turns with it."""
    dx, dy = px - cx, py - cy
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, dy * cos - dx * sin


def _silhouette_pixels(outline: np.ndarray) -> int:
    """How many pixels a posed silhouette covers, in the frame or out of it."""
    corner = np.floor(outline.min(0)) - 1
    width, height = (np.ceil(outline.max(0) - corner) + 2).astype(int)
    return int(silhouette_mask(outline - corner, height, width).sum())


def render_frame(plan: SequencePlan, index: int) -> SequenceFrame:
    """Draw frame ``index`` (from 0) of a planned sequence."""
    cfg = plan.cfg
    height, width = cfg.scene.height, cfg.scene.width
    t = index / cfg.fps
    left, top = camera_offset(cfg, t)
    window = np.s_[top : top + height, left : left + width]
    image = plan.background.image[window].copy()
    panoptic = (plan.background.bands[window] + 1).astype(np.int32)
    depth = np.full((height, width), _millimetres(cfg.background_depth), np.uint16)
    segments = plan.background.segments()
    yy, xx = pixel_grid(height, width)
    unit = texture_unit(height, width)
    silhouettes = {}
    for track in plan.tracks:
        centre, angle = track.pose(t)
        cx, cy = centre[0] - left, centre[1] - top
        outline = posed(track.shape, angle, cx, cy)
        mask = silhouette_mask(outline, height, width)
        if not mask.any():
            continue
        px, py = _object_coordinates(xx[mask], yy[mask], cx, cy, angle)
        paint_object(image, track.look, outline, mask, px, py, unit)
        segment_id = len(plan.background.stuff) + track.track_id
        panoptic[mask] = segment_id
        depth[mask] = _millimetres(track.depth)
        segments.append(SceneSegment(segment_id, track.look.thing + 1, True, track.track_id))
        silhouettes[track.track_id] = _silhouette_pixels(outline)
    scene = finish_scene(image, panoptic, segments, cfg.scene.min_area * height * width)
    visibility = {
        s.track_id: min(1.0, np.count_nonzero(scene.panoptic == s.id) / silhouettes[s.track_id])
        for s in scene.segments
        if s.is_thing
    }
    return SequenceFrame(index, scene, depth, visibility)


def camera_info(cfg: SequenceCfg) -> dict:
    """The ``sensor_msgs/CameraInfo`` fields of the sequence's (registered) camera."""
    height, width = cfg.scene.height, cfg.scene.width
    f = (width / 2) / math.tan(math.radians(cfg.horizontal_fov) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return {
        'header': {'frame_id': CAMERA_FRAME},
        'height': height,
        'width': width,
        'distortion_model': 'plumb_bob',
        'd': [0.0] * 5,
        'k': [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0],
        'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        'p': [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        'binning_x': 0,
        'binning_y': 0,
        'roi': {'x_offset': 0, 'y_offset': 0, 'height': 0, 'width': 0, 'do_rectify': False},
    }


def _mot_lines(annotations: list[dict], visibility: dict[int, float]) -> list[str]:
    """One frame's MOT-challenge ground-truth lines, by track id."""
    lines = []
    for a in sorted(annotations, key=lambda a: a['track_id']):
        x, y, w, h = (int(v) for v in a['bbox'])
        vis = visibility[a['track_id']]
        lines.append(f'{a["image_id"]},{a["track_id"]},{x + 1},{y + 1},{w},{h},1,'
                     f'{a["category_id"]},{vis:.3f}\n')  # fmt: skip
    return lines


def _seqinfo(name: str, cfg: SequenceCfg) -> str:
    return (
        f'[Sequence]\nname={name}\nimDir=images\nframeRate={cfg.fps:g}\n'
        f'seqLength={cfg.num_frames}\nimWidth={cfg.scene.width}\n'
        f'imHeight={cfg.scene.height}\nimExt=.jpg\n'
    )


@dataclass(frozen=True)
class SequencePaths(CocoPaths):
    """Where ``write_sequence`` put things: ``CocoPaths`` (images are JPEG) and

    :param depth_dir: ``root/depth``, one 16UC1 millimetre PNG per frame.
    :param mot_gt: ``root/gt/gt.txt``, MOT-challenge ground truth.
    :param seqinfo: ``root/seqinfo.ini``, MOT-challenge sequence info.
    :param camera_info: ``root/camera_info.json``.
    """

    depth_dir: Path
    mot_gt: Path
    seqinfo: Path
    camera_info: Path


def cli_cfg(
    height: int, width: int, min_objects: int, max_objects: int, fps: float, seconds: float
) -> SequenceCfg:
    """The settings ``masqclip synth --sequence`` gives (the others stay at their defaults)."""
    scene = dataclasses.replace(
        SequenceCfg().scene,
        height=height,
        width=width,
        min_objects=min_objects,
        max_objects=max_objects,
    )
    return SequenceCfg(scene, fps=fps, seconds=seconds)


def regenerating_command(
    out_dir: str | Path, cfg: SequenceCfg, seed: int, jpeg_quality: int
) -> str | None:
    """The ``masqclip synth`` command that writes this sequence again; None when ``cfg``
    has settings the command line cannot give."""
    s = cfg.scene
    if cfg != cli_cfg(s.height, s.width, s.min_objects, s.max_objects, cfg.fps, cfg.seconds):
        return None
    return (
        f'masqclip synth {shlex.quote(str(out_dir))} --sequence --seconds {cfg.seconds:g} '
        f'--fps {cfg.fps:g} --size {s.width}x{s.height} --min-objects {s.min_objects} '
        f'--max-objects {s.max_objects} --seed {seed} --jpeg-quality {jpeg_quality}'
    )


def write_sequence(
    out_dir: str | Path,
    cfg: SequenceCfg = SequenceCfg(),
    seed: int = 0,
    split: CategorySplit = DEFAULT_SPLIT,
    jpeg_quality: int = JPEG_QUALITY,
) -> SequencePaths:
    """Generate one sequence and write it with its ground truth (formats: module docstring).

    The sequence is drawn from ``np.random.default_rng(seed)``.

    :param out_dir: the sequence folder (created; existing files are overwritten).
    :param cfg: the settings.
    :param seed: the sequence seed.
    :param split: base / novel thing names (each one of ``THING_NAMES``).
    :param jpeg_quality: of the colour frames (1-100).
    :return: the paths written.
    """
    check_split(split)
    root = Path(out_dir)
    paths = SequencePaths(
        **CocoPaths.layout(root),
        depth_dir=root / 'depth',
        mot_gt=root / 'gt' / 'gt.txt',
        seqinfo=root / 'seqinfo.ini',
        camera_info=root / 'camera_info.json',
    )
    writer = CocoWriter(paths, jpeg_quality, PNG_COMPRESSION)
    paths.depth_dir.mkdir(parents=True, exist_ok=True)
    paths.mot_gt.parent.mkdir(parents=True, exist_ok=True)
    plan = plan_sequence(np.random.default_rng(seed), cfg)
    mot = []
    for index in range(cfg.num_frames):
        frame = render_frame(plan, index)
        annotations = writer.add(frame.scene, video_id=1, frame_index=index)
        write_encoded(
            paths.depth_dir / f'{index + 1:06d}.png',
            frame.depth,
            (cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION),
        )
        mot += _mot_lines(annotations, frame.visibility)
    name = f'masqclip-synthetic-{seed}'
    info = {
        'description': 'masqclip procedural sequence',
        'seed': seed,
        'command': regenerating_command(out_dir, cfg, seed, jpeg_quality),
        'config': dataclasses.asdict(cfg),
    }
    video = {'id': 1, 'name': name, 'width': cfg.scene.width, 'height': cfg.scene.height,
             'fps': cfg.fps, 'num_frames': cfg.num_frames}  # fmt: skip
    tracks = [
        {'id': t.track_id, 'category_id': t.look.thing + 1, 'video_id': 1, 'depth_m': t.depth}
        for t in sorted(plan.tracks, key=lambda t: t.track_id)
    ]
    writer.close(info, split, videos=[video], tracks=tracks)
    paths.mot_gt.write_text(''.join(mot))
    paths.seqinfo.write_text(_seqinfo(name, cfg))
    paths.camera_info.write_text(json.dumps(camera_info(cfg), indent=1) + '\n')
    return paths


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """The ``masqclip synth`` options of sequences."""
    group.add_argument(
        '--sequence',
        action='store_true',
        help='write one moving sequence (track ids, depth, camera_info) instead of scenes',
    )
    group.add_argument(
        '--seconds', type=float, default=SequenceCfg.seconds, help='duration (%(default)s)'
    )
    group.add_argument(
        '--fps', type=float, default=SequenceCfg.fps, help='frames per second (%(default)s)'
    )
    group.add_argument(
        '--jpeg-quality', type=int, default=JPEG_QUALITY, help='of the colour frames (%(default)s)'
    )


def cfg_from_args(args: argparse.Namespace) -> SequenceCfg:
    """The settings of a ``masqclip synth --sequence`` command line."""
    default = SequenceCfg().scene
    height, width = args.size or (default.height, default.width)
    return cli_cfg(
        height,
        width,
        default.min_objects if args.min_objects is None else args.min_objects,
        default.max_objects if args.max_objects is None else args.max_objects,
        args.fps,
        args.seconds,
    )


def run(args: argparse.Namespace, split: CategorySplit) -> int:
    """``masqclip synth --sequence``."""
    cfg = cfg_from_args(args)
    paths = write_sequence(args.out_dir, cfg, args.seed, split, args.jpeg_quality)
    print(f'wrote {cfg.num_frames} frames ({cfg.seconds:g} s at {cfg.fps:g} fps) to {paths.root}')
    return 0
