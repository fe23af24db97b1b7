"""The answer of a FindObjects request on a remembered frame: the query scored by the
predictor (no image pass), the matches as instances (with 3D where the frame had depth and the
caller asks), FOUND or NOT_FOUND, and the words of the query the model does not know.
No rclpy node; unit-tested in test/ros/test_find.py.
"""

from __future__ import annotations

from masqclip_ros.srv import FindObjects

from masqclip.inference.predictor import Predictor
from masqclip.inference.vocabulary import VocabularyError
from masqclip_ros.geometry import mask_geometry
from masqclip_ros.history import FrameRecord
from masqclip_ros.messages import instance_to_msg


def answer_on_frame(
    request: FindObjects.Request,
    response: FindObjects.Response,
    predictor: Predictor,
    record: FrameRecord,
    depth_min_points: int,
) -> str | None:
    """Fill ``response`` (status, message, header, matches) for a valid ``request``.

    :param predictor: scores the query (``Predictor.find``) and knows its words.
    :param record: the frame the request asked for.
    :param depth_min_points: fewest valid depth pixels for a match's 3D.
    :return: the warning about words of the query the model does not know, also appended to
        the message; None when it knows them all.
    """
    response.header = record.header
    try:
        matches = predictor.find(
            record.result,
            request.query,
            list(request.negative_queries),
            max_results=int(request.max_results),
            min_score=float(request.min_score),
        )
    except (VocabularyError, ValueError) as error:
        response.status = FindObjects.Response.ERROR
        response.message = f'cannot score query {request.query!r}: {error}'
        return None
    use_3d = request.return_3d and record.depth_m is not None
    for match in matches:
        geometry = None
        if use_3d:
            geometry = mask_geometry(
                match.mask, record.depth_m, record.intrinsics, depth_min_points
            )
        out = instance_to_msg(match, record.header, request.return_masks, geometry)
        out.class_id = -1  # the query is no class of the vocabulary
        response.matches.append(out)
    if matches:
        response.status = FindObjects.Response.FOUND
        response.message = f'{len(matches)} match(es) for {request.query!r}'
    else:
        response.status = FindObjects.Response.NOT_FOUND
        response.message = f'nothing scores at least {request.min_score} for {request.query!r}'
    unknown = predictor.unknown_words_warning([request.query, *request.negative_queries])
    if unknown:
        response.message += f'; warning: {unknown}'
    return unknown
