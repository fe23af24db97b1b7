"""Vocabulary validation and the text-embedding cache."""

from __future__ import annotations

import pytest
import torch

from masqclip.inference.vocabulary import (
    BACKGROUND,
    MAX_CLASSES,
    TextEmbeddingCache,
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
    validate_query,
)


def test_parse_cleans_names_and_keeps_order():
    vocabulary = Vocabulary.parse(' red  mug, table ,, floor')
    assert vocabulary.names == ('red mug', 'table', 'floor')
    assert vocabulary.is_thing == (True, True, True)


@pytest.mark.parametrize(
    'names, message',
    [
        (['mug', 'Mug'], 'twice'),
        (['mug', '   '], 'empty'),
        (['x' * 201], 'characters long'),
        (['tab\tle\x00'], 'control'),
        (['background'], 'reserved'),
        ([3], 'must be a string'),
    ],
)
def test_bad_names_are_rejected_with_a_reason(names, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_names(names)


def test_absurd_size_is_rejected():
    with pytest.raises(VocabularyError, match='allowed'):
        Vocabulary.from_names([f'c{i}' for i in range(MAX_CLASSES + 1)])


def test_yaml_file_with_synonyms_and_stuff(tmp_path):
    path = tmp_path / 'vocabulary.yaml'
    path.write_text(
        'classes:\n  - red mug\n  - {name: tree, synonyms: [bush, leaves], is_thing: false}\n'
    )
    vocabulary = Vocabulary.from_yaml(path)
    assert vocabulary.entries[1] == VocabularyEntry('tree', ('bush', 'leaves'), False)
    assert Vocabulary.from_records(vocabulary.to_records()) == vocabulary


@pytest.mark.parametrize(
    'text, message',
    [
        (': [', 'not valid YAML'),
        ('just a string', 'list of classes'),
        ('- {name: a, colour: red}', 'unknown class fields'),
    ],
)
def test_bad_yaml_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / 'v.yaml'
    path.write_text(text)
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_yaml(path)


def test_missing_file():
    with pytest.raises(VocabularyError, match='cannot read'):
        Vocabulary.from_yaml('/nonexistent/vocabulary.yaml')


def test_add_keeps_indices_and_remove_compacts():
    vocabulary = Vocabulary.parse('a, b, c')
    added = vocabulary.add([VocabularyEntry('d'), VocabularyEntry(' e  f ', ('eff',))])
    assert added.names == ('a', 'b', 'c', 'd', 'e f')
    assert added.entries[4].synonyms == ('eff',)
    assert added.remove(['B']).names == ('a', 'c', 'd', 'e f')
    with pytest.raises(VocabularyError, match='not in the vocabulary'):
        added.remove(['zebra'])


@pytest.mark.parametrize('name', ['red hollow', 'RED HOLLOW', '  red   Hollow '])
def test_add_of_a_name_already_present_is_refused(name):
    # It used to rename the class in place (version bumped, label changed) although the
    # service documents it as an error.
    vocabulary = Vocabulary.parse('red hollow, table')
    with pytest.raises(VocabularyError, match="already in the vocabulary \\(as 'red hollow'\\)"):
        vocabulary.add([VocabularyEntry(name)])


def test_remove_matches_names_as_the_vocabulary_compares_them():
    vocabulary = Vocabulary.parse('red hollow, table')
    assert vocabulary.remove(['red   hollow']).names == ('table',)
    assert vocabulary.remove(['\tRED HOLLOW\n']).names == ('table',)


@pytest.mark.parametrize(
    'change, message',
    [
        (lambda v: v.add([]), 'nothing to add'),
        (lambda v: v.remove([]), 'nothing to remove'),
        (lambda v: v.remove(['  ']), 'class name is empty'),
        (lambda v: v.remove('table'), 'list of class names'),
        (lambda v: v.add([VocabularyEntry('cup'), VocabularyEntry('Cup')]), 'twice'),
    ],
)
def test_add_and_remove_refuse_requests_that_change_nothing_or_are_malformed(change, message):
    with pytest.raises(VocabularyError, match=message):
        change(Vocabulary.parse('red hollow, table'))


def test_query_validation():
    assert validate_query('  the   red mug ') == 'the red mug'
    with pytest.raises(VocabularyError, match='query is empty'):
        validate_query('')
    # The message names which text is wrong: an empty negative query is not "query is empty".
    with pytest.raises(VocabularyError, match='^negative query 2 is empty'):
        validate_query('  ', 'negative query 2')
    with pytest.raises(VocabularyError, match='negative query 1 contains control'):
        validate_query('a\x07b', 'negative query 1')


class CountingEncoder:
    """Deterministic fake text tower: one embedding per prompt tuple, counts texts encoded."""

    def __init__(self):
        self.encoded: list[tuple[str, ...]] = []

    def __call__(self, classes):
        self.encoded.extend(classes)
        rows = [torch.tensor([float(len(' '.join(c))), float(hash(c) % 97), 1.0]) for c in classes]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_cache_hit_miss_and_background():
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(encoder, 'weights-A')
    first = cache.embed_entries(Vocabulary.parse('mug, table').entries)
    assert first.shape == (3, 3)
    assert encoder.encoded == [('mug',), ('table',), (BACKGROUND,)]
    again = cache.embed_entries(Vocabulary.parse('table, mug, chair').entries)
    assert encoder.encoded[3:] == [('chair',)]  # only the new class is encoded
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    assert (cache.hits, cache.misses) == (3, 4)


def test_cache_invalidated_by_weights_and_templates():
    encoder = CountingEncoder()
    TextEmbeddingCache(encoder, 'weights-A').embed([('mug',)])
    TextEmbeddingCache(encoder, 'weights-B').embed([('mug',)])
    TextEmbeddingCache(encoder, 'weights-A', templates=['a photo of a {}.']).embed([('mug',)])
    assert len(encoder.encoded) == 3
    cache = TextEmbeddingCache(encoder, 'weights-A')
    cache.embed([('mug',)])
    cache.embed([('mug', 'cup')])  # synonyms change the class
    assert len(encoder.encoded) == 5


def test_cache_evicts_least_recently_used():
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(encoder, 'w', max_entries=2)
    cache.embed([('a',), ('b',)])
    cache.embed([('a',)])
    cache.embed([('c',)])  # evicts b, the least recently used
    cache.embed([('a',)])
    assert cache.misses == 3
    cache.embed([('b',)])
    assert cache.misses == 4
