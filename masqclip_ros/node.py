"""masqclip_node: live open-vocabulary segmentation and "find the red mug" as a lifecycle node.

Wiring only: conversions, message building and 3D geometry are pure functions in sibling
modules; the model is a ``masqclip`` ``Predictor``. Start it without launch with
``python -m masqclip_ros.node --ros-args --params-file config/segment.yaml``.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from masqclip_ros.msg import InstanceSegmentation, PanopticSegmentation
from masqclip_ros.msg import Vocabulary as VocabularyMsg
from masqclip_ros.srv import FindObjects, GetVocabulary, SetVocabulary
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import (
    CallbackGroup,
    MutuallyExclusiveCallbackGroup,
    ReentrantCallbackGroup,
)
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    ShutdownException,
    TimeoutException,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from masqclip.factory import DEMO_CHECKPOINT, create_predictor
from masqclip.inference.predictor import Predictor
from masqclip.inference.results import SegmentationResult
from masqclip.inference.vocabulary import Vocabulary, VocabularyError
from masqclip.visualization import draw_overlay
from masqclip_ros.conversions import (
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    depth_msg_to_metres,
    image_msg_to_rgb,
)
from masqclip_ros.geometry import Geometry3D, GeometryError, intrinsics_from_k, mask_geometry
from masqclip_ros.messages import (
    detections_to_msg,
    diagnostics_to_msg,
    instance_to_msg,
    instances_to_msg,
    markers_to_msg,
    msgs_to_entries,
    panoptic_to_msg,
    semantic_to_msg,
    vocabulary_to_msg,
)
from masqclip_ros.runtime import (
    changed_vocabulary,
    find_request_problem,
    stamp_problem,
    vocabulary_summary,
)
from masqclip_ros.settings import (
    PARAMETERS,
    SPECS,
    Settings,
    SettingsError,
    check_value,
    settings_from_values,
)

try:  # the Detection2DArray mirror exists only where vision_msgs is installed
    import vision_msgs.msg as vision_msgs
except ImportError:
    vision_msgs = None

NODE_NAME = 'masqclip_node'
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
LOG_PERIOD_S = 5.0
FIND_THREADS = 64
"""Finds served at once, each waiting for its frame on a thread of the find lane; more queue
for a thread, among themselves only."""
SERVICE_QOS = QoSProfile(depth=4 * FIND_THREADS, reliability=ReliabilityPolicy.RELIABLE)
"""Deep: the default depth of 10 drops requests (and unacknowledged answers) beyond ten at once."""


@dataclass
class Frame:
    """A converted camera image waiting for inference."""

    header: Header
    pixels: np.ndarray
    color: str
    convert_s: float


@dataclass
class FrameRecord:
    """What the find service needs of a processed frame (no full-size instance masks)."""

    index: int
    header: Header
    result: SegmentationResult
    vocabulary_version: int
    depth_m: np.ndarray | None
    intrinsics: object | None


class LatestSlot:
    """A depth-1 queue that keeps the newest item: a put replaces an item not yet taken."""

    def __init__(self) -> None:
        self._item: Frame | None = None
        self._ready = threading.Condition()

    def put(self, item: Frame) -> bool:
        """Store ``item``; return True when it replaced (dropped) an untaken one."""
        with self._ready:
            dropped = self._item is not None
            self._item = item
            self._ready.notify()
        return dropped

    def take(self, timeout: float) -> Frame | None:
        """Wait up to ``timeout`` seconds for an item and remove it."""
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout)
            item, self._item = self._item, None
        return item

    def clear(self) -> None:
        """Forget a waiting item."""
        with self._ready:
            self._item = None


class RateLimitedLog:
    """Logs each kind of fault at most once per period, saying how many were suppressed."""

    def __init__(self, log: object, period_s: float = LOG_PERIOD_S) -> None:
        self._log = log
        self._period = period_s
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, level: str, key: tuple[str, ...], message: str) -> None:
        """Log ``message`` at ``level`` ('error' or 'warning') unless ``key`` was logged
        within the period."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self._period:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f' ({suppressed} more like this in the last {self._period:g} s)'
        # rclpy's logger refuses two severities from one call site: one call per level.
        if level == 'error':
            self._log.error(message)
        else:
            self._log.warning(message)


class Stats:
    """Counters and timings for /diagnostics; windows restart at each report."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = self.processed = self.dropped = self.rejected = self.skipped = 0
        self.errors = 0
        self.last_image = None
        self.window_start = time.monotonic()
        self.window_received = self.window_processed = 0
        self.latencies: list[float] = []
        self.predict_times: list[float] = []
        self.overheads: list[float] = []

    def take_window(self) -> dict[str, float]:
        """Rates and mean/max times since the last call, and restart the window."""
        with self.lock:
            now = time.monotonic()
            span = max(now - self.window_start, 1e-6)
            out = {
                'input rate (Hz)': self.window_received / span,
                'output rate (Hz)': self.window_processed / span,
                'latency mean (s)': float(np.mean(self.latencies)) if self.latencies else 0.0,
                'latency max (s)': float(np.max(self.latencies)) if self.latencies else 0.0,
                'predictor time (s)': float(np.mean(self.predict_times))
                if self.predict_times
                else 0.0,
                'node overhead (s)': float(np.mean(self.overheads)) if self.overheads else 0.0,
            }
            self.window_start = now
            self.window_received = self.window_processed = 0
            self.latencies, self.predict_times, self.overheads = [], [], []
        return out


class LaneExecutor(Executor):
    """An executor whose callback groups may own thread pools ("lanes"); the other callbacks
    share the default pool.

    rclpy's MultiThreadedExecutor runs every callback on one pool, so callbacks that wait
    (a find waiting for the next frame) can hold every thread while the image callback that
    would end their wait queues behind them. A callback of a lane never waits for a thread of
    another lane or of the default pool, nor takes one.

    :param lanes: callback group -> the threads of its own pool.
    :param num_threads: threads of the default pool.
    """

    def __init__(self, lanes: dict[CallbackGroup, int], num_threads: int = 4) -> None:
        super().__init__()
        self._default_pool = ThreadPoolExecutor(num_threads, 'masqclip-callbacks')
        self._lane_pools = {
            group: ThreadPoolExecutor(threads, f'masqclip-lane{number}')
            for number, (group, threads) in enumerate(lanes.items())
        }
        self._handlers: list[Future] = []

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self._spin_once_impl(timeout_sec)

    def _spin_once_until_future_complete(
        self, future: Future, timeout_sec: float | None = None
    ) -> None:  # what Executor.spin_until_future_complete calls
        self._spin_once_impl(timeout_sec, future.done)

    def _spin_once_impl(
        self, timeout_sec: float | None = None, wait_condition: Callable[[], bool] = lambda: False
    ) -> None:
        try:
            handler, entity, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (
            ConditionReachedException,
            ExternalShutdownException,
            ShutdownException,
            TimeoutException,
        ):
            return
        group = getattr(entity, 'callback_group', None)
        self._lane_pools.get(group, self._default_pool).submit(handler)
        self._handlers.append(handler)
        for done in [handler for handler in self._handlers if handler.done()]:
            self._handlers.remove(done)
            done.result()  # a callback's exception stops spin, as in rclpy's executors

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        """Stop executing callbacks and wait for the running ones to finish."""
        finished = super().shutdown(timeout_sec)
        for pool in (self._default_pool, *self._lane_pools.values()):
            pool.shutdown(wait=True)
        return finished


class SegmentationNode(LifecycleNode):
    """The lifecycle node: configure loads the model, activate subscribes."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(description=spec.description)
            if spec.choices:
                descriptor.additional_constraints = 'one of: ' + ', '.join(spec.choices)
            if spec.bounds is not None and isinstance(spec.default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=spec.bounds[0], to_value=spec.bounds[1])
                ]
            elif spec.bounds is not None:
                descriptor.integer_range = [
                    IntegerRange(from_value=int(spec.bounds[0]), to_value=int(spec.bounds[1]))
                ]
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.settings: Settings | None = None
        self.predictor: Predictor | None = None
        self.vocabulary_version = 0
        self.stats = Stats()
        self._log = RateLimitedLog(self.get_logger())
        # Held while the predictor and its vocabulary (with the version) are read or changed,
        # never across an image pass: predict snapshots its vocabulary itself. find never
        # takes it: it scores a stored frame with the predictor's thread-safe text cache.
        self._vocabulary_lock = threading.RLock()
        self._slot = LatestSlot()
        self._frames: collections.deque[FrameRecord] = collections.deque()
        self._frame_ready = threading.Condition()
        self._frame_index = 0
        self._depth: collections.deque[Image] = collections.deque(maxlen=8)
        self._camera_info: CameraInfo | None = None
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self._active_since = 0.0
        self._last_warning = 0.0
        self._last_rate_accept = 0.0
        self._image_subscription = None
        self._subscription_handles: list = []
        self._outputs: dict[str, object] = {}
        self._timer_handles: list = []
        self._image_topic = ''
        self._image_qos: QoSProfile | None = None
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
            vocabulary = self._vocabulary_from(settings.vocabulary, settings.vocabulary_file)
        except (SettingsError, VocabularyError) as error:
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        started = time.perf_counter()
        try:
            predictor = create_predictor(**settings.predictor_options())
        except (OSError, ValueError, RuntimeError) as error:
            self.get_logger().error(
                f'configure failed: cannot build the model {model_name(settings)} '
                f'(backend {settings.backend}, device {settings.device}): {error}'
            )
            return TransitionCallbackReturn.FAILURE
        self.settings = settings
        with self._frame_ready:
            self._frames = collections.deque(maxlen=settings.find_buffer_size)
        self._outputs = {
            'instances': self.create_publisher(InstanceSegmentation, '~/instances', OUTPUT_QOS),
            'semantic': self.create_publisher(Image, '~/semantic', OUTPUT_QOS),
            'labels': self.create_publisher(VocabularyMsg, '~/semantic/labels', LATCHED_QOS),
            'panoptic': self.create_publisher(PanopticSegmentation, '~/panoptic', OUTPUT_QOS),
            'overlay': self.create_publisher(Image, '~/overlay', OUTPUT_QOS),
            'markers': self.create_publisher(MarkerArray, '~/markers', OUTPUT_QOS),
            'diagnostics': self.create_publisher(DiagnosticArray, '/diagnostics', 10),
        }
        if vision_msgs is not None:
            self._outputs['detections'] = self.create_publisher(
                vision_msgs.Detection2DArray, '~/detections', OUTPUT_QOS
            )
        # The services see the predictor only with its outputs and vocabulary in place.
        with self._vocabulary_lock:
            self.predictor = predictor
            self._apply_vocabulary(vocabulary, 'parameters')
        self._timer_handles = [
            self.create_timer(settings.diagnostics_period_s, self._on_diagnostics)
        ]
        self.get_logger().info(
            f'configured: model {model_name(settings)} on {settings.device} '
            f'({settings.backend}, {settings.precision}) in {time.perf_counter() - started:.1f} s'
            f', {len(vocabulary)} classes'
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
        self._image_qos = self._choose_image_qos(settings)
        self._image_subscription = self._subscribe_image(settings)
        group = self._input_group
        self._subscription_handles = [
            self.create_subscription(
                VocabularyMsg,
                'vocabulary',
                self._on_vocabulary_topic,
                LATCHED_QOS,
                callback_group=group,
            ),  # fmt: skip
        ]
        if settings.depth_enabled:
            self._subscription_handles += [
                self.create_subscription(
                    Image, 'depth', self._on_depth, self._image_qos, callback_group=group
                ),
                self.create_subscription(
                    CameraInfo, 'camera_info', self._on_camera_info, 10, callback_group=group
                ),
            ]
        self._active_since = self._last_warning = time.monotonic()
        self._slot.clear()  # a frame a late callback left while inactive
        self._running.set()
        self._worker = threading.Thread(
            target=self._run_worker, name='masqclip-inference', daemon=True
        )
        self._worker.start()
        self.get_logger().info(
            f'active: segmenting {self._image_topic} '
            f'({self._image_qos.reliability.name.lower()}, depth 1)'
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
        for subscription in [self._image_subscription, *self._subscription_handles]:
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._image_subscription = None
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
        with self._frame_ready:  # a find may be reading the ring
            self._frames.clear()
        self._depth.clear()

    def stop(self) -> None:
        """Stop the inference thread (idempotent); the node is left for destruction."""
        self._stop_worker()

    def _stop_worker(self) -> None:
        self._running.clear()
        self._slot.clear()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._frame_ready:  # NEXT finds stop waiting for a frame that will not come
            self._frame_ready.notify_all()

    def _subscribe_image(self, settings: Settings) -> object:
        """Subscribe to the camera topic with ``self._image_qos``."""
        if settings.compressed:
            self._image_topic = self.resolve_topic_name('image/compressed')
            return self.create_subscription(
                CompressedImage, 'image/compressed', self._on_compressed, self._image_qos,
                callback_group=self._input_group,
            )  # fmt: skip
        self._image_topic = self.resolve_topic_name('image')
        return self.create_subscription(
            Image, 'image', self._on_image, self._image_qos, callback_group=self._input_group
        )

    def _follow_publishers(self) -> None:
        """With reliability auto, switch the image subscription when the publishers change: a
        camera started after the node is usually reliable, and best effort would lose large
        frames in transport."""
        if self.settings.reliability != 'auto' or self._image_subscription is None:
            return
        wanted = self._choose_image_qos(self.settings)
        if wanted.reliability == self._image_qos.reliability:
            return
        self.destroy_subscription(self._image_subscription)
        self._image_qos = wanted
        self._image_subscription = self._subscribe_image(self.settings)
        self.get_logger().info(
            f'{self._image_topic}: publishers changed, subscription now '
            f'{wanted.reliability.name.lower()}'
        )

    def _choose_image_qos(self, settings: Settings) -> QoSProfile:
        """Depth 1, keep last; reliability from the parameter or, for auto, the publishers."""
        if settings.reliability == 'reliable':
            reliability = ReliabilityPolicy.RELIABLE
        elif settings.reliability == 'best_effort':
            reliability = ReliabilityPolicy.BEST_EFFORT
        else:
            topic = 'image/compressed' if settings.compressed else 'image'
            found = self.get_publishers_info_by_topic(self.resolve_topic_name(topic))
            # Best effort matches every publisher, so it is the choice unless all the
            # publishers present are reliable (then reliable delivery costs nothing).
            all_reliable = bool(found) and all(
                info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in found
            )
            reliability = (
                ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT
            )
        return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability)

    # Inputs ---------------------------------------------------------------------------

    def _accept_rate(self) -> bool:
        with self.stats.lock:
            self.stats.received += 1
            self.stats.window_received += 1
            self.stats.last_image = time.monotonic()
        max_rate = self.get_parameter('input.max_rate_hz').value
        now = time.monotonic()
        if max_rate > 0 and now - self._last_rate_accept < 1.0 / max_rate:
            self.stats.skipped += 1
            return False
        self._last_rate_accept = now
        return True

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
        with self.stats.lock:
            self.stats.rejected += 1
        self._log('error', key, message)

    def _enqueue(self, frame: Frame) -> None:
        if self._slot.put(frame):
            with self.stats.lock:
                self.stats.dropped += 1

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
            self._depth.append(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if self._stamp_ok(msg, 'camera_info', 'camera_info'):
            self._camera_info = msg

    def _on_vocabulary_topic(self, msg: VocabularyMsg) -> None:
        ok, message, _, _ = self._change_vocabulary(
            msg.entries, SetVocabulary.Request.REPLACE, 'the vocabulary topic'
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
                with self.stats.lock:
                    self.stats.errors += 1
                self._log(
                    'error',
                    ('inference', type(error).__name__),
                    f'frame {frame.header.stamp.sec}.{frame.header.stamp.nanosec:09d} failed: '
                    f'{type(error).__name__}: {error}',
                )

    def _process(self, frame: Frame) -> None:
        settings = self.settings
        with self._vocabulary_lock:
            predictor, version = self.predictor, self.vocabulary_version
            if predictor is None:
                return
            names = predictor.vocabulary.names
        started = time.perf_counter()
        result = predictor.predict(frame.pixels, frame.color, settings.tasks)
        predicted = time.perf_counter()
        predict_time = predicted - started
        if result.vocabulary != names:  # a change landed before predict took its snapshot
            with self._vocabulary_lock:
                version = self.vocabulary_version
        header = frame.header
        depth_m, intrinsics = self._depth_for(header) if settings.depth_enabled else (None, None)
        geometries: list[Geometry3D | None] | None = None
        if depth_m is not None and intrinsics is not None:
            geometries = [
                mask_geometry(inst.mask, depth_m, intrinsics, settings.depth_min_points)
                for inst in result.instances
            ]
        # Remembered first: a client that sees this frame's outputs can find on it at once.
        self._remember(header, result, version, depth_m, intrinsics)
        self._publish(frame, result, version, geometries)
        done = time.perf_counter()
        with self.stats.lock:
            self.stats.processed += 1
            self.stats.window_processed += 1
            self.stats.predict_times.append(predict_time)
            # Node overhead: conversion, 3D, message building and publishing (no queue wait).
            self.stats.overheads.append(frame.convert_s + done - predicted)
            stamp = Time.from_msg(header.stamp)
            if stamp.nanoseconds > 0:
                now = self.get_clock().now()
                self.stats.latencies.append((now - stamp).nanoseconds * 1e-9)

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
            labels = [instance.label for instance in result.instances]
            out['markers'].publish(markers_to_msg(labels, geometries, header))
        if wanted('overlay'):
            rgb = frame.pixels if frame.color == 'rgb' else frame.pixels[:, :, ::-1]
            alpha = self.get_parameter('overlay.alpha').value
            drawing = draw_overlay(rgb, result, alpha=alpha)
            out['overlay'].publish(array_to_image_msg(drawing, 'rgb8', header))

    def _remember(
        self,
        header: Header,
        result: SegmentationResult,
        version: int,
        depth_m: np.ndarray | None,
        intrinsics: object | None,
    ) -> None:
        # find needs only the proposals: dropping the full-size masks keeps the ring small.
        slim = replace(result, instances=[], semantic=None, panoptic=None, segments=[])
        with self._frame_ready:
            self._frame_index += 1
            record = FrameRecord(self._frame_index, header, slim, version, depth_m, intrinsics)
            self._frames.append(record)
            self._frame_ready.notify_all()

    def _depth_for(self, header: Header) -> tuple[np.ndarray | None, object | None]:
        """The depth image closest in time to ``header`` (within the slop) and intrinsics."""
        settings = self.settings
        if not self._depth or self._camera_info is None:
            return None, None
        stamp = Time.from_msg(header.stamp).nanoseconds
        best = min(
            list(self._depth),
            key=lambda msg: abs(Time.from_msg(msg.header.stamp).nanoseconds - stamp),
        )
        offset = abs(Time.from_msg(best.header.stamp).nanoseconds - stamp) * 1e-9
        if offset > settings.depth_sync_slop_s:
            self._log(
                'warning',
                ('depth', 'sync'),
                f'no depth image within {settings.depth_sync_slop_s} s of the camera image '
                f'(closest {offset:.3f} s): no 3D for this frame',
            )
            return None, None
        try:
            depth_m = depth_msg_to_metres(best, settings.depth_scale, settings.max_pixels)
            info = self._camera_info
            intrinsics = intrinsics_from_k(info.k, info.height, info.width)
        except ImageConversionError as error:
            self._reject(('depth', error.field), f'rejected depth image: {error}')
            return None, None
        except GeometryError as error:
            self._log('error', ('camera_info',), f'rejected camera_info: {error}')
            return None, None
        return depth_m, intrinsics

    # Vocabulary -----------------------------------------------------------------------

    @staticmethod
    def _vocabulary_from(names: tuple[str, ...], path: str | None) -> Vocabulary:
        if path is not None:
            return Vocabulary.from_yaml(path)
        return Vocabulary.from_names(names)

    def _apply_vocabulary(self, vocabulary: Vocabulary, source: str) -> tuple[float, str | None]:
        """Make ``vocabulary`` current as a new version; return the text encoding seconds and
        the warning about words the model does not know (None when it knows them all)."""
        with self._vocabulary_lock:
            seconds = self.predictor.set_vocabulary(vocabulary)
            self.vocabulary_version += 1
            message = vocabulary_to_msg(
                vocabulary, self.vocabulary_version, self.get_clock().now().to_msg()
            )
            self._outputs['labels'].publish(message)  # under the lock: cleanup frees it
        self.get_logger().info(
            f'vocabulary version {self.vocabulary_version} from {source}: {len(vocabulary)} '
            f'classes, text encoded in {seconds * 1000:.1f} ms'
        )
        unknown = self.predictor.unknown_words_warning(vocabulary)
        if unknown:
            self.get_logger().warning(f'vocabulary from {source}: {unknown}')
        return seconds, unknown

    def _change_vocabulary(
        self, entries: list, mode: int, source: str
    ) -> tuple[bool, str, int, float]:
        """Apply a vocabulary request (``source`` names it in the log); return (success,
        message, version, encode seconds)."""
        with self._vocabulary_lock:
            if self.predictor is None:
                return False, 'the node is not configured', self.vocabulary_version, 0.0
            current = self.predictor.vocabulary
            try:
                vocabulary = changed_vocabulary(current, msgs_to_entries(entries), mode)
            except (VocabularyError, TypeError) as error:
                return False, str(error), self.vocabulary_version, 0.0
            return True, *self._install_vocabulary(vocabulary, source)

    def _install_vocabulary(self, vocabulary: Vocabulary, source: str) -> tuple[str, int, float]:
        """Make ``vocabulary`` current unless it already is (the version counts changes);
        return (summary, version, encode seconds). The node must be configured."""
        with self._vocabulary_lock:
            if vocabulary == self.predictor.vocabulary:
                summary = f'unchanged, {vocabulary_summary(vocabulary)}'
                return summary, self.vocabulary_version, 0.0
            seconds, unknown = self._apply_vocabulary(vocabulary, source)
            summary = vocabulary_summary(vocabulary)
            if unknown:  # the caller learns why some classes cannot be found
                summary = f'{summary}; warning: {unknown}'
            return summary, self.vocabulary_version, seconds

    def _on_set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        ok, message, version, seconds = self._change_vocabulary(
            request.entries, request.mode, 'set_vocabulary'
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
        """Check changed values; apply live ones, refuse the others while configured."""
        vocabulary_change = {}
        for parameter in parameters:
            spec = SPECS.get(parameter.name)
            if spec is None:
                continue
            try:
                check_value(parameter.name, parameter.value)
            except SettingsError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if self.predictor is None:
                continue
            if not spec.live:
                return SetParametersResult(
                    successful=False,
                    reason=f'{parameter.name} takes effect on configure: deactivate, clean up, '
                    'set it, then configure and activate again',
                )
            if parameter.name in ('vocabulary', 'vocabulary_file'):
                vocabulary_change[parameter.name] = parameter.value
        if vocabulary_change and self.predictor is not None:
            names = vocabulary_change.get('vocabulary', self.get_parameter('vocabulary').value)
            path = vocabulary_change.get(
                'vocabulary_file', self.get_parameter('vocabulary_file').value
            )
            try:
                vocabulary = self._vocabulary_from(tuple(names), path or None)
                if len(vocabulary) == 0:
                    raise VocabularyError('the vocabulary would be empty; keep at least one class')
            except VocabularyError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self._install_vocabulary(vocabulary, 'parameters')
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
        record = self._find_frame(request, response)
        if record is None:
            return response
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
            response.message = f'cannot score query {request.query!r}: {error}'
            return response
        use_3d = request.return_3d and record.depth_m is not None
        for match in matches:
            geometry = None
            if use_3d:
                geometry = mask_geometry(
                    match.mask, record.depth_m, record.intrinsics, self.settings.depth_min_points
                )
            out = instance_to_msg(match, record.header, request.return_masks, geometry)
            out.class_id = -1
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
            self._log('warning', ('find', 'unknown words'), f'find {request.query!r}: {unknown}')
        return response

    def _find_frame(
        self, request: FindObjects.Request, response: FindObjects.Response
    ) -> FrameRecord | None:
        """The frame a (valid) find request asks for, or None with the response's status set."""
        with self._frame_ready:
            if request.frame == FindObjects.Request.NEXT:
                return self._next_frame(request.timeout_s, response)
            if request.frame == FindObjects.Request.STAMP:
                for record in self._frames:
                    if record.header.stamp == request.stamp:
                        return record
                response.status = FindObjects.Response.NO_FRAME
                kept = [f'{r.header.stamp.sec}.{r.header.stamp.nanosec:09d}' for r in self._frames]
                response.message = (
                    f'no recent frame has stamp {request.stamp.sec}.{request.stamp.nanosec:09d}; '
                    f'kept: {", ".join(kept) or "none"}'
                )
                return None
            if not self._frames:
                response.status = FindObjects.Response.NO_FRAME
                response.message = 'no frame has been processed yet'
                return None
            return self._frames[-1]

    def _next_frame(self, timeout_s: float, response: FindObjects.Response) -> FrameRecord | None:
        """Wait (``_frame_ready`` held) for the first frame processed after this call; None with
        the response's status set on timeout or when the node stops segmenting."""
        wanted = self._frame_index + 1
        deadline = time.monotonic() + timeout_s
        while self._frame_index < wanted:
            left = deadline - time.monotonic()
            if not self._running.is_set():
                response.status = FindObjects.Response.NO_FRAME
                response.message = (
                    'the node is not active: no new frame will come (activate it, or ask for '
                    'LATEST)'
                )
                return None
            if left <= 0:
                response.status = FindObjects.Response.TIMEOUT
                response.message = (
                    f'no frame was processed within {timeout_s:g} s; is anything publishing on '
                    f'{self._image_topic or "image"}?'
                )
                return None
            self._frame_ready.wait(left)
        # The oldest kept frame from the one wanted on: a waiter woken late may find it evicted.
        record = next((r for r in self._frames if r.index >= wanted), None)
        if record is None:
            response.status = FindObjects.Response.NO_FRAME
            response.message = 'the node was cleaned up while waiting for the next frame'
        return record

    # Diagnostics ----------------------------------------------------------------------

    def _on_diagnostics(self) -> None:
        settings = self.settings
        window = self.stats.take_window()
        now = time.monotonic()
        level, message = DiagnosticStatus.OK, 'segmenting'
        active = self._running.is_set()
        if not active:
            level, message = DiagnosticStatus.OK, 'configured, not active'
        else:
            self._follow_publishers()
            last = self.stats.last_image or self._active_since
            silent = now - last
            warn_after = self.get_parameter('input.warn_after_s').value
            if silent > warn_after:
                level = DiagnosticStatus.WARN
                message = f'no image for {silent:.0f} s on {self._image_topic}'
                if now - self._last_warning > warn_after:
                    self._last_warning = now
                    self.get_logger().warning(self._silence_report(silent))
        values = {
            **window,
            'received': self.stats.received,
            'processed': self.stats.processed,
            'dropped (queue)': self.stats.dropped,
            'rejected (malformed)': self.stats.rejected,
            'skipped (max_rate_hz)': self.stats.skipped,
            'inference errors': self.stats.errors,
            'model': model_name(settings),
            'backend': settings.backend,
            'device': settings.device,
            'precision': settings.precision,
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

    def _silence_report(self, silent: float) -> str:
        qos = self._image_qos
        ours = f'{qos.reliability.name.lower()}, depth {qos.depth}' if qos else 'unknown QoS'
        publishers = self.get_publishers_info_by_topic(self._image_topic)
        if not publishers:
            theirs = 'no publisher exists on it (check the remapping and ROS_DOMAIN_ID)'
        else:
            kinds = sorted({info.qos_profile.reliability.name.lower() for info in publishers})
            theirs = f'{len(publishers)} publisher(s) with reliability {"/".join(kinds)}'
            if qos and qos.reliability == ReliabilityPolicy.RELIABLE and 'best_effort' in kinds:
                theirs += ': a reliable subscription never receives from best_effort ' \
                    'publishers; set input.reliability to best_effort or auto'  # fmt: skip
        return f'no image received for {silent:.1f} s on {self._image_topic} ({ours}); {theirs}'


def model_name(settings: Settings) -> str:
    """The model as logs and diagnostics name it: the architecture and where its weights come
    from, e.g. 'masqclip_r50_vitb16 (random weights)' or 'masqclip_demo.pt.gz'."""
    checkpoint = settings.checkpoint
    if checkpoint == 'demo' or not (checkpoint or settings.model_config):
        checkpoint = DEMO_CHECKPOINT  # what the predictor loads then
    if not settings.model_config:  # the checkpoint names its own architecture
        return Path(checkpoint).name
    weights = Path(checkpoint).name if checkpoint else 'random weights'
    return f'{settings.model_config} ({weights})'


def main(argv: list[str] | None = None) -> int:
    """Start the node and bring it to active (no lifecycle manager needed); return once it is
    shut down (Ctrl-C, or the lifecycle shutdown transition).

    :param argv: command line, ROS arguments included (default: ``sys.argv``).
    :return: exit status: 0 after a normal shutdown, 1 when configure or activate failed.
    """
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
