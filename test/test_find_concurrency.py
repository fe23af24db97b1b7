"""find in one thread while another segments or changes the vocabulary (the node's threads)."""

import random
import sys
import threading

import numpy as np
import torch

from masqclip.inference.vocabulary import TextEmbeddingCache, Vocabulary

WAIT_S = 30.0


def test_find_scores_a_stored_frame_while_predict_is_inside_the_image_model(spied_predictor, rng):
    predictor, gated = spied_predictor
    predictor.set_vocabulary(Vocabulary.parse('mug, table'))
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stored = predictor.predict(image)

    gated.hold()
    segmenting = threading.Thread(target=predictor.predict, args=(image,))
    segmenting.start()
    assert gated.inside.wait(WAIT_S)
    found: list = []
    try:
        # A new query (its text is encoded) and a cached one, both while predict waits.
        finding = threading.Thread(
            target=lambda: found.extend(
                predictor.find(stored, query) for query in ('red mug', 'red mug')
            )
        )
        finding.start()
        finding.join(WAIT_S)
        assert not finding.is_alive(), 'find waited for the image pass'
        assert segmenting.is_alive(), 'predict is still inside the image model'
    finally:
        gated.release.set()
        segmenting.join(WAIT_S)
    new, cached = found
    assert new and [m.score for m in new] == [m.score for m in cached]


def deterministic_encoder(classes: list[tuple[str, ...]]) -> torch.Tensor:
    """Embeddings that depend on the text only, so any thread can check any answer."""
    rows = [torch.tensor([float(len(c[0])), float(sum(map(ord, c[0]))), 1.0]) for c in classes]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_text_cache_serves_threads_at_once_while_evicting():
    # A cache smaller than the words in use evicts all the time: the races show at once.
    cache = TextEmbeddingCache(deterministic_encoder, 'w', max_entries=8)
    words = [(f'word {i}',) for i in range(40)]
    errors: list[BaseException] = []

    def embed_many(seed: int) -> None:
        pick = random.Random(seed)
        try:
            for _ in range(300):
                batch = pick.sample(words, 5)
                assert torch.equal(cache.embed(batch), deterministic_encoder(batch))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=embed_many, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert cache.hits + cache.misses == 4 * 300 * 5
