"""Measure the speed claims on this machine and print them (random weights are fine for timing).

Ratios are measured within one run, interleaved, so a busy machine slows both sides alike:
- mask_token_vs_crop_speedup: classify Q proposals with mask tokens (one CLIP pass) vs crop
  each proposal's box and run the same CLIP on every crop at its input size (one batch);
- vocab_847_vs_20_latency_ratio: predictor latency with instance + panoptic output at 847 vs
  20 classes, text embeddings cached;
- semantic_vocab_847_vs_20_latency_ratio: the same with semantic output only;
- stages_s: the predictor's per-stage breakdown, with the image model split into proposer and
  mask-token CLIP;
- onnxruntime_vs_torch_speedup: the image path on onnxruntime (CPU) vs torch eager;
- efficiency: this machine's fp32 (and bf16) GEMM rate, the image path's FLOPs, each backend's
  and precision's rate as a share of the GEMM rate, and the operators the torch time goes to
  (printed as a table before the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from masqclip.export import DEFAULT_CACHE_DIR
from masqclip.factory import build_model
from masqclip.inference.predictor import Predictor
from masqclip.inference.vocabulary import Vocabulary
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.tools.bench_cpu import measure_efficiency
from masqclip.tools.benchmarking import GEMM_SIZE, efficiency_table, interleaved_medians, timer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--model',
        default='masqclip_r50_vitb16',
        help='architecture to time (default: %(default)s)',
    )
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--size', default='640x480', help='frame WxH (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per measurement')
    parser.add_argument(
        '--gemm-size',
        type=int,
        default=GEMM_SIZE,
        help='side of the square matrix product that measures the GEMM rate (%(default)s)',
    )
    parser.add_argument(
        '--inductor',
        action='store_true',
        help='also time the inductor backend, compiled first with its cache in the engine '
        'cache folder (about 90 s a precision the first time, seconds after)',
    )
    parser.add_argument('--json', help='also write the figures to this JSON file')


def run(args: argparse.Namespace) -> int:
    width, height = (int(v) for v in args.size.lower().split('x'))
    torch.manual_seed(0)
    network, config = build_model(args.model)
    network = network.to(args.device)
    predictor = Predictor.from_network(network, config, args.device)
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    small, large = _vocabulary(20), _vocabulary(847)
    predictor.set_vocabulary(large)  # both vocabularies cached before timing
    predictor.set_vocabulary(small)

    def latency(vocabulary: Vocabulary, tasks: tuple[str, ...]) -> Callable[[], float]:
        def once() -> float:
            predictor.set_vocabulary(vocabulary)
            start = time.perf_counter()
            predictor.predict(frame, tasks=tasks)
            return time.perf_counter() - start

        return once

    predictor.predict(frame)  # warm-up
    instance_panoptic = ('instance', 'panoptic')
    t_small, t_large, s_small, s_large = interleaved_medians(
        [
            latency(small, instance_panoptic),
            latency(large, instance_panoptic),
            latency(small, ('semantic',)),
            latency(large, ('semantic',)),
        ],
        args.repeats,
    )
    tokens_s, crops_s = _mask_tokens_vs_crops(network, predictor, frame, args.repeats)
    predictor.set_vocabulary(small)  # the breakdown is at 20 classes, as the README says
    stages = _stage_breakdown(predictor, network, frame, args.repeats)
    onnxruntime = measure_efficiency(
        args.model,
        (height, width),
        args.repeats,
        gemm_size=args.gemm_size,
        inductor_cache_dir=DEFAULT_CACHE_DIR if args.inductor else None,
    )
    efficiency = onnxruntime.pop('efficiency')
    figures = {
        'model': args.model,
        'device': args.device,
        'frame': f'{width}x{height}',
        'num_proposals': int(network.proposer.decoder.query_feat.weight.shape[0]),
        'mask_token_vs_crop_speedup': crops_s / tokens_s,
        'mask_tokens_s': tokens_s,
        'crops_s': crops_s,
        'vocab_847_vs_20_latency_ratio': t_large / t_small,
        'latency_20_classes_s': t_small,
        'latency_847_classes_s': t_large,
        'semantic_vocab_847_vs_20_latency_ratio': s_large / s_small,
        'semantic_latency_20_classes_s': s_small,
        'semantic_latency_847_classes_s': s_large,
        'stages_s': stages,
        'onnxruntime_vs_torch_speedup': onnxruntime['onnxruntime_vs_torch_speedup'],
        'onnxruntime': onnxruntime,
        'efficiency': efficiency,
        'environment': {
            'torch': torch.__version__,
            'threads': torch.get_num_threads(),
            'cpu': efficiency['cpu'],
        },
    }
    print(efficiency_table(efficiency), end='\n\n')
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def _vocabulary(size: int) -> Vocabulary:
    return Vocabulary.from_names([f'object number {i}' for i in range(size)])


def _mask_tokens_vs_crops(
    network: MasQCLIP, predictor: Predictor, frame: np.ndarray, repeats: int
) -> tuple[float, float]:
    images, image_sizes, _ = predictor.preprocess(frame)
    with torch.inference_mode():
        mask_logits = network.proposer(images, image_sizes)['pred_masks']
        clip_input = network.clip_input(images)
        boxes = _proposal_boxes(mask_logits[0], images.shape[-2:])
        size = network.clip_image_size

        def classify_crops() -> None:
            batch = torch.cat(
                [
                    F.interpolate(
                        images[:, :, y0:y1, x0:x1],
                        size=(size, size),
                        mode='bicubic',
                        align_corners=False,
                    )
                    for x0, y0, x1, y1 in boxes
                ]
            )
            network.mask_clip.encode_image((batch - network.clip_mean) / network.clip_std)

        mask_tokens = timer(network.mask_clip, clip_input, mask_logits)
        mask_tokens()  # warm-up
        return tuple(
            interleaved_medians([mask_tokens, timer(classify_crops)], max(1, repeats // 2))
        )


def _proposal_boxes(mask_logits: torch.Tensor, size: torch.Size) -> list[tuple[int, ...]]:
    """Each proposal's box in input pixels; the whole image where a random-weight mask is
    empty (the crop baseline's cost does not depend on the box)."""
    masks = F.interpolate(mask_logits[None], size=tuple(size), mode='bilinear')[0] > 0
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            boxes.append((0, 0, size[1], size[0]))
        else:
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return boxes


def _stage_breakdown(
    predictor: Predictor, network: MasQCLIP, frame: np.ndarray, repeats: int
) -> dict[str, float]:
    runs = [predictor.predict(frame).timings for _ in range(repeats)]
    stages = {name: statistics.median(t[name] for t in runs) for name in runs[0]}
    images, image_sizes, _ = predictor.preprocess(frame)
    with torch.inference_mode():
        mask_logits = network.proposer(images, image_sizes)['pred_masks']
        clip_input = network.clip_input(images)
        stages['image_model.proposer'], stages['image_model.mask_clip'] = interleaved_medians(
            [
                timer(network.proposer, images, image_sizes),
                timer(network.mask_clip, clip_input, mask_logits),
            ],
            repeats,
        )
    return stages
