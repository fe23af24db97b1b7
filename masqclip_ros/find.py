"""The answer of a FindObjects request on a remembered frame: the query scored by the
predictor (no image pass), the matches as instances with their tracks (with 3D where the frame
had depth and the caller asks), FOUND or NOT_FOUND, and the words of the query the model does
not know; or, for a track id, that track's instance on the frame, or whether it is lost or
unknown there.
No rclpy node; unit-tested in test/ros/test_find.py.
"""

from __future__ import annotations

from masqclip_ros.srv import FindObjects

from masqclip.inference.predictor import Predictor
from masqclip.inference.results import Instance
from masqclip.inference.vocabulary import VocabularyError
from masqclip_ros import msg as ros_msg
from masqclip_ros.geometry import mask_geometry
from masqclip_ros.history import FrameRecord
from masqclip_ros.messages import instance_to_msg
from masqclip_ros.tracks import UNTRACKED_FRAME


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
        the message; None when it knows them all (and for a find by track id).
    """
    response.header = record.header
    if request.track_id:
        _answer_track(request, response, record, depth_min_points)
        return None
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
    for match in matches:
        if record.tracks is not None:
            match = record.tracks.with_track(match)
        out = _match_msg(request, record, match, depth_min_points)
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


def _answer_track(
    request: FindObjects.Request,
    response: FindObjects.Response,
    record: FrameRecord,
    depth_min_points: int,
) -> None:
    """Fill ``response`` for a find by track id: the track's instance on the frame, or why
    there is none."""
    track_id = int(request.track_id)
    if record.tracks is None:
        response.status = FindObjects.Response.ERROR
        response.message = UNTRACKED_FRAME
    elif track_id in record.tracks.in_view:
        instance = record.tracks.in_view[track_id]
        response.matches.append(_match_msg(request, record, instance, depth_min_points))
        response.status = FindObjects.Response.FOUND
        response.message = f'track {track_id} is in view as {instance.label!r}'
    else:
        response.status = FindObjects.Response.NOT_FOUND
        response.message = record.tracks.absence(track_id)


def _match_msg(
    request: FindObjects.Request, record: FrameRecord, match: Instance, depth_min_points: int
) -> ros_msg.Instance:
    """A match as the request wants it: with its mask, and its 3D where the frame had depth."""
    geometry = None
    if request.return_3d and record.depth_m is not None:
        geometry = mask_geometry(match.mask, record.depth_m, record.intrinsics, depth_min_points)
    return instance_to_msg(match, record.header, request.return_masks, geometry)
