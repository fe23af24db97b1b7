"""Mask-token classification accuracy on ground-truth thing masks (25-way, no background), by
fill pattern and by the object's share of the image: how well the model's CLIP reads objects,
apart from its proposals. --view crop gives CLIP the middle square of the network input
instead of the squashed padded canvas (the objects in it), to see what the squash costs.
Usage: gt_mask_accuracy.py CHECKPOINT DATA_ROOT [--max-images N] [--view canvas|crop]"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F

from masqclip.data.synthetic import PATTERNS
from masqclip.factory import build_model
from masqclip.inference.transforms import PreprocessCfg, image_to_tensor
from masqclip.training.data import load_dataset

AREA_BUCKETS = ((0.02, 'under 2 %'), (0.06, '2-6 %'), (1.01, 'over 6 %'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint')
    parser.add_argument('data_root')
    parser.add_argument('--max-images', type=int, default=0, help='evenly spaced; 0 = all')
    parser.add_argument('--view', choices=('canvas', 'crop'), default='canvas')
    args = parser.parse_args()
    network, config = build_model(checkpoint=args.checkpoint)
    network.eval()
    data = {'root': args.data_root, 'format': 'panoptic', 'images': 'images',
            'annotations': 'annotations/panoptic.json', 'panoptic': 'panoptic'}  # fmt: skip
    dataset = load_dataset(data)
    things = [c for c in dataset.categories if c.is_thing]
    index = {c.id: i for i, c in enumerate(things)}
    text = network.encode_classes([[c.name] for c in things])
    records = dataset.records
    if args.max_images:
        records = records[:: max(1, len(records) // args.max_images)][: args.max_images]
    right, total = Counter(), Counter()
    with torch.no_grad():
        for record in records:
            kept = [a for a in record.annotations if a.is_thing]
            if not kept:
                continue
            spec = PreprocessCfg.of(config).plan(record.height, record.width)
            image = image_to_tensor(record.load_image(), spec)
            masks = torch.stack([torch.from_numpy(a.mask()) for a in kept]).float()[None]
            share = masks.mean((2, 3))[0]
            h, w = spec.resized
            masks = F.interpolate(masks, size=(h, w), mode='bilinear')
            if args.view == 'crop':
                left = (w - h) // 2
                image = image[..., :h, left : left + h]
                masks = masks[..., left : left + h]
                canvas = masks
            else:
                canvas = torch.zeros(1, len(kept), *spec.padded)
                canvas[..., :h, :w] = masks
            visible = canvas.flatten(2).amax(2)[0] > 0.5
            logits = F.interpolate(canvas, scale_factor=0.25, mode='bilinear') - 0.5
            embeddings = network.mask_clip(network.clip_input(image), logits)[0]
            predicted = (embeddings @ text.T).argmax(-1)
            for k, annotation in enumerate(kept):
                if not visible[k]:
                    continue
                ok = int(predicted[k]) == index[annotation.category_id]
                area = next(name for bound, name in AREA_BUCKETS if share[k] < bound)
                name = things[index[annotation.category_id]].name
                for key in ('all', name.split(' ')[1], area):
                    right[key] += ok
                    total[key] += 1
    print(f'{args.data_root} ({len(records)} images, {args.view})')
    for key in ('all', *PATTERNS, *(name for _, name in AREA_BUCKETS)):
        if total[key]:
            print(f'  {key:10s} {100 * right[key] / total[key]:5.1f} % of {total[key]}')


if __name__ == '__main__':
    main()
