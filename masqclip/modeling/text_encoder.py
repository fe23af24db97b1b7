"""CLIP's text tower and tokenizer: class-name embeddings for the vocabulary (method.md 1.6)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

__all__ = ['TextEncoder']

Tokenizer = Callable[[list[str]], Tensor]


class TextEncoder(nn.Module):
    """The text half of an open_clip CLIP with its BPE tokenizer.

    Holds the given CLIP with its image tower removed, so the state-dict keys are
    ``clip.`` + open_clip's own names: ``clip.token_embedding.weight``,
    ``clip.positional_embedding``, ``clip.transformer.resblocks.<i>.*``, ``clip.ln_final.*``,
    ``clip.text_projection`` and ``clip.logit_scale``; there is no ``visual`` key.

    Texts longer than the context (``clip.context_length`` tokens, start and end tokens
    included) are truncated by the tokenizer, which keeps the end token last; the feature then
    describes only the text's beginning.

    :param clip: an ``open_clip.CLIP`` (see ``build_clip``). Its ``visual`` is set to None:
        take the image tower from it first if you need it.
    :param tokenizer: callable turning a list of N strings into int64 [N, context_length]
        token ids; default open_clip's BPE tokenizer (ships with open_clip, works offline).
    :raises ValueError: the tokenizer's vocabulary is larger than the tower's token embedding.
    """

    def __init__(self, clip: open_clip.CLIP, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        clip.visual = None
        self.clip = clip
        if tokenizer is None:
            tokenizer = SimpleTokenizer(context_length=clip.context_length)
        vocab = getattr(tokenizer, 'vocab_size', None)
        if vocab is not None and vocab > clip.vocab_size:
            raise ValueError(
                f'the tokenizer has {vocab} tokens but the text tower only '
                f'{clip.vocab_size}: pass a tokenizer that matches text_cfg.vocab_size'
            )
        self.tokenizer = tokenizer

    @property
    def embed_dim(self) -> int:
        """Size D of the text embeddings."""
        return int(self.clip.text_projection.shape[1])

    def load_clip_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the text weights from a whole open_clip CLIP state dict.

        ``visual.*`` keys are ignored; every other key must match (strict).

        :param state_dict: an ``open_clip.CLIP`` state dict.
        """
        text_sd = {k: v for k, v in state_dict.items() if not k.startswith('visual.')}
        self.clip.load_state_dict(text_sd, strict=True)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Encode texts with CLIP's text tower, without autograd.

        :param texts: N strings, used as given (no template).
        :param batch_size: how many texts go through the tower at once.
        :return: float [N, D] text features, NOT normalised, on the tower's device.
        """
        device = self.clip.token_embedding.weight.device
        if not texts:
            return torch.zeros(0, self.embed_dim, device=device)
        chunks = [
            self.clip.encode_text(self.tokenizer(list(texts[i : i + batch_size])).to(device))
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks).float()

    def encode_classes(
        self,
        classes: Sequence[Sequence[str]],
        templates: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> Tensor:
        """Embed a vocabulary whose classes may have several names (synonyms).

        Each class's feature is the mean of the UNNORMALISED features of all its names (times
        all templates, if given), then L2-normalised, as MasQCLIP does for COCO's merged
        classes and ADE's comma lists. MasQCLIP uses raw names: keep ``templates`` None to
        reproduce it (method.md trap 7).

        :param classes: N classes, each a non-empty sequence of names, e.g.
            ``[['person'], ['tree', 'bush', 'leaves']]``.
        :param templates: prompts with one ``'{}'`` where the name goes, e.g.
            ``['a photo of a {}.']``; None uses the names as they are.
        :param batch_size: how many texts go through the tower at once.
        :return: float [N, D], L2-normalised class embeddings.
        :raises ValueError: no classes, a class without names, a name that is a bare string
            instead of a list, or a template without ``'{}'``.
        """
        if not classes:
            raise ValueError('the vocabulary is empty: give at least one class')
        for i, names in enumerate(classes):
            if isinstance(names, str):
                raise ValueError(
                    f'class {i} is the string {names!r}; give each class as a list '
                    f'of names, e.g. [{names!r}]'
                )
            if not names:
                raise ValueError(f'class {i} has no names')
        if templates is not None:
            if not templates:
                raise ValueError('templates is empty: pass None to use the raw names')
            for template in templates:
                if '{}' not in template:
                    raise ValueError(f'template {template!r} has no {{}} for the class name')
        prompts = []
        owners = []
        for i, names in enumerate(classes):
            for name in names:
                if templates is None:
                    prompts.append(name)
                    owners.append(i)
                else:
                    prompts.extend(template.replace('{}', name) for template in templates)
                    owners.extend([i] * len(templates))
        features = self.encode(prompts, batch_size=batch_size)
        index = torch.tensor(owners, device=features.device)
        sums = features.new_zeros(len(classes), features.shape[1]).index_add_(0, index, features)
        counts = torch.bincount(index, minlength=len(classes)).to(features.dtype)
        return F.normalize(sums / counts[:, None], dim=-1)
