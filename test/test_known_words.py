"""A model that declares its words warns about every other word, in the library and the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from masqclip.cli import main
from masqclip.factory import create_predictor
from masqclip.inference.known_words import KnownWords, words_of
from masqclip.inference.predictor import Predictor
from masqclip.inference.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
DEMO_VOCABULARY = ROOT / 'config' / 'vocabularies' / 'demo_scenes.yaml'


@pytest.fixture(scope='module')
def demo() -> Predictor:
    return create_predictor()


def test_words_are_split_on_punctuation_and_case():
    assert words_of('Red  striped, the RED-mug') == ['red', 'striped', 'the', 'red', 'mug']


def test_the_demo_model_declares_its_words_and_names_the_unknown_ones(demo, caplog):
    assert demo.known_words.words >= {'red', 'striped', 'sky', 'background'}
    assert demo.unknown_words_warning(Vocabulary.from_yaml(DEMO_VOCABULARY)) is None
    with caplog.at_level(logging.WARNING, logger='masqclip'):
        demo.set_vocabulary(Vocabulary.parse('person, red cup'))
    warning = demo.unknown_words_warning(Vocabulary.parse('person, red cup'))
    assert "'person', 'cup'" in warning and "'red'" not in warning.split('It knows')[0]
    assert 'It knows: and, background, blue' in warning
    assert any("'person', 'cup'" in r.getMessage() for r in caplog.records)
    assert "'mug'" in demo.unknown_words_warning(['red mug', 'blue striped'])


def test_a_model_without_a_word_list_never_warns(tiny_model):
    network, config = tiny_model
    assert 'known_words' not in config['clip']
    predictor = Predictor.from_network(network, config)
    assert predictor.unknown_words_warning(['zebra crossing', 'quokka']) is None
    assert KnownWords(None).unknown(['anything']) == []


def test_segment_explains_why_it_found_nothing(tmp_path, capsys):
    image = ROOT / 'examples' / 'scene.png'
    assert main(['segment', str(image), '--vocabulary', 'person,cup', '--out', str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "does not know 'person', 'cup'" in err
    if 'found nothing' in err:  # the demo model may still propose a faint 'cup'
        assert 'config/vocabularies/demo_scenes.yaml' in err
