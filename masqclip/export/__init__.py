"""Export of MasQCLIP's vocabulary-free image path and the backends that run it.

``export_onnx`` writes the graph; ``build_image_model`` returns the image path on onnxruntime
or TensorRT behind the ``ImageModel`` contract (``masqclip.modeling``); ``network_input_size``
gives the fixed input size for a camera resolution. TensorRT is imported only by
``masqclip.export.tensorrt``.
"""

from masqclip.export.backends import EXPORT_BACKENDS, build_image_model, ensure_onnx
from masqclip.export.canvas import FixedSizeImageModel, network_input_size
from masqclip.export.engine_cache import DEFAULT_CACHE_DIR, EngineCache, EngineKey
from masqclip.export.errors import (
    BackendUnavailableError,
    DamagedFileError,
    EngineBuildError,
    ExportError,
    ForeignExportError,
    InputSizeError,
)
from masqclip.export.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    export_onnx,
    read_onnx_metadata,
)

__all__ = [
    'DEFAULT_CACHE_DIR',
    'EXPORT_BACKENDS',
    'INPUT_NAMES',
    'OUTPUT_NAMES',
    'BackendUnavailableError',
    'DamagedFileError',
    'EngineBuildError',
    'EngineCache',
    'EngineKey',
    'ExportError',
    'FixedSizeImageModel',
    'ForeignExportError',
    'InputSizeError',
    'build_image_model',
    'ensure_onnx',
    'export_onnx',
    'network_input_size',
    'read_onnx_metadata',
]
