"""Shared fixtures: the tiny model is built once per session (random weights, fixed seed)."""

from __future__ import annotations

import threading

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


class ImageModelSpy:
    """The tiny model's image path, counting its calls; once ``hold()`` is called, the next
    call waits inside until ``release`` is set."""

    WAIT_S = 30.0

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0
        self.inside = threading.Event()
        self.release = threading.Event()
        self._held = False

    def hold(self) -> None:
        self._held = True

    def __call__(self, images, image_sizes):
        self.calls += 1
        if self._held:
            self.inside.set()
            assert self.release.wait(self.WAIT_S), 'the test never released the image model'
        return self.model(images, image_sizes)


@pytest.fixture
def spied_predictor(tiny_model) -> tuple[Predictor, ImageModelSpy]:
    """A predictor over the tiny model whose image path is an ``ImageModelSpy``."""
    network, config = tiny_model
    spy = ImageModelSpy(network)
    return Predictor(spy, network.encode_classes, 'w', config), spy
