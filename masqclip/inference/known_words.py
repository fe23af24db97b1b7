"""The words a model's text tower was trained on, when its checkpoint declares them.

A CLIP trained on a small closed world (the demo model) gives no meaning to other words: its
token rows for them are zero. Such a checkpoint lists its words in its config
(``config['clip']['known_words']``), and every class name or query that uses another word
gets a warning naming it. A checkpoint without the list (OpenAI CLIP, a converted upstream
MasQCLIP) knows open vocabulary and never warns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words_of(text: str) -> list[str]:
    """The lower-case words of ``text``, in order (punctuation and spaces split them)."""
    return _WORD.findall(text.lower())


class KnownWords:
    """Checks texts against a model's declared word list.

    :param words: the words the text tower was trained on; None = an open vocabulary.
    """

    def __init__(self, words: Iterable[str] | None) -> None:
        self.words = None if words is None else frozenset(w.lower() for w in words)

    @classmethod
    def from_config(cls, config: dict) -> KnownWords:
        """The list an architecture config declares (``clip.known_words``), if any."""
        return cls(config.get('clip', {}).get('known_words'))

    def unknown(self, texts: Iterable[str]) -> list[str]:
        """The words of ``texts`` the model was not trained on, each once, in order."""
        if self.words is None:
            return []
        found = [word for text in texts for word in words_of(text) if word not in self.words]
        return list(dict.fromkeys(found))

    def warning(self, texts: Iterable[str]) -> str | None:
        """A sentence naming the unknown words and listing the known ones; None if all known."""
        unknown = self.unknown(texts)
        if not unknown:
            return None
        return (
            f'this model was trained on a closed set of words and does not know '
            f'{", ".join(repr(w) for w in unknown)}: those words mean nothing to it. It knows: '
            f'{", ".join(sorted(self.words))}'
        )
