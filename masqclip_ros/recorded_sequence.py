"""A sequence folder of ``masqclip synth --sequence`` (formats: ``masqclip.data.sequences``),
read for playback: colour and registered depth frames in time order, the frame rate, the
camera_info fields, and each frame's ground-truth objects. No ROS.
"""

from __future__ import annotations

import configparser
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masqclip.data.coco import ImageRecord, load_coco_instances
from masqclip.data.io import read_image, read_raw_labels


@dataclass(frozen=True)
class GroundTruthObject:
    """One annotated object of one frame.

    :param label: its class name.
    :param box: (x, y, width, height) of its visible pixels.
    :param area: its visible pixels.
    :param depth_m: median registered depth over its visible pixels, metres.
    """

    label: str
    box: tuple[int, int, int, int]
    area: int
    depth_m: float


@dataclass(frozen=True)
class RecordedSequence:
    """A sequence folder, its frames numbered from 1 as its files are.

    :param root: the folder.
    :param fps: frames per second (``seqinfo.ini``).
    :param camera_info: the ``sensor_msgs/CameraInfo`` fields (``camera_info.json``).
    :param records: one per frame to play, in time order (``annotations/instances.json``).
    :param labels: category id -> class name.
    """

    root: Path
    fps: float
    camera_info: dict
    records: tuple[ImageRecord, ...]
    labels: dict[int, str]

    def __len__(self) -> int:
        return len(self.records)

    def frame_number(self, index: int) -> int:
        """The number of the ``index``-th frame played (from 0), as in its file name."""
        return self.records[index].image_id

    def color(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB."""
        return read_image(self.records[index].image_path)

    def depth(self, index: int) -> np.ndarray:
        """uint16 (H, W) millimetres, 0 = no measurement."""
        return read_raw_labels(self.root / 'depth' / f'{self._stem(index)}.png')

    def objects(self, index: int) -> list[GroundTruthObject]:
        """The frame's annotated objects, largest visible area first."""
        depth = self.depth(index)
        objects = []
        for annotation in self.records[index].annotations:
            x, y, w, h = (round(v) for v in annotation.bbox)
            millimetres = depth[annotation.mask() & (depth > 0)]
            objects.append(GroundTruthObject(
                self.labels[annotation.category_id], (x, y, w, h), round(annotation.area),
                float(np.median(millimetres)) / 1000 if millimetres.size else float('nan'),
            ))  # fmt: skip
        return sorted(objects, key=lambda o: -o.area)

    def labels_in_view(self) -> set[str]:
        """The class names annotated in at least one frame played."""
        return {self.labels[a.category_id] for record in self.records for a in record.annotations}

    def _stem(self, index: int) -> str:
        return Path(self.records[index].image_path).stem


def load_sequence(root: str | Path, frames: int | None = None) -> RecordedSequence:
    """Read a sequence folder.

    :param root: the folder ``write_sequence`` wrote.
    :param frames: play only the first this many frames; all when None.
    :raises FileNotFoundError: a file of the layout is missing.
    """
    root = Path(root)
    seqinfo = configparser.ConfigParser()
    if not seqinfo.read(root / 'seqinfo.ini'):
        raise FileNotFoundError(f'{root / "seqinfo.ini"} is missing: is {root} a sequence?')
    dataset = load_coco_instances(root / 'annotations' / 'instances.json', root / 'images')
    # Frame files are named by number, so their names sort in time order.
    records = sorted(dataset.records, key=lambda record: Path(record.image_path).name)
    return RecordedSequence(
        root=root,
        fps=seqinfo.getfloat('Sequence', 'frameRate'),
        camera_info=json.loads((root / 'camera_info.json').read_text()),
        records=tuple(records[:frames]),
        labels={category.id: category.name for category in dataset.categories},
    )
