"""The numeric precisions the image path runs at, the one check of what each needs, and the
torch image path at each of them.

Every backend's precision is checked here, once, before anything is built or exported:
fp16 needs CUDA; bf16 is the CPU's half precision and runs on the torch backends (eager or
inductor-compiled) where the CPU has bf16 arithmetic units.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from masqclip.modeling.masqclip import ImageModel, MasQCLIP

PRECISIONS = ('fp32', 'fp16', 'bf16')
"""Of the image path: fp16 on CUDA, bf16 on CPUs with bf16 units (see ``check_precision``)."""
EXPORT_PRECISIONS = ('fp32', 'fp16')
"""Those an ONNX graph is exported at (bf16 runs on the torch backends only)."""
TORCH_BACKENDS = ('torch', 'inductor')
"""The backends that run the torch image path: eager, or compiled by TorchInductor."""
# x86 bf16 units torch uses: AMX tiles (matrix products) and AVX-512 BF16 (vector dot products).
BF16_CPU_UNITS = ('amx_bf16', 'avx512_bf16')
# Layers whose weights autocast casts to bf16 on every call (MultiheadAttention holds no norm).
BF16_WEIGHT_MODULES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention)


def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 arithmetic units of this CPU among ``BF16_CPU_UNITS``; empty where bf16 would
    be emulated (slower than fp32 itself)."""
    capabilities = torch.cpu.get_capabilities()
    return tuple(unit for unit in BF16_CPU_UNITS if capabilities.get(unit))


def check_precision(precision: str, device: str | torch.device, backend: str = 'torch') -> None:
    """Refuse, saying what to use instead, a precision this device or backend cannot run:
    fp16 needs a CUDA device; bf16 a torch backend on a CPU with bf16 units.

    :raises ValueError: naming the reason and the alternative.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    on_cuda = torch.device(device).type == 'cuda'
    if precision == 'fp16' and not on_cuda:
        raise ValueError(
            'fp16 needs a CUDA device; on the CPU use precision fp32, or bf16 where the CPU has '
            'bf16 units'
        )
    if precision != 'bf16':
        return
    if on_cuda:
        raise ValueError('bf16 is the CPU precision; use fp16 on a CUDA device')
    if backend not in TORCH_BACKENDS:
        raise ValueError(
            f'bf16 runs on the torch backends only ({", ".join(TORCH_BACKENDS)}), not '
            f"{backend}: onnxruntime's CPU kernels have no bf16 matrix products on x86"
        )
    if not cpu_bf16_units():
        cpu = torch.cpu.get_capabilities().get('cpu_name', 'this CPU')
        raise ValueError(
            f'bf16 needs a CPU with bf16 arithmetic (AVX512-BF16 or AMX); {cpu} has neither, '
            'and emulated bf16 is slower than fp32: use precision fp32'
        )


def torch_image_model(network: MasQCLIP, device: str, precision: str) -> ImageModel:
    """``network``'s image path in torch at ``precision`` (see ``check_precision``), with
    float32 inputs and outputs whatever the precision inside."""
    check_precision(precision, device)
    if precision == 'fp32':
        return network
    if precision == 'bf16':
        return _bf16_image_model(network)

    def run_fp16(images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast('cuda', dtype=torch.float16):
            return network(images, image_sizes)

    return run_fp16


def _bf16_image_model(network: MasQCLIP) -> ImageModel:
    """The image path with its proposer (three quarters of the FLOPs of masqclip_r50_vitb16)
    in bf16, float32 in and out.

    The mask-token CLIP stays float32: in bf16 its embeddings move enough (1 - cos about 1e-5,
    times CLIP's logit scale of 100) to flip near-tied class decisions, which moved PQ and
    mIoU by up to 1.3 points on 40 demo scenes (0.3 with it in float32). The proposer runs on a
    copy whose matrix-product weights are bf16 already: autocast alone would cast them again
    on every frame (about a second of copies for masqclip_r50_vitb16 on two cores), for the
    same numbers. The text tower and the CLIP tower are shared, not copied.
    """
    shared = {id(network.text): network.text, id(network.mask_clip): network.mask_clip}
    image_path = copy.deepcopy(network, memo=shared)
    for module in image_path.proposer.modules():
        if isinstance(module, BF16_WEIGHT_MODULES):
            module.to(torch.bfloat16)
    image_path.proposer = _Bf16Proposer(image_path.proposer)
    return image_path


class _Bf16Proposer(torch.nn.Module):
    """A proposer under CPU bf16 autocast, its final predictions (all the image path reads)
    back in float32, so objectness is soft-maxed in float32."""

    def __init__(self, proposer: torch.nn.Module) -> None:
        super().__init__()
        self.proposer = proposer

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            proposals = self.proposer(images, image_sizes)
        return {key: proposals[key].float() for key in ('pred_logits', 'pred_masks')}
