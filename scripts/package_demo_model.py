"""Package a trained demo checkpoint for the repository: float16, gzip-compressed, and the
token-embedding rows of words the demo CLIP never saw set to zero (they were never trained,
so they carry no meaning, and zeros compress), and the words it did see declared in its config.
Usage: package_demo_model.py SRC DST.pt.gz"""

from __future__ import annotations

import sys

import torch
from open_clip.tokenizer import SimpleTokenizer

from masqclip.checkpoint import save_checkpoint
from masqclip.data.synthetic import COLOURS, PATTERNS, STUFF_NAMES, THING_NAMES
from masqclip.factory import build_model
from masqclip.inference.known_words import words_of
from masqclip.inference.vocabulary import BACKGROUND

# Every word of the training captions ("red striped, blue dotted on grass and sky").
CAPTION_TEXTS = [*THING_NAMES, *STUFF_NAMES, *COLOURS, *PATTERNS, BACKGROUND, 'on', 'and', ',']


def main(source: str, destination: str) -> None:
    network, config = build_model(None, checkpoint=source)
    tokenizer = SimpleTokenizer()
    used = {token for text in CAPTION_TEXTS for token in tokenizer.encode(text)}
    used |= {tokenizer.sot_token_id, tokenizer.eot_token_id}
    embedding = network.text.clip.token_embedding.weight
    unused = torch.ones(embedding.shape[0], dtype=torch.bool)
    unused[sorted(used)] = False
    with torch.no_grad():
        embedding[unused] = 0
    # Declared, so that class names and queries in other words get a warning (known_words.py).
    config['clip']['known_words'] = sorted({w for t in CAPTION_TEXTS for w in words_of(t)})
    save_checkpoint(destination, network, config, dtype=torch.float16)
    print(f'{destination}: {len(used)} token rows kept of {embedding.shape[0]}')


if __name__ == '__main__':
    main(*sys.argv[1:])
