"""Exceptions of the export package; each message says what the user can do about it."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The image path could not be exported, or an ONNX file does not fit the request."""


class ForeignExportError(ExportError):
    """A graph or engine that is not a MasQCLIP image-path export (or not readable as one)."""


class DamagedFileError(ExportError):
    """A file differs from the digest recorded when it was written, or has none (damaged on
    disk, modified since, or its write was interrupted)."""


class BackendUnavailableError(RuntimeError):
    """A backend's runtime (onnxruntime, TensorRT) or the GPU it needs is missing."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class InputSizeError(ValueError):
    """A frame does not fit the fixed input size of an exported image model."""
