"""Write the demo's training set for stages 1 and 2: the 64-px scenes of `masqclip synth OUT
--num-images SCENES --seed SEED` (the same images), followed by camera frames: one frame each of
random sequences, drawn at the size the model's input gives a 640x480 camera frame
(masqclip_demo: 85 x 64; objects partly out of view and occluding one another, as the ROS node
gets them). --model names the architecture (name or .json path) whose preprocessing and CLIP
input set those sizes (docs/demo_model.md tried a 96-px variant: 128 x 96, CLIP 96 x 96).
Frame k's sequence comes from np.random.default_rng([SEED, 1, k]), never the single-integer
seed of `masqclip synth --sequence --seed N`, so no held-out sequence is trained on.
With --clip-view the camera frames are stored as the model's CLIP receives them (masqclip_demo:
on the black 96 x 64 canvas, squashed to 64 x 64; the panoptic map alike, the padding void):
MasQ-Tuning then trains the mask tokens on CLIP's view of camera frames.
Usage: synth_demo_data.py OUT [--scenes 4000] [--camera-frames 4000] [--seed 0] [--clip-view]
       [--model masqclip_demo]"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np

from masqclip.data.sequences import SequenceCfg
from masqclip.data.synthetic import Scene, SceneCfg, finish_scene, generate_scene, write_scenes
from masqclip.factory import get_model_config
from masqclip.inference.transforms import ResizeSpec
from masqclip.training.data import camera_frame, camera_input, clip_view

CAMERA_STREAM = 1


def as_clip_sees_it(frame: Scene, spec: ResizeSpec, size: int) -> Scene:
    """A camera frame squashed as ``data.clip_view`` squashes it; the panoptic map by nearest
    neighbour, its padding void (0)."""
    image = clip_view(frame.image, spec, size).round().clamp(0, 255).permute(1, 2, 0).numpy()
    h, w = spec.resized
    canvas = np.zeros(spec.padded, np.int32)
    canvas[:h, :w] = frame.panoptic
    panoptic = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_NEAREST)
    return finish_scene(image.astype(np.float32), panoptic, frame.segments, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--scenes', type=int, default=4000)
    parser.add_argument('--camera-frames', type=int, default=4000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--clip-view', action='store_true')
    parser.add_argument(
        '--model', default='masqclip_demo', help='architecture: name or .json path'
    )
    args = parser.parse_args()
    config = get_model_config(args.model)
    spec = camera_input(config)
    clip_size = config['clip']['vision_cfg']['image_size']
    objects = SequenceCfg().scene.min_objects, SequenceCfg().scene.max_objects
    scenes = (
        generate_scene(np.random.default_rng([args.seed, i]), SceneCfg())
        for i in range(args.scenes)
    )
    frames = (
        camera_frame(np.random.default_rng([args.seed, CAMERA_STREAM, k]), spec.resized, *objects)
        for k in range(args.camera_frames)
    )
    if args.clip_view:
        frames = (as_clip_sees_it(frame, spec, clip_size) for frame in frames)
    info = {
        'description': 'masqclip procedural scenes, then camera frames',
        'seed': args.seed,
        'scenes': args.scenes,
        'camera_frames': args.camera_frames,
        'clip_view': args.clip_view,
    }
    write_scenes(args.out_dir, itertools.chain(scenes, frames), info)
    print(f'wrote {args.scenes} scenes and {args.camera_frames} camera frames to {args.out_dir}')


if __name__ == '__main__':
    main()
