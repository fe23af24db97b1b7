"""Shared fixtures: the tiny model is built once per session (random weights, fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masqclip.factory import build_model
from masqclip.inference.predictor import Predictor


@pytest.fixture(scope='session')
def tiny_model():
    torch.manual_seed(0)
    return build_model('test_tiny')


@pytest.fixture
def tiny_predictor(tiny_model) -> Predictor:
    network, config = tiny_model
    return Predictor.from_network(network, config)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
