"""What the model is asked to find: a validated list of classes, and the text-embedding cache.

Text enters MasQCLIP only at the very end, as a dot product with per-mask CLIP embeddings, so
a vocabulary change costs one pass of the text tower over the classes not seen before and never
touches the image path. A class may also be taught by showing it (an exemplar class,
docs/teach.md): its embedding is then the mean of shown masks' CLIP embeddings, used as a text
embedding would be.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

BACKGROUND = 'background'
"""Always appended as the last text entry; it takes part in the softmax (method.md 1.6)."""

MAX_CLASSES = 4096
"""More classes than any benchmark vocabulary (ADE20K-847) by far; beyond it is a mistake."""

MAX_NAME_LENGTH = 200


class VocabularyError(ValueError):
    """A vocabulary (or query) that cannot be used; the message says what to fix."""


def _unit_vector(values: object) -> np.ndarray:
    """float64 (D,): ``values`` L2-normalised, or ``VocabularyError`` for anything that is not
    a finite, non-zero vector."""
    try:
        vector = np.asarray(values, np.float64)
    except (TypeError, ValueError) as error:
        raise VocabularyError(f'an embedding must be a vector of numbers: {error}') from error
    norm = np.linalg.norm(vector) if vector.ndim == 1 and np.isfinite(vector).all() else 0.0
    if not norm > 0:
        raise VocabularyError(
            f'an embedding must be a finite, non-zero vector, got shape {vector.shape}'
        )
    return vector / norm


@dataclass(frozen=True)
class Exemplar:
    """What an exemplar class was taught from: the running mean of the L2-normalised CLIP mask
    embeddings of the examples shown, how many they were, and the cosine that tells the object
    from the rest of their frames.

    :param mean: the mean, not normalised (its norm falls below 1 as the examples disagree).
    :param count: how many examples it averages (>= 1).
    :param model: the fingerprint of the weights that embedded them
        (``Predictor.model_fingerprint``): to other weights the vector means nothing.
    :param threshold: a mask whose cosine to ``embedding`` exceeds this is more this class
        than the best text class (``classify_masks``); the running mean of each example's
        ``exemplars.example_threshold``.
    """

    mean: tuple[float, ...]
    count: int
    model: str
    threshold: float

    def __post_init__(self) -> None:
        _unit_vector(self.mean)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise VocabularyError(f'an exemplar counts at least one example, got {self.count!r}')
        if not isinstance(self.model, str) or not self.model:
            raise VocabularyError('an exemplar names the fingerprint of its model')
        if not isinstance(self.threshold, int | float) or not -1.0 <= self.threshold <= 1.0:
            raise VocabularyError(
                f'an exemplar threshold is a cosine in [-1, 1], got {self.threshold!r}'
            )

    @classmethod
    def first(cls, embedding: object, model: str, threshold: float) -> Exemplar:
        """An exemplar of one example's embedding (normalised here)."""
        return cls(tuple(_unit_vector(embedding).tolist()), 1, model, float(threshold))

    def refined(self, embedding: object, model: str, threshold: float) -> Exemplar:
        """This exemplar with one more example: the running means over ``count + 1``."""
        vector = _unit_vector(embedding)
        if model != self.model or vector.shape != (len(self.mean),):
            raise VocabularyError(
                f'the example comes from model {model} (D={len(vector)}), the exemplar from '
                f'model {self.model} (D={len(self.mean)}): refine it with its own model'
            )
        mean = np.asarray(self.mean)
        mean += (vector - mean) / (self.count + 1)
        threshold = self.threshold + (threshold - self.threshold) / (self.count + 1)
        return Exemplar(tuple(mean.tolist()), self.count + 1, model, float(threshold))

    @property
    def embedding(self) -> np.ndarray:
        """float32 (D,): the class's embedding, ``mean`` L2-normalised."""
        return _unit_vector(self.mean).astype(np.float32)


@dataclass(frozen=True)
class VocabularyEntry:
    """One class: a text class, or an exemplar class taught by showing it.

    :param name: what the class is called in outputs; for a text class also the first text
        prompt for it.
    :param synonyms: further names of a text class; their text embeddings are averaged with
        ``name``'s.
    :param is_thing: True for countable objects (instances), False for stuff regions (merged
        into one panoptic segment per class, never reported as instances when panoptic is on).
    :param exemplar: for an exemplar class, its embedding (the name is then only a label, never
        encoded as text); None for a text class.
    """

    name: str
    synonyms: tuple[str, ...] = ()
    is_thing: bool = True
    exemplar: Exemplar | None = None

    @property
    def prompts(self) -> tuple[str, ...]:
        """The texts whose embeddings are averaged for this class; none for an exemplar."""
        return () if self.exemplar is not None else (self.name, *self.synonyms)


def _clean_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise VocabularyError(f'{what} must be a string, got {type(text).__name__}: {text!r}')
    cleaned = ' '.join(text.split())
    if not cleaned:
        raise VocabularyError(f'{what} is empty; give every class a name such as "red mug"')
    if len(cleaned) > MAX_NAME_LENGTH:
        raise VocabularyError(
            f'{what} is {len(cleaned)} characters long (at most {MAX_NAME_LENGTH}): '
            f'{cleaned[:40]!r}...'
        )
    if not cleaned.isprintable():
        raise VocabularyError(f'{what} contains control characters: {cleaned!r}')
    return cleaned


def validate_query(text: object, what: str = 'query') -> str:
    """Return a free-text query cleaned of surplus whitespace, or raise ``VocabularyError``.

    :param what: how the message names the text, e.g. 'negative query 2'.
    """
    if isinstance(text, str) and not text.split():
        raise VocabularyError(f'{what} is empty; give a phrase such as "red mug"')
    return _clean_text(text, what)


def _make_entry(
    name: object,
    synonyms: Iterable[object] = (),
    is_thing: object = True,
    exemplar: Exemplar | None = None,
) -> VocabularyEntry:
    clean_name = _clean_text(name, 'class name')
    if isinstance(synonyms, str):
        synonyms = [synonyms]
    clean_synonyms = tuple(_clean_text(s, f'synonym of {clean_name!r}') for s in synonyms)
    if not isinstance(is_thing, bool):
        raise VocabularyError(f'is_thing of {clean_name!r} must be true or false')
    if exemplar is not None and clean_synonyms:
        raise VocabularyError(
            f'exemplar class {clean_name!r} cannot have synonyms: its embedding comes from the '
            'examples shown, not from text'
        )
    return VocabularyEntry(clean_name, clean_synonyms, is_thing, exemplar)


def _exemplar_from_record(record: object, name: object) -> Exemplar:
    """The ``exemplar`` field of class ``name``'s record (``to_records`` form)."""
    if not isinstance(record, dict) or set(record) != {'mean', 'count', 'model', 'threshold'}:
        raise VocabularyError(
            f'the exemplar of {name!r} must be a mapping of exactly mean, count, model and '
            'threshold'
        )
    try:
        mean = tuple(np.asarray(record['mean'], np.float64).tolist())
    except (TypeError, ValueError) as error:
        raise VocabularyError(
            f'the exemplar mean of {name!r} must be a list of numbers'
        ) from error
    return Exemplar(mean, record['count'], record['model'], record['threshold'])


@dataclass(frozen=True)
class Vocabulary:
    """An ordered, validated list of classes; a class's index is its position.

    Immutable: ``add``, ``remove`` and ``replace`` return a new vocabulary. ``add`` never
    changes an existing class's index; ``remove`` closes the gap (later classes move down).
    """

    entries: tuple[VocabularyEntry, ...]

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_CLASSES:
            raise VocabularyError(
                f'{len(self.entries)} classes is more than the {MAX_CLASSES} allowed; '
                'split the vocabulary or query with the find service instead'
            )
        seen: dict[str, str] = {}
        for entry in self.entries:
            key = entry.name.lower()
            if key == BACKGROUND:
                raise VocabularyError(
                    f'"{BACKGROUND}" is reserved: it is always appended as the no-class entry'
                )
            if key in seen:
                raise VocabularyError(f'class {entry.name!r} appears twice')
            seen[key] = entry.name

    @classmethod
    def from_names(cls, names: Iterable[object]) -> Vocabulary:
        """Build from plain class names (things, no synonyms)."""
        if isinstance(names, str):
            raise VocabularyError('give a list of names, or use Vocabulary.parse for "a,b,c"')
        return cls(tuple(_make_entry(name) for name in names))

    @classmethod
    def parse(cls, text: str) -> Vocabulary:
        """Build from comma-separated names, e.g. ``'red mug, table'``."""
        return cls.from_names([part for part in text.split(',') if part.strip()])

    @classmethod
    def from_records(cls, records: Iterable[object]) -> Vocabulary:
        """Build from a list of names or ``{name, synonyms, is_thing, exemplar}`` mappings (YAML
        form; ``exemplar``, ``{mean, count, model}``, makes an exemplar class)."""
        entries = []
        for record in records:
            if isinstance(record, dict):
                unknown = set(record) - {'name', 'synonyms', 'is_thing', 'exemplar'}
                if unknown:
                    raise VocabularyError(
                        f'unknown class fields {sorted(unknown)} in class '
                        f'{record.get("name")!r}; allowed: name, synonyms, is_thing, exemplar'
                    )
                name, exemplar = record.get('name'), record.get('exemplar')
                if exemplar is not None:
                    exemplar = _exemplar_from_record(exemplar, name)
                entries.append(
                    _make_entry(
                        name, record.get('synonyms', ()), record.get('is_thing', True), exemplar
                    )
                )
            else:
                entries.append(_make_entry(record))
        return cls(tuple(entries))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary file: a YAML list of classes, or a mapping with a ``classes`` list.

        Each class is a name or ``{name: ..., synonyms: [...], is_thing: true|false}``.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as error:
            raise VocabularyError(f'cannot read vocabulary file {path}: {error}') from error
        except yaml.YAMLError as error:
            raise VocabularyError(f'vocabulary file {path} is not valid YAML: {error}') from error
        if isinstance(data, dict):
            data = data.get('classes')
        if not isinstance(data, list):
            raise VocabularyError(
                f'vocabulary file {path} must hold a list of classes or a "classes:" list'
            )
        return cls.from_records(data)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    @property
    def is_thing(self) -> tuple[bool, ...]:
        return tuple(entry.is_thing for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def require_classes(self) -> Vocabulary:
        """This vocabulary, or ``VocabularyError`` when it has no class to segment."""
        if not self.entries:
            raise VocabularyError('no class in the vocabulary: keep or name at least one')
        return self

    def add(self, entries: Sequence[VocabularyEntry]) -> Vocabulary:
        """Append new classes after the existing ones (whose indices never move).

        Only new names: a name already present, compared as the vocabulary compares names
        (case and surplus whitespace ignored), is an error, so an ADD never silently changes a
        class; replace the vocabulary to change one.
        """
        if not entries:
            raise VocabularyError('nothing to add: give at least one class')
        added = [
            _make_entry(entry.name, entry.synonyms, entry.is_thing, entry.exemplar)
            for entry in entries
        ]
        present = {entry.name.lower(): entry.name for entry in self.entries}
        for entry in added:
            if entry.name.lower() in present:
                raise VocabularyError(
                    f'class {entry.name!r} is already in the vocabulary (as '
                    f'{present[entry.name.lower()]!r}); ADD appends new classes only: remove it '
                    'first, or replace the vocabulary to change it'
                )
        return Vocabulary(self.entries + tuple(added))

    def remove(self, names: Iterable[str]) -> Vocabulary:
        """Drop classes by name, matched as the vocabulary compares names (case and surplus
        whitespace ignored); raises for an empty list or a name that is not present."""
        if isinstance(names, str):
            raise VocabularyError('give a list of class names to remove')
        doomed = {_clean_text(name, 'class name').lower() for name in names}
        if not doomed:
            raise VocabularyError('nothing to remove: give at least one class name')
        missing = doomed - {entry.name.lower() for entry in self.entries}
        if missing:
            raise VocabularyError(f'cannot remove {sorted(missing)}: not in the vocabulary')
        return Vocabulary(tuple(e for e in self.entries if e.name.lower() not in doomed))

    def taught(self, name: object, embedding: object, model: str, threshold: float) -> Vocabulary:
        """This vocabulary with one more example of the exemplar class ``name``: a new thing
        class appended, or the running mean of the exemplar class of that name refined in place
        (its index kept).

        :param embedding: the example's CLIP mask embedding (D,).
        :param model: the fingerprint of the weights that embedded it.
        :param threshold: the example's ``exemplars.example_threshold``.
        :raises VocabularyError: for a text class of that name (an exemplar needs a name of
            its own), a bad name or embedding, or an example of other weights than the class's.
        """
        name = _clean_text(name, 'class name')
        for index, entry in enumerate(self.entries):
            if entry.name.lower() != name.lower():
                continue
            if entry.exemplar is None:
                raise VocabularyError(
                    f'{entry.name!r} is a text class: teach the example under another name, or '
                    'remove the text class first'
                )
            refined = replace(entry, exemplar=entry.exemplar.refined(embedding, model, threshold))
            return Vocabulary(self.entries[:index] + (refined,) + self.entries[index + 1 :])
        return Vocabulary(
            self.entries
            + (_make_entry(name, (), True, Exemplar.first(embedding, model, threshold)),)
        )

    def to_records(self) -> list[dict]:
        """The YAML/JSON form, readable by ``from_records``."""
        return [_entry_record(entry) for entry in self.entries]


def _entry_record(entry: VocabularyEntry) -> dict:
    """A class in the YAML/JSON form ``from_records`` reads."""
    record = {'name': entry.name, 'synonyms': list(entry.synonyms), 'is_thing': entry.is_thing}
    if entry.exemplar is not None:
        exemplar = entry.exemplar
        record['exemplar'] = {
            'mean': list(exemplar.mean),
            'count': exemplar.count,
            'model': exemplar.model,
            'threshold': exemplar.threshold,
        }
    return record


class TextEmbeddingCache:
    """L2-normalised text embeddings per class, computed once per (prompts, templates, weights).

    Keys hash the class's prompts, the prompt templates and a fingerprint of the text tower's
    weights, so loading other weights invalidates every entry. Least recently used entries are
    evicted beyond ``max_entries``. Thread-safe: a vocabulary change in one thread and ``find``
    queries in others may embed at the same time; neither waits for the other's text pass.

    :param encode: maps a list of classes (each a tuple of prompts) to a float tensor
        [N, D] of L2-normalised embeddings (``TextEncoder.encode_classes`` with templates bound).
    :param weights_fingerprint: identifies the text tower's weights.
    """

    def __init__(
        self,
        encode: Callable[[list[tuple[str, ...]]], torch.Tensor],
        weights_fingerprint: str,
        templates: Sequence[str] = (),
        max_entries: int = 20000,
    ) -> None:
        self._encode = encode
        self._salt = json.dumps([weights_fingerprint, list(templates)])
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _key(self, prompts: tuple[str, ...]) -> str:
        return hashlib.sha256(json.dumps([self._salt, list(prompts)]).encode()).hexdigest()

    def embed(self, classes: Sequence[tuple[str, ...]]) -> torch.Tensor:
        """Return [N, D] embeddings for ``classes`` (each a tuple of prompts), encoding only
        the ones not cached, in one batched text pass."""
        keys = [self._key(prompts) for prompts in classes]
        with self._lock:
            found = self._take_cached(keys)
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            # Outside the lock: a long text pass must not stall the other threads' look-ups.
            by_key = dict(zip(keys, classes, strict=True))
            encoded = self._encode([by_key[key] for key in missing])
            found.update(zip(missing, encoded, strict=True))
        with self._lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            for key in missing:
                self._entries[key] = found[key]
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return torch.stack([found[key] for key in keys]) if keys else None

    def _take_cached(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``keys``, marked most recently used (lock held)."""
        found = {}
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
                found[key] = self._entries[key]
        return found

    def embed_entries(self, entries: Sequence[VocabularyEntry]) -> torch.Tensor:
        """[N + 1, D]: the classes then ``background``, as MasQCLIP scores them. Text classes
        come from the cache; an exemplar class's row is its exemplar embedding as it is (never
        encoded)."""
        texts = self.embed([e.prompts for e in entries if e.exemplar is None] + [(BACKGROUND,)])
        text_rows = iter(texts)
        rows = [
            next(text_rows) if e.exemplar is None else torch.from_numpy(e.exemplar.embedding)
            for e in entries
        ]
        return torch.stack([row.to(texts) for row in rows] + [next(text_rows)])


def exemplar_thresholds(entries: Sequence[VocabularyEntry]) -> torch.Tensor:
    """float32 [N + 1], beside ``embed_entries``' rows: each exemplar class's threshold, NaN
    for text classes and ``background`` (see ``classify_masks``)."""
    return torch.tensor(
        [math.nan if e.exemplar is None else e.exemplar.threshold for e in entries] + [math.nan],
        dtype=torch.float32,
    )
