"""The predictor: a numpy image in, a ``SegmentationResult`` out.

It owns the transforms, the current vocabulary and its cached text embeddings, and the
post-processing; the image model behind it (``MasQCLIP``: proposer + CLIP with mask tokens) is
vocabulary-free, so changing the vocabulary or asking a free-text question never re-runs it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from masqclip.checkpoint import fingerprint_mask_clip, fingerprint_module
from masqclip.inference.exemplars import (
    UNKNOWN_MODEL,
    ExemplarError,
    check_models,
    example_threshold,
    shown_proposal,
)
from masqclip.inference.known_words import KnownWords
from masqclip.inference.postprocess import (
    ImageSizeMaskLogits,
    classify_masks,
    instance_inference,
    mask_overlaps,
    mean_sigmoid_inside,
    panoptic_inference,
    semantic_inference,
    top_instance_pairs,
)
from masqclip.inference.results import (
    Instance,
    PanopticSegment,
    Proposals,
    RenderedMask,
    SegmentationResult,
)
from masqclip.inference.transforms import (
    PreprocessCfg,
    ResizeSpec,
    crop_mask_logits,
    image_to_tensor,
    validate_image,
)
from masqclip.inference.vocabulary import (
    TextEmbeddingCache,
    Vocabulary,
    VocabularyEntry,
    exemplar_thresholds,
    validate_query,
)
from masqclip.modeling.masqclip import ImageModel, MasQCLIP
from masqclip.modeling.precision import torch_image_model

logger = logging.getLogger('masqclip')

TASKS = ('instance', 'semantic', 'panoptic')


@dataclass(frozen=True)
class PredictorCfg:
    """Inference options; ``None`` thresholds take the model config's values.

    :param tasks: outputs to compute, a subset of ``TASKS``.
    :param score_threshold: instances scoring lower are dropped (the reference keeps all).
    :param object_mask_threshold: panoptic: minimum class score of a kept proposal.
    :param overlap_threshold: panoptic: minimum visible fraction of a kept proposal's mask.
    :param max_instances: instance output: top-k over proposals x classes.
    :param min_area_px: instances with fewer mask pixels are dropped.
    :param prompt_templates: e.g. ``('a photo of a {}.',)``; empty = raw names (reference).
    :param find_overlap_iou: ``find`` drops a match whose mask overlaps a better one more.
    """

    tasks: tuple[str, ...] = TASKS
    score_threshold: float = 0.0
    object_mask_threshold: float | None = None
    overlap_threshold: float | None = None
    max_instances: int | None = None
    min_area_px: int = 0
    prompt_templates: tuple[str, ...] = ()
    find_overlap_iou: float = 0.7

    def __post_init__(self) -> None:
        validate_tasks(self.tasks)
        for name in (
            'score_threshold',
            'object_mask_threshold',
            'overlap_threshold',
            'find_overlap_iou',
        ):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError(f'max_instances must be >= 1, got {self.max_instances}')
        if self.min_area_px < 0:
            raise ValueError(f'min_area_px must be >= 0, got {self.min_area_px}')


def validate_tasks(tasks: Collection[str], allowed: Sequence[str] = TASKS) -> frozenset[str]:
    """Return ``tasks`` as a set, or raise ``ValueError`` naming the unknown ones, or saying
    that none was given.

    :param allowed: the valid names (evaluation adds its proposal recall to ``TASKS``).
    """
    unknown = set(tasks) - set(allowed)
    if unknown or not tasks:
        found = f'unknown tasks {sorted(unknown)}' if unknown else 'no task given'
        raise ValueError(f'{found}: choose one or more of {", ".join(allowed)}')
    return frozenset(tasks)


class Predictor:
    """Runs MasQCLIP on numpy images for the current vocabulary.

    :param image_model: the vocabulary-free image path (see ``ImageModel``); the ``MasQCLIP``
        module itself for the torch backend.
    :param encode_classes: ``TextEncoder.encode_classes``-like: classes (tuples of prompts) and
        templates -> [N, D] L2-normalised embeddings.
    :param text_fingerprint: identifies the text weights (cache invalidation).
    :param model_config: the architecture's JSON config (preprocess + inference defaults).
    :param device: where the post-processing tensors live.
    :param model_fingerprint: identifies the weights that embed masks
        (``checkpoint.fingerprint_mask_clip``), which exemplar classes belong to, or a function
        that computes it when first needed (hashing CLIP's image tower takes 0.5-1.6 s, which a
        text-only predictor never needs); None: unknown, and exemplar classes are refused.
    """

    def __init__(
        self,
        image_model: ImageModel,
        encode_classes: Callable[[list[tuple[str, ...]], Sequence[str]], torch.Tensor],
        text_fingerprint: str,
        model_config: dict,
        device: str = 'cpu',
        cfg: PredictorCfg | None = None,
        model_fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        self.cfg = cfg or PredictorCfg()
        self._model_fingerprint = model_fingerprint
        self.model_config = model_config
        self.device = torch.device(device)
        self._image_model = image_model
        self._preprocess = PreprocessCfg.of(model_config)
        defaults = model_config.get('inference', {})
        self._object_mask_threshold = _first(
            self.cfg.object_mask_threshold, defaults.get('object_mask_threshold'), 0.3
        )
        self._overlap_threshold = _first(
            self.cfg.overlap_threshold, defaults.get('overlap_threshold'), 0.3
        )
        self._max_instances = _first(self.cfg.max_instances, defaults.get('max_instances'), 100)
        templates = self.cfg.prompt_templates
        self.text_cache = TextEmbeddingCache(
            lambda classes: encode_classes(classes, templates), text_fingerprint, templates
        )
        self.known_words = KnownWords.from_config(model_config)
        self._active = self._activate(Vocabulary(()))

    @classmethod
    def from_network(
        cls,
        network: MasQCLIP,
        config: dict,
        device: str = 'cpu',
        precision: str = 'fp32',
        compile_image_model: Callable[[ImageModel], ImageModel] | None = None,
        **options: object,
    ) -> Predictor:
        """Wrap an in-memory ``MasQCLIP`` (torch backend), e.g. during training.

        :param precision: see ``check_precision``; bf16 runs on a copy of the image path.
        :param compile_image_model: given the eager image path at ``precision``, returns the
            one to run instead (a compiled one).
        """
        network = network.eval().to(device)
        image_model = torch_image_model(network, device, precision)
        return cls(
            compile_image_model(image_model) if compile_image_model else image_model,
            network.encode_classes,
            fingerprint_module(network.text),
            config,
            device=device,
            cfg=PredictorCfg(**options),
            model_fingerprint=functools.partial(fingerprint_mask_clip, network),
        )

    @functools.cached_property
    def model_fingerprint(self) -> str | None:
        """The fingerprint exemplar classes of this predictor carry (see the constructor)."""
        given = self._model_fingerprint
        return given() if callable(given) else given

    @property
    def vocabulary(self) -> Vocabulary:
        return self._active.vocabulary

    def set_vocabulary(self, vocabulary: Vocabulary) -> float:
        """Make ``vocabulary`` current; returns the seconds spent encoding new text.

        Thread-safe against a running ``predict``: that one finishes with the vocabulary it
        started with, the next one uses the new one.

        :raises ExemplarError: for an exemplar class taught with other weights (the vocabulary
            in force stays).
        """
        start = time.perf_counter()
        self._active = self._activate(vocabulary)  # one assignment: never half-changed
        warning = self.unknown_words_warning(vocabulary)
        if warning:
            logger.warning('vocabulary: %s', warning)
        return time.perf_counter() - start

    def unknown_words_warning(self, texts: Vocabulary | Sequence[str]) -> str | None:
        """Why some classes or queries cannot work: the words of ``texts`` (a vocabulary's
        names and synonyms, or queries) this model was not trained on, with the words it
        knows; None when it knows them all or declares no word list (open vocabulary). An
        exemplar class, or a query naming one, is no text and never warned about."""
        entries = texts.entries if isinstance(texts, Vocabulary) else self._query_entries(texts)
        return self.known_words.warning([prompt for entry in entries for prompt in entry.prompts])

    def teach(
        self,
        result: SegmentationResult,
        name: str,
        *,
        proposal_index: int | None = None,
        mask: np.ndarray | None = None,
    ) -> Vocabulary:
        """Teach the exemplar class ``name`` by showing one object of a segmented frame, and
        make the vocabulary with it current (as ``set_vocabulary``).

        A new name appends an exemplar class (a thing); the name of an exemplar class adds the
        example to its running mean. ``result`` may have been segmented with an earlier
        vocabulary: the embeddings do not depend on it. Not atomic against a concurrent
        vocabulary change: callers changing vocabularies from several threads serialise them.

        :param result: a frame this predictor's model segmented (``predict``).
        :param name: the class's label.
        :param proposal_index: show this proposal of the frame (an instance's ``query_index``);
            or
        :param mask: bool (H, W) on that frame: show the proposal that matches it best by IoU
            (``exemplars.shown_proposal``: a result keeps no image to embed the mask itself).
        :return: the new vocabulary, now current.
        :raises VocabularyError: the vocabulary unchanged, for a name a text class has or an
            unusable name; ``ExemplarError`` (one too) for a missing, ambiguous or bad source
            (index out of range; mask not bool, of another size, empty or matching no proposal),
            an example of another model, or a predictor without a model fingerprint.
        """
        if self.model_fingerprint is None:
            raise ExemplarError(UNKNOWN_MODEL)
        active = self._active
        shown = shown_proposal(result, proposal_index, mask)
        embedding = result.proposals.embeddings[shown]
        width = active.text.shape[1]
        if embedding.shape != (width,):
            raise ExemplarError(
                f'the example has a {embedding.shape[-1]}-wide embedding, this model makes '
                f'{width}-wide ones: teach from a frame this model segmented'
            )
        vocabulary = active.vocabulary.taught(
            name, embedding, self.model_fingerprint, example_threshold(result, shown)
        )
        self.set_vocabulary(vocabulary)
        return vocabulary

    def _query_entries(self, queries: Sequence[str]) -> list[VocabularyEntry]:
        """Queries as classes: one naming an exemplar class of the current vocabulary (as the
        vocabulary compares names) is that class, any other is a text class of the query."""
        exemplars = {
            entry.name.lower(): entry
            for entry in self.vocabulary.entries
            if entry.exemplar is not None
        }
        return [
            exemplars.get(' '.join(query.split()).lower(), VocabularyEntry(query))
            for query in queries
        ]

    def _activate(self, vocabulary: Vocabulary) -> _ActiveVocabulary:
        if any(entry.exemplar is not None for entry in vocabulary.entries):
            check_models(vocabulary.entries, self.model_fingerprint)
        text = self.text_cache.embed_entries(vocabulary.entries).to(self.device)
        thresholds = exemplar_thresholds(vocabulary.entries).to(self.device)
        is_thing = torch.tensor(vocabulary.is_thing, dtype=torch.bool, device=self.device)
        return _ActiveVocabulary(vocabulary, text, thresholds, is_thing)

    def predict(
        self, image: np.ndarray, color: str = 'rgb', tasks: Collection[str] | None = None
    ) -> SegmentationResult:
        """Segment one image with the current vocabulary.

        :param image: uint8 (H, W, 3).
        :param color: channel order of ``image``, 'rgb' or 'bgr'.
        :param tasks: subset of ``TASKS``; default: the config's.
        :raises InvalidImageError: for an image that cannot be processed.
        """
        tasks = validate_tasks(self.cfg.tasks if tasks is None else tasks)
        active = self._active  # one vocabulary for the whole frame
        timings: dict[str, float] = {}
        clock = _Stopwatch(timings, self.device)

        images, image_sizes, spec = self.preprocess(image, color)
        clock.lap('preprocess')

        with torch.inference_mode():
            mask_logits, objectness, embeddings = self._image_model(images, image_sizes)
            mask_logits, objectness, embeddings = (
                t[0].float() for t in (mask_logits, objectness, embeddings)
            )
            clock.lap('image_model')
            class_scores = classify_masks(
                embeddings, active.text, objectness, exemplar_thresholds=active.thresholds
            )
            low_res_logits = crop_mask_logits(mask_logits, spec)
            clock.lap('classify')
            result = SegmentationResult(
                image_size=spec.original, vocabulary=active.vocabulary.names, timings=timings
            )
            if 'semantic' in tasks:
                result.semantic = self._semantic(class_scores, low_res_logits, spec)
                clock.lap('semantic')
            rendered: dict[int, RenderedMask] = {}
            if tasks & {'instance', 'panoptic'}:
                things_only = 'panoptic' in tasks
                # With both, the instance candidates keep the crops the panoptic pass makes.
                keep = ()
                if {'instance', 'panoptic'} <= tasks:
                    keep = self._instance_candidates(active, class_scores, things_only)
                full_logits = ImageSizeMaskLogits(mask_logits, spec, keep)
                if 'panoptic' in tasks:
                    result.panoptic, result.segments = self._panoptic(
                        active, class_scores, full_logits
                    )
                    clock.lap('panoptic')
                if 'instance' in tasks:
                    result.instances, rendered = self._instances(
                        active,
                        class_scores,
                        full_logits,
                        embeddings,
                        objectness,
                        things_only,
                    )
                    clock.lap('instance')
            # What every later find needs, whatever its query: computed once per frame.
            result.proposals = Proposals(
                embeddings.cpu().numpy(),
                objectness.cpu().numpy(),
                mask_logits.cpu().numpy(),
                spec,
                mean_sigmoid_inside(low_res_logits).cpu().numpy(),
                mask_overlaps(low_res_logits).cpu().numpy(),
                rendered,
            )
            clock.lap('proposals')
        return result

    def preprocess(
        self, image: np.ndarray, color: str = 'rgb'
    ) -> tuple[torch.Tensor, torch.Tensor, ResizeSpec]:
        """Check, resize and pad an image into the image model's input.

        :return: the image model's inputs on the predictor's device (float [1, 3, Hp, Wp] RGB
            0-255, black padding; int [1, 2], the content's (h, w)), and the geometry.
        :raises InvalidImageError: for an image that cannot be processed.
        """
        if color not in ('rgb', 'bgr'):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        image = validate_image(image)
        if color == 'bgr':
            image = image[..., ::-1]
        spec = self._preprocess.plan(*image.shape[:2])
        image_sizes = torch.tensor([spec.resized], device=self.device)
        return image_to_tensor(image, spec).to(self.device), image_sizes, spec

    def find(
        self,
        result: SegmentationResult,
        query: str,
        negative_queries: Sequence[str] = (),
        max_results: int = 10,
        min_score: float = 0.0,
    ) -> list[Instance]:
        """Score a free-text query against an already segmented frame's proposals.

        No image pass: the query's text embedding (cached) meets the frame's per-mask CLIP
        embeddings. The query, the negative queries and 'background' compete in one softmax, so
        a proposal that better fits a negative query ("blue mug" against "red mug") scores low.
        A query (or negative) naming an exemplar class of the current vocabulary is scored with
        that class's exemplar embedding, not as text.

        Which proposals match, and which duplicate a better one (mask IoU above
        ``find_overlap_iou``), is decided on the frame's precomputed mask quality and overlaps
        at the proposer's resolution; only the matches are scored at full size, as ``predict``
        scores instances, reusing the masks ``predict`` already rendered. So a query costs
        milliseconds, even while the next frame is segmented.

        :return: matches sorted by score (p_obj x p_clip(query) x mean in-mask sigmoid), each
            with ``class_id`` 0 and ``label`` the query; overlapping duplicates removed.
        :raises VocabularyError: for an empty or unusable query.
        """
        if result.proposals is None:
            raise ValueError('this result holds no proposals; it did not come from predict()')
        query = validate_query(query)
        negatives = [
            validate_query(text, f'negative query {number}')
            for number, text in enumerate(negative_queries, 1)
        ]
        entries = self._query_entries([query, *negatives])
        proposals = result.proposals
        with torch.inference_mode():
            text = self.text_cache.embed_entries(entries)
            class_scores = classify_masks(
                torch.from_numpy(proposals.embeddings),
                text.cpu(),
                torch.from_numpy(proposals.objectness),
                exemplar_thresholds=exemplar_thresholds(entries),
            )[:, 0].numpy()
        ranking = class_scores * proposals.mask_quality
        order = np.argsort(-ranking, kind='stable')
        candidates = order[(ranking[order] >= min_score) & (ranking[order] > 0)]
        chosen: list[int] = []
        for q in candidates.tolist():
            if len(chosen) == max_results:
                break
            if (proposals.overlaps[q, chosen] <= self.cfg.find_overlap_iou).all():
                chosen.append(q)
        full_logits = ImageSizeMaskLogits(torch.from_numpy(proposals.mask_logits), proposals.spec)
        matches = []
        for q in chosen:
            mask = proposals.rendered.get(q) or _render(*full_logits.cropped(q))
            score = float(class_scores[q]) * mask.quality
            if score >= min_score and score > 0:  # > 0: a faint mask may vanish at full size
                matches.append(
                    Instance(
                        query,
                        0,
                        score,
                        float(proposals.objectness[q]),
                        mask.box,
                        mask.crop,
                        proposals.embeddings[q],
                        q,
                        result.image_size,
                    )
                )
        return sorted(matches, key=lambda match: match.score, reverse=True)

    def _semantic(
        self, class_scores: torch.Tensor, low_res_logits: torch.Tensor, spec: ResizeSpec
    ) -> np.ndarray:
        # At the proposer's 1/4 resolution, then nearest-upsampled: the class-by-pixel product
        # is what grows with the vocabulary, so it runs on 16x fewer pixels (the reference
        # computes it at input resolution).
        labels = semantic_inference(class_scores, low_res_logits)
        labels = F.interpolate(labels[None, None].float(), size=spec.original, mode='nearest')
        return labels[0, 0].to(torch.int32).cpu().numpy()

    def _panoptic(
        self,
        active: _ActiveVocabulary,
        class_scores: torch.Tensor,
        full_logits: ImageSizeMaskLogits,
    ) -> tuple[np.ndarray, list[PanopticSegment]]:
        panoptic, infos = panoptic_inference(
            class_scores,
            full_logits,
            active.is_thing,
            self._object_mask_threshold,
            self._overlap_threshold,
        )
        names = active.vocabulary.names
        segments = [
            PanopticSegment(
                s.id, s.class_id, names[s.class_id], s.is_thing, s.score, s.area, s.query_index
            )
            for s in infos
        ]
        return panoptic.cpu().numpy().astype(np.int32), segments

    def _instance_candidates(
        self, active: _ActiveVocabulary, class_scores: torch.Tensor, things_only: bool
    ) -> set[int]:
        keep = active.is_thing if things_only else None
        _, queries, _ = top_instance_pairs(class_scores, self._max_instances, keep)
        return set(queries.tolist())

    def _instances(
        self,
        active: _ActiveVocabulary,
        class_scores: torch.Tensor,
        full_logits: ImageSizeMaskLogits,
        embeddings: torch.Tensor,
        objectness: torch.Tensor,
        things_only: bool,
    ) -> tuple[list[Instance], dict[int, RenderedMask]]:
        """The kept instances, and the full-size mask of each proposal behind them (for
        ``find``)."""
        found = instance_inference(
            class_scores,
            full_logits,
            self._max_instances,
            active.is_thing if things_only else None,
        )
        names = active.vocabulary.names
        embeddings, objectness = embeddings.cpu().numpy(), objectness.cpu().numpy()
        rendered = {
            q: RenderedMask(quality, box, crop.cpu().numpy())
            for q, quality, box, crop in zip(
                found.query_indices.tolist(),
                found.mask_quality.tolist(),
                found.boxes.cpu().numpy(),
                found.mask_crops,
                strict=True,
            )
        }
        instances = []
        for score, class_id, q in zip(
            found.scores.tolist(),
            found.class_ids.tolist(),
            found.query_indices.tolist(),
            strict=True,
        ):
            if score < self.cfg.score_threshold:
                break  # sorted by score
            mask = rendered[q]
            if int(mask.crop.sum()) < max(self.cfg.min_area_px, 1):
                continue  # empty masks too: a deliberate deviation (README)
            instances.append(
                Instance(
                    names[class_id],
                    class_id,
                    score,
                    float(objectness[q]),
                    mask.box,
                    mask.crop,
                    embeddings[q],
                    q,
                    full_logits.spec.original,
                )
            )
        return instances, rendered


@dataclass(frozen=True)
class _ActiveVocabulary:
    """The vocabulary with its class embeddings ((N + 1, D), background last), exemplar
    thresholds ((N + 1,), ``exemplar_thresholds``) and thing flags, replaced as one object so a
    frame never sees half of a change."""

    vocabulary: Vocabulary
    text: torch.Tensor
    thresholds: torch.Tensor
    is_thing: torch.Tensor


def _render(quality: float, box: torch.Tensor, crop: torch.Tensor) -> RenderedMask:
    """A proposal's RenderedMask from its ``cropped_mask``."""
    return RenderedMask(quality, box.cpu().numpy(), crop.cpu().numpy())


def _first(*values: object) -> object:
    return next(v for v in values if v is not None)


class _Stopwatch:
    """Records the seconds since the previous lap under a stage name."""

    def __init__(self, timings: dict[str, float], device: torch.device) -> None:
        self._timings = timings
        # CUDA kernels run asynchronously: wait for them so each lap times its own stage.
        self._sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        self._sync()
        now = time.perf_counter()
        self._timings[stage] = now - self._last
        self._last = now
