"""masqclip_node: live open-vocabulary segmentation and "find the red mug" as a lifecycle node.

Declaration, lifecycle, callbacks and publishing. The rest lives in sibling modules: policy and
thread-safe state (``runtime``), the track ids (``tracks``), the frames kept for find
(``history``), a find's answer (``find``), teaching a class by showing it and the file that
keeps the taught classes (``teach``), the camera subscriptions and their QoS
(``camera_subscription``, ``image_qos``), the thread lanes (``executor``), the parameters
(``settings``), conversions, messages and 3D geometry; the model is a ``masqclip``
``Predictor``. Start it without launch with
``python -m masqclip_ros.node --ros-args --params-file config/segment.yaml``.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from masqclip_ros.msg import InstanceSegmentation, PanopticSegmentation
from masqclip_ros.msg import Vocabulary as VocabularyMsg
from masqclip_ros.srv import FindObjects, GetVocabulary, SetVocabulary, TeachClass
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import (
    CallbackGroup,
    MutuallyExclusiveCallbackGroup,
    ReentrantCallbackGroup,
)
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from masqclip.cpu_memory import keep_freed_memory
from masqclip.factory import create_predictor
from masqclip.inference.predictor import Predictor
from masqclip.inference.results import SegmentationResult
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry, VocabularyError
from masqclip.visualization import draw_overlay
from masqclip_ros.camera_subscription import CameraSubscription
from masqclip_ros.conversions import (
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
)
from masqclip_ros.executor import LaneExecutor
from masqclip_ros.find import answer_on_frame
from masqclip_ros.geometry import (
    Geometry3D,
    GeometryError,
    Intrinsics,
    mask_geometry,
)
from masqclip_ros.history import FrameHistory, NoFrame
from masqclip_ros.image_qos import silence_report
from masqclip_ros.messages import (
    detections_to_msg,
    diagnostics_to_msg,
    instances_to_msg,
    markers_to_msg,
    msgs_to_entries,
    panoptic_to_msg,
    semantic_to_msg,
    vocabulary_to_msg,
)
from masqclip_ros.runtime import (
    DepthInput,
    Frame,
    LatestSlot,
    RateGate,
    RateLimitedLog,
    Stats,
    changed_vocabulary,
    find_request_problem,
    parameter_vocabulary,
    stamp_problem,
    stamp_text,
    vocabulary_summary,
)
from masqclip_ros.settings import (
    PARAMETERS,
    SPECS,
    Settings,
    SettingsError,
    check_change,
    settings_from_values,
    with_live_values,
)
from masqclip_ros.teach import ExemplarStore, taught_entries, teach_from_request
from masqclip_ros.tracks import FrameTracker, track_overlay

try:  # the Detection2DArray mirror exists only where vision_msgs is installed
    import vision_msgs.msg as vision_msgs
except ImportError:
    vision_msgs = None

NODE_NAME = 'masqclip_node'
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
FIND_THREADS = 64
"""Finds served at once, each waiting for its frame on a thread of the find lane; more queue
for a thread, among themselves only."""
SERVICE_QOS = QoSProfile(depth=4 * FIND_THREADS, reliability=ReliabilityPolicy.RELIABLE)
"""Deep: the default depth of 10 drops requests (and unacknowledged answers) beyond ten at once."""
PUBLISHER_POLL_S = 1.0
"""How often input.reliability auto looks at the image publishers again."""
OUTPUTS = {
    'instances': (InstanceSegmentation, '~/instances', OUTPUT_QOS),
    'semantic': (Image, '~/semantic', OUTPUT_QOS),
    'labels': (VocabularyMsg, '~/semantic/labels', LATCHED_QOS),
    'panoptic': (PanopticSegmentation, '~/panoptic', OUTPUT_QOS),
    'overlay': (Image, '~/overlay', OUTPUT_QOS),
    'markers': (MarkerArray, '~/markers', OUTPUT_QOS),
    'diagnostics': (DiagnosticArray, '/diagnostics', 10),
}
"""The publishers made at configure: name -> (message type, topic, QoS)."""
if vision_msgs is not None:
    OUTPUTS['detections'] = (vision_msgs.Detection2DArray, '~/detections', OUTPUT_QOS)


class SegmentationNode(LifecycleNode):
    """The lifecycle node: configure loads the model, activate subscribes."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.settings: Settings | None = None
        self.predictor: Predictor | None = None
        self.vocabulary_version = 0
        self._exemplars = ExemplarStore()  # teach.file, replaced at configure
        self.stats = Stats()
        self._log = RateLimitedLog(self.get_logger())
        # Held while the predictor and its vocabulary (with the version) are read or changed,
        # never across an image pass: predict snapshots its vocabulary itself. find never
        # takes it: it scores a stored frame with the predictor's thread-safe text cache.
        self._vocabulary_lock = threading.RLock()
        self._slot: LatestSlot[Frame] = LatestSlot()
        self._history = FrameHistory()
        self._tracker: FrameTracker | None = None  # made at configure, fed by the worker
        self._rate_gate = RateGate()
        self._depth_input = DepthInput()
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self._active_since = 0.0
        self._last_warning = 0.0
        self._camera: CameraSubscription | None = None
        self._depth_camera: CameraSubscription | None = None
        self._subscription_handles: list = []
        self._outputs: dict[str, object] = {}
        self._timer_handles: list = []
        self._image_topic = ''
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._find_group = ReentrantCallbackGroup()
        self._create_services()
        self.finalized = Future()
        """Done once the node has shut down (``main`` then ends the process)."""

    def thread_lanes(self) -> dict[CallbackGroup, int]:
        """The callback groups that need threads of their own (see ``LaneExecutor``): image
        input one, find a pool, so that finds waiting for the next frame never take a thread
        from image handling or from the other services."""
        return {self._input_group: 1, self._find_group: FIND_THREADS}

    def _create_services(self) -> None:
        """The services, for the node's whole life: destroying one while a call is in flight
        killed the executor, and a call made while it was gone was never answered. They
        answer 'not configured' until configure."""
        for kind, name, callback, group in [
            (SetVocabulary, '~/set_vocabulary', self._on_set_vocabulary, self._service_group),
            (GetVocabulary, '~/get_vocabulary', self._on_get_vocabulary, self._service_group),
            (FindObjects, '~/find', self._on_find, self._find_group),
            (TeachClass, '~/teach', self._on_teach, self._service_group),
        ]:
            self.create_service(
                kind, name, callback, qos_profile=SERVICE_QOS, callback_group=group
            )

    # Lifecycle ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, load the model and vocabulary, create outputs and services."""
        try:
            return self._configure()
        except Exception as error:
            # rclpy turns an exception here into a silent ERROR transition: say what broke.
            self.get_logger().error(f'configure failed: {type(error).__name__}: {error}')
            self._release()
            return TransitionCallbackReturn.ERROR

    def _configure(self) -> TransitionCallbackReturn:
        try:
            settings = settings_from_values(
                {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
            )
            vocabulary = parameter_vocabulary(settings.vocabulary, settings.vocabulary_file)
        except (SettingsError, VocabularyError) as error:
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        started = time.perf_counter()
        try:
            predictor = create_predictor(**settings.predictor_options())
        except (OSError, ValueError, RuntimeError) as error:
            self.get_logger().error(
                f'configure failed: cannot build the model {settings.model_summary}: {error}'
            )
            return TransitionCallbackReturn.FAILURE
        exemplars = ExemplarStore(settings.teach_file)
        try:  # the taught classes of teach.file, which must be this model's
            vocabulary = exemplars.load(vocabulary, predictor.model_fingerprint)
        except VocabularyError as error:
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        self.settings = settings
        self._history.clear(settings.find_buffer_size)
        if settings.tracking is not None:
            self._tracker = FrameTracker(settings.tracking, settings.tracking_min_score)
        if settings.tracking_problem:
            self.get_logger().warning(settings.tracking_problem)
        self._outputs = {
            name: self.create_publisher(*publisher) for name, publisher in OUTPUTS.items()
        }
        # The services see the predictor only with its outputs and vocabulary in place.
        with self._vocabulary_lock:
            self.predictor, self._exemplars = predictor, exemplars
            self._apply_vocabulary(vocabulary, 'parameters')
        self._timer_handles = [
            self.create_timer(settings.diagnostics_period_s, self._on_diagnostics)
        ]
        if settings.reliability == 'auto':
            self._timer_handles.append(
                self.create_timer(PUBLISHER_POLL_S, self._follow_publishers)
            )
        self.get_logger().info(
            f'configured: model {settings.model_summary} in '
            f'{time.perf_counter() - started:.1f} s, {len(vocabulary)} classes '
            f'({len(taught_entries(vocabulary))} taught)'
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the inputs and start the inference thread."""
        try:
            self._activate()
        except Exception as error:
            # rclpy turns an exception here into a silent ERROR transition: say what broke.
            self.get_logger().error(f'activate failed: {type(error).__name__}: {error}')
            return TransitionCallbackReturn.ERROR
        return super().on_activate(state)

    def _activate(self) -> None:
        settings = self.settings
        group = self._input_group
        if settings.compressed:
            self._camera = CameraSubscription(
                self, CompressedImage, 'image/compressed', self._on_compressed, group
            )
        else:
            self._camera = CameraSubscription(self, Image, 'image', self._on_image, group)
        self._camera.subscribe(settings.reliability)
        self._image_topic = self._camera.topic
        self._subscription_handles = [
            self.create_subscription(VocabularyMsg, 'vocabulary', self._on_vocabulary_topic,
                                     LATCHED_QOS, callback_group=group),
        ]  # fmt: skip
        if settings.depth_enabled:
            self._depth_camera = CameraSubscription(self, Image, 'depth', self._on_depth, group)
            self._depth_camera.subscribe(settings.reliability)
            self._subscription_handles.append(
                self.create_subscription(
                    CameraInfo, 'camera_info', self._on_camera_info, 10, callback_group=group
                )
            )
        self._active_since = self._last_warning = time.monotonic()
        self._slot.clear()  # a frame a late callback left while inactive
        self._running.set()
        self._history.start()
        self._worker = threading.Thread(
            target=self._run_worker, name='masqclip-inference', daemon=True
        )
        self._worker.start()
        self.get_logger().info(
            f'active: segmenting {self._image_topic} '
            f'({self._camera.qos.reliability.name.lower()}, depth 1)'
        )

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the inference thread; the model stays loaded."""
        self._stop_worker()
        self._unsubscribe()
        self.get_logger().info('deactivated: unsubscribed, the model stays loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model, outputs and buffers (the services stay and answer 'not
        configured')."""
        self._release()
        self.get_logger().info('cleaned up: model, outputs and frames freed')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        self._stop_worker()
        self._unsubscribe()
        self._release()
        self.get_logger().info(f'shut down from {state.label}')
        self.finalized.set_result(True)
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for camera in (self._camera, self._depth_camera):
            if camera is not None:
                camera.destroy()
        for subscription in self._subscription_handles:
            self.destroy_subscription(subscription)
        self._camera = self._depth_camera = None
        self._subscription_handles = []

    def _release(self) -> None:
        # The predictor goes first, under the lock: a vocabulary change in flight then either
        # published before, or sees no predictor and publishes nothing on the freed outputs.
        with self._vocabulary_lock:
            self.predictor = None
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        for timer in self._timer_handles:
            self.destroy_timer(timer)
        self._outputs, self._timer_handles = {}, []
        self._history.clear()
        self._depth_input.clear()
        self._tracker = None

    def stop(self) -> None:
        """Stop the inference thread (idempotent); the node is left for destruction."""
        self._stop_worker()

    def _stop_worker(self) -> None:
        self._running.clear()
        self._slot.clear()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        self._history.stop()  # NEXT finds stop waiting for a frame that will not come

    def _follow_publishers(self) -> None:
        """With reliability auto, let the camera streams follow their publishers (see
        ``CameraSubscription``).

        Polled, as rclpy calls nothing when a topic gains or loses a publisher, on a timer of
        its own: publishing diagnostics must not change subscriptions, nor a long diagnostics
        period delay the switch. In the default callback group, with the lifecycle services,
        so never during a transition that subscribes or unsubscribes.
        """
        for camera in (self._camera, self._depth_camera):
            if camera is not None and camera.follow():
                self.get_logger().info(
                    f'{camera.topic}: publishers changed, subscription now '
                    f'{camera.qos.reliability.name.lower()}'
                )

    # Inputs ---------------------------------------------------------------------------

    def _accept_rate(self) -> bool:
        self.stats.image_received()
        if self._rate_gate.admit(self.settings.max_rate_hz):
            return True
        self.stats.image_skipped()
        return False

    def _on_image(self, msg: Image) -> None:
        self._convert_and_enqueue(msg, image_msg_to_rgb)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._convert_and_enqueue(msg, lambda m, limit: compressed_msg_to_rgb(m, limit, self._log))

    def _convert_and_enqueue(self, msg: Image | CompressedImage, convert: object) -> None:
        if not self._accept_rate() or not self._stamp_ok(msg, 'image', self._image_topic):
            return
        started = time.perf_counter()
        try:
            pixels, color = convert(msg, self.settings.max_pixels)
        except ImageConversionError as error:
            self._reject(('image', error.field), f'rejected image on {self._image_topic}: {error}')
            return
        except Exception as error:  # noqa: BLE001 - an exception here would stop the executor
            self._reject(
                ('image', type(error).__name__),
                f'rejected image on {self._image_topic}: {type(error).__name__}: {error}',
            )
            return
        self._enqueue(Frame(msg.header, pixels, color, time.perf_counter() - started))

    def _reject(self, key: tuple[str, ...], message: str) -> None:
        self.stats.input_rejected()
        self._log('error', key, message)

    def _enqueue(self, frame: Frame) -> None:
        if self._slot.put(frame):
            self.stats.frame_dropped()

    def _stamp_ok(self, msg: object, kind: str, topic: str) -> bool:
        """Refuse an input whose stamp is no ROS time at the door: kept, it would fail every
        frame matched against it."""
        problem = stamp_problem(msg.header.stamp)
        if problem is not None:
            topic = self.resolve_topic_name(topic)
            self._reject(('stamp', kind), f'rejected {kind} on {topic}: header {problem}')
        return problem is None

    def _on_depth(self, msg: Image) -> None:
        if self._stamp_ok(msg, 'depth', 'depth'):
            self._depth_input.add(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if self._stamp_ok(msg, 'camera_info', 'camera_info'):
            self._depth_input.camera_info = msg

    def _on_vocabulary_topic(self, msg: VocabularyMsg) -> None:
        ok, message, _, _ = self._change_vocabulary(
            msgs_to_entries(msg.entries), SetVocabulary.Request.REPLACE, 'the vocabulary topic'
        )
        if not ok:
            self._log('error', ('vocabulary',), f'rejected vocabulary on topic: {message}')

    # Inference ------------------------------------------------------------------------

    def _run_worker(self) -> None:
        while self._running.is_set():
            frame = self._slot.take(timeout=0.2)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as error:  # noqa: BLE001 - one bad frame must not stop the node
                self.stats.inference_failed()
                self._log(
                    'error',
                    ('inference', type(error).__name__),
                    f'frame {stamp_text(frame.header.stamp)} failed: '
                    f'{type(error).__name__}: {error}',
                )

    def _process(self, frame: Frame) -> None:
        settings = self.settings
        with self._vocabulary_lock:
            predictor, version = self.predictor, self.vocabulary_version
            if predictor is None:
                return
            vocabulary = predictor.vocabulary
        started = time.perf_counter()
        result = predictor.predict(frame.pixels, frame.color, settings.tasks)
        predicted = time.perf_counter()
        predict_time = predicted - started
        if result.vocabulary != vocabulary.names:  # a change landed before predict's snapshot
            with self._vocabulary_lock:
                version, vocabulary = self.vocabulary_version, predictor.vocabulary
        header = frame.header
        tracks, tracker = None, self._tracker
        if tracker is not None:
            tracked = tracker.track(result, vocabulary.is_thing, header.stamp, version)
            result, tracks = tracked.result, tracked.tracks
            if tracked.reset is not None:
                self.get_logger().info(tracked.reset)
        depth_m, intrinsics = self._depth_for(header) if settings.depth_enabled else (None, None)
        geometries: list[Geometry3D | None] | None = None
        if depth_m is not None and intrinsics is not None:
            geometries = [
                mask_geometry(inst.mask, depth_m, intrinsics, settings.depth_min_points)
                for inst in result.instances
            ]
        # Remembered first: a client that sees this frame's outputs can find on it at once.
        self._history.remember(header, result, version, depth_m, intrinsics, tracks)
        self._publish(frame, result, version, geometries)
        done = time.perf_counter()
        stamp = Time.from_msg(header.stamp)
        latency = None
        if stamp.nanoseconds > 0:
            latency = (self.get_clock().now() - stamp).nanoseconds * 1e-9
        # Node overhead: conversion, 3D, message building and publishing (no queue wait).
        self.stats.frame_processed(predict_time, frame.convert_s + done - predicted, latency)

    def _publish(
        self,
        frame: Frame,
        result: SegmentationResult,
        version: int,
        geometries: list[Geometry3D | None] | None,
    ) -> None:
        """Publish every output someone subscribes to (the others are not even built)."""
        header, out = frame.header, self._outputs

        def wanted(name: str) -> bool:
            return name in out and out[name].get_subscription_count() > 0

        if wanted('instances'):
            out['instances'].publish(instances_to_msg(result, header, version, geometries))
        if result.semantic is not None and wanted('semantic'):
            out['semantic'].publish(semantic_to_msg(result.semantic, header))
        if result.panoptic is not None and wanted('panoptic'):
            out['panoptic'].publish(panoptic_to_msg(result, header, version))
        if wanted('detections'):
            out['detections'].publish(detections_to_msg(result, header, vision_msgs))
        if geometries is not None and wanted('markers'):
            markers = markers_to_msg(
                result.instances, geometries, header, self.settings.marker_lifetime_s
            )
            out['markers'].publish(markers)
        if wanted('overlay'):
            rgb = frame.pixels if frame.color == 'rgb' else frame.pixels[:, :, ::-1]
            labels = track_overlay(result)
            drawing = draw_overlay(rgb, result, self.settings.overlay_alpha, labels.show,
                                   colors=labels.colors, texts=labels.texts)  # fmt: skip
            out['overlay'].publish(array_to_image_msg(drawing, 'rgb8', header))

    def _depth_for(self, header: Header) -> tuple[np.ndarray | None, Intrinsics | None]:
        """The depth image paired with ``header`` (in metres) and the intrinsics, or Nones."""
        settings = self.settings
        try:
            depth_m, intrinsics, problem = self._depth_input.for_frame(
                header.stamp, settings.depth_sync_slop_s, settings.depth_scale, settings.max_pixels
            )
        except ImageConversionError as error:
            self._reject(('depth', error.field), f'rejected depth image: {error}')
            return None, None
        except GeometryError as error:
            self._log('error', ('camera_info',), f'rejected camera_info: {error}')
            return None, None
        if problem is not None:
            self._log('warning', ('depth', 'sync'), problem)
        return depth_m, intrinsics

    # Vocabulary -----------------------------------------------------------------------

    def _apply_vocabulary(self, vocabulary: Vocabulary, source: str) -> tuple[float, list[str]]:
        """Make ``vocabulary`` current as a new version; return the text encoding seconds and
        the warnings for the caller: the words the model does not know, teach.file not
        saved."""
        with self._vocabulary_lock:
            seconds = self.predictor.set_vocabulary(vocabulary)
            unsaved = self._announce_vocabulary(
                vocabulary, source, f'text encoded in {seconds * 1000:.1f} ms'
            )
        unknown = self.predictor.unknown_words_warning(vocabulary)
        if unknown:
            self.get_logger().warning(f'vocabulary from {source}: {unknown}')
        return seconds, [warning for warning in (unknown, unsaved) if warning]

    def _announce_vocabulary(self, vocabulary: Vocabulary, source: str, detail: str) -> str | None:
        """Once the predictor has made ``vocabulary`` current: count a new version (the tracker
        starts anew on it), publish the latched labels, log it, and save teach.file when the
        taught classes changed; return why they could not be saved (None: saved or unchanged).
        """
        with self._vocabulary_lock:
            self.vocabulary_version += 1
            version = self.vocabulary_version
            message = vocabulary_to_msg(vocabulary, version, self.get_clock().now().to_msg())
            self._outputs['labels'].publish(message)  # under the lock: cleanup frees it
            unsaved = self._exemplars.save(vocabulary)
        self.get_logger().info(
            f'vocabulary version {version} from {source}: {len(vocabulary)} classes, {detail}'
        )
        if unsaved:
            self.get_logger().warning(unsaved)
        return unsaved

    def _change_vocabulary(
        self, entries: tuple[VocabularyEntry, ...], mode: int, source: str
    ) -> tuple[bool, str, int, float]:
        """Apply a vocabulary change unless it changes nothing (the version counts changes;
        ``source`` names it in the log); return (success, the refusal or a summary, version,
        encode seconds)."""
        with self._vocabulary_lock:
            if self.predictor is None:
                return False, 'the node is not configured', self.vocabulary_version, 0.0
            current = self.predictor.vocabulary
            try:
                vocabulary = changed_vocabulary(current, entries, mode)
            except (VocabularyError, TypeError) as error:
                return False, str(error), self.vocabulary_version, 0.0
            summary = vocabulary_summary(vocabulary)
            if vocabulary == current:
                return True, f'unchanged, {summary}', self.vocabulary_version, 0.0
            seconds, warnings = self._apply_vocabulary(vocabulary, source)
            # The caller learns why some classes cannot be found, or will not be kept.
            summary += ''.join(f'; warning: {warning}' for warning in warnings)
            return True, summary, self.vocabulary_version, seconds

    def _on_set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        ok, message, version, seconds = self._change_vocabulary(
            msgs_to_entries(request.entries), request.mode, 'set_vocabulary'
        )
        response.success, response.message, response.version = ok, message, version
        response.encode_time_s = float(seconds)
        if not ok:
            self._log('warning', ('set_vocabulary',), f'set_vocabulary refused: {message}')
        return response

    def _on_get_vocabulary(
        self, request: GetVocabulary.Request, response: GetVocabulary.Response
    ) -> GetVocabulary.Response:
        with self._vocabulary_lock:
            if self.predictor is not None:
                response.vocabulary = vocabulary_to_msg(
                    self.predictor.vocabulary,
                    self.vocabulary_version,
                    self.get_clock().now().to_msg(),
                )
        return response

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        """Check changed values. While configured, refuse all but live ones, and apply those:
        to the settings, which the node reads them from, and to the vocabulary."""
        configured = self.predictor is not None
        changes = {
            parameter.name: parameter.value for parameter in parameters if parameter.name in SPECS
        }
        vocabulary = None
        try:
            for name, value in changes.items():
                check_change(name, value, configured)
            if not configured or not changes:  # configure reads every value
                return SetParametersResult(successful=True)
            live = {
                spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS if spec.live
            }
            settings = with_live_values(self.settings, {**live, **changes})
            if changes.keys() & {'vocabulary', 'vocabulary_file'}:
                vocabulary = parameter_vocabulary(settings.vocabulary, settings.vocabulary_file)
        except (SettingsError, VocabularyError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        if vocabulary is not None:
            ok, message, _, _ = self._change_vocabulary(
                vocabulary.entries, SetVocabulary.Request.REPLACE, 'parameters'
            )
            if not ok:
                return SetParametersResult(successful=False, reason=message)
        self.settings = settings
        return SetParametersResult(successful=True)

    # Find -----------------------------------------------------------------------------

    def _on_find(
        self, request: FindObjects.Request, response: FindObjects.Response
    ) -> FindObjects.Response:
        response.status = FindObjects.Response.ERROR
        response.message = find_request_problem(request) or ''
        if response.message:
            return response
        predictor = self.predictor  # one read: cleanup may drop it meanwhile
        if predictor is None:
            response.message = 'the node is not configured'
            return response
        record = self._history.find(request, self._image_topic)
        if isinstance(record, NoFrame):
            response.status, response.message = record.status, record.message
            return response
        unknown = answer_on_frame(
            request, response, predictor, record, self.settings.depth_min_points
        )
        if unknown:
            self._log('warning', ('find', 'unknown words'), f'find {request.query!r}: {unknown}')
        return response

    # Teach ----------------------------------------------------------------------------

    def _on_teach(
        self, request: TeachClass.Request, response: TeachClass.Response
    ) -> TeachClass.Response:
        with self._vocabulary_lock:  # one vocabulary change at a time
            if self.predictor is None:
                response.message = 'the node is not configured'
            else:
                try:
                    taught = teach_from_request(
                        request, self._history, self.predictor, self.settings.max_pixels
                    )
                except VocabularyError as error:  # the vocabulary stays as it was
                    response.message = str(error)
                else:
                    unsaved = self._announce_vocabulary(taught.vocabulary, 'teach', taught.message)
                    warning = f'; warning: {unsaved}' if unsaved else ''
                    response.success, response.message = True, taught.message + warning
                    response.class_id = taught.class_id
                    response.example_count = taught.example_count
            response.version = self.vocabulary_version
        if not response.success:
            self._log('warning', ('teach',), f'teach refused: {response.message}')
        return response

    # Diagnostics ----------------------------------------------------------------------

    def _on_diagnostics(self) -> None:
        settings = self.settings
        window = self.stats.take_window()
        now = time.monotonic()
        level, message = DiagnosticStatus.OK, 'segmenting'
        if not self._running.is_set():
            message = 'configured, not active'
        else:
            silent = now - (self.stats.last_image or self._active_since)
            if silent > settings.warn_after_s:
                level = DiagnosticStatus.WARN
                message = f'no image for {silent:.0f} s on {self._image_topic}'
                camera = self._camera
                if camera is not None and now - self._last_warning > settings.warn_after_s:
                    self._last_warning = now
                    self.get_logger().warning(
                        silence_report(camera.topic, silent, camera.qos, camera.publishers())
                    )
        tracker = self._tracker  # one read: cleanup may drop it meanwhile
        values = {
            **window,
            **self.stats.totals(),
            **(tracker.diagnostic_values() if tracker is not None else {'tracking': 'off'}),
            **settings.diagnostic_values(),
            'vocabulary version': self.vocabulary_version,
            'vocabulary size': len(self.predictor.vocabulary) if self.predictor else 0,
            'image topic': self._image_topic,
        }
        self._outputs['diagnostics'].publish(
            diagnostics_to_msg(
                self.get_clock().now().to_msg(),
                f'{self.get_name()}: segmentation',
                f'{settings.backend}:{settings.device}',
                level,
                message,
                values,
            )
        )


def main(argv: list[str] | None = None) -> int:
    """Start the node and bring it to active (no lifecycle manager needed); return once it is
    shut down (Ctrl-C, or the lifecycle shutdown transition).

    :param argv: command line, ROS arguments included (default: ``sys.argv``).
    :return: exit status: 0 after a normal shutdown, 1 when configure or activate failed.
    """
    keep_freed_memory()  # before the first frame's activations are allocated
    rclpy.init(args=argv)
    node = SegmentationNode()
    executor = LaneExecutor(node.thread_lanes(), num_threads=4)
    executor.add_node(node)
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().fatal('could not configure: see the error above')
            return 1
        if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().fatal('could not activate: see the error above')
            return 1
        # A finalized node serves nothing: the process ends, so that `ros2 launch` does too.
        executor.spin_until_future_complete(node.finalized)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # After Ctrl-C the context is gone and rcl has already moved the state machine to
        # shutting down without our callback: stop the inference thread either way.
        if rclpy.ok() and not node.finalized.done():
            node.trigger_shutdown()
        node.stop()
        executor.shutdown()  # waits for the callbacks in flight: the shutdown call's answer
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
