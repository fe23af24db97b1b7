"""MasQCLIP: open-vocabulary universal image segmentation (instance, semantic, panoptic)."""

from masqclip.factory import build_model, create_predictor, list_models
from masqclip.inference.predictor import Predictor, PredictorCfg
from masqclip.inference.results import Instance, PanopticSegment, SegmentationResult
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry

__version__ = '0.1.0'
__all__ = [
    'Instance',
    'PanopticSegment',
    'Predictor',
    'PredictorCfg',
    'SegmentationResult',
    'Vocabulary',
    'VocabularyEntry',
    'build_model',
    'create_predictor',
    'list_models',
]
