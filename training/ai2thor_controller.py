"""The Ai2Thor simulator connection: starting and stopping the Controller, actions, scene resets."""
from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from saom_ros.training.collect_config import CollectConfig, CollectError
from saom_ros.training.process_lifetime import dies_with_this_process

log = logging.getLogger(__name__)

PLATFORMS = ("CloudRendering", "Linux64")
STOP_WAIT = 10.0  # seconds close_controller waits for the event of an interrupted action
# Image buffers the simulator may send, as bytes per pixel it may use (RGB24 or RGBA32).
_IMAGE_BUFFERS = ("image", "image_ids", "image_classes")


class MalformedEvent(ValueError):
    """The simulator sent an event ai2thor cannot read (metadata or an image of the wrong size)."""


def describe(err: BaseException) -> str:
    """``err`` as "Type: message", with the malformed event behind it: ai2thor's step() turns any
    failure to receive into a RuntimeError that names only the action."""
    text = f"{type(err).__name__}: {err}"
    if isinstance(err.__context__, MalformedEvent) and not isinstance(err, MalformedEvent):
        text += f" ({err.__context__})"
    return text


def simulator_errors() -> tuple[type[BaseException], ...]:
    """What the Controller raises when the simulator fails, times out or sends a bad event."""
    from ai2thor.exceptions import UnityCrashException

    return TimeoutError, RuntimeError, ValueError, UnityCrashException


def controller_kwargs(config: CollectConfig, worker: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``ai2thor.controller.Controller`` for ``worker``; ValueError if the
    simulator settings contradict each other, CollectError if a local build is missing."""
    import ai2thor.platform
    import ai2thor.wsgi_server

    # WSGI in every mode: ai2thor's default FifoServer blocks forever on a build that crashes
    # before it opens its pipe, while the WSGI server notices the process has exited.
    kwargs: dict[str, Any] = dict(
        width=config.width, height=config.height, renderInstanceSegmentation=True,
        fieldOfView=config.field_of_view, gridSize=config.grid_size,
        server_class=ai2thor.wsgi_server.WsgiServer, server_timeout=config.simulator_timeout,
        server_start_timeout=config.simulator_start_timeout)
    running = config.simulator_host is not None or config.simulator_port is not None
    chosen = [name for name, on in (("--simulator-host/--simulator-port", running),
                                    ("--local-executable-path", config.local_executable_path),
                                    ("--platform", config.platform)) if on]
    if len(chosen) != 1:
        raise ValueError(
            "say how to reach the simulator with exactly one of --simulator-host/--simulator-port "
            "(a running simulator), --local-executable-path (a local build) or --platform "
            f"{'|'.join(PLATFORMS)} (Ai2Thor's build, downloaded on first use); got "
            f"{', '.join(chosen) or 'none'}")
    if running:
        if config.simulator_port is None:
            raise ValueError("--simulator-host needs --simulator-port")
        if config.x_display is not None:
            raise ValueError("--x-display applies to a simulator the collector starts, not to a "
                             "running one")
        # The Controller's WSGI server listens; the simulator connects to it.
        return kwargs | dict(start_unity=False, host=config.simulator_host or "127.0.0.1",
                             port=config.simulator_port + worker)
    if config.local_executable_path:
        path = Path(config.local_executable_path)
        if not path.is_file():
            raise CollectError(f"Ai2Thor build {path} does not exist (--local-executable-path "
                               "names the build's executable)")
        if not os.access(path, os.X_OK):
            raise CollectError(f"Ai2Thor build {path} is not executable")
        return kwargs | dict(local_executable_path=str(path), x_display=config.x_display)
    if config.platform not in PLATFORMS:
        raise ValueError(f"unknown platform {config.platform!r}; known: {', '.join(PLATFORMS)}")
    extra = {"x_display": config.x_display} if config.platform == "Linux64" else {}
    return kwargs | dict(platform=getattr(ai2thor.platform, config.platform)) | extra


def _describe(kwargs: dict[str, Any]) -> str:
    if kwargs.get("start_unity") is False:
        return f"the running simulator expected to connect to {kwargs['host']}:{kwargs['port']}"
    if "local_executable_path" in kwargs:
        return f"the local build {kwargs['local_executable_path']}"
    return f"Ai2Thor's {kwargs['platform'].name()} build"


def _has_x_display(config: CollectConfig) -> bool:
    import ai2thor.platform

    if config.x_display or os.environ.get("DISPLAY"):
        return True
    # What ai2thor itself falls back to: X servers it finds on this machine.
    return bool(ai2thor.platform.Linux64._valid_x_displays(config.width, config.height))


def _check_buffers(metadata: Mapping[str, Any], files: Mapping[str, list]) -> None:
    """MalformedEvent naming an image buffer whose size does not fit the event's screen size."""
    for i, agent in enumerate(metadata.get("agents") or []):
        width, height = agent.get("screenWidth"), agent.get("screenHeight")
        if not (isinstance(width, int) and isinstance(height, int)):
            raise MalformedEvent("metadata without an integer screenWidth/screenHeight")
        for name in _IMAGE_BUFFERS:
            if name in files and i < len(files[name]):
                size = len(files[name][i])
                if size not in (width * height * 3, width * height * 4):
                    raise MalformedEvent(f"{name} holds {size} bytes, not {width}x{height} "
                                         "pixels of 3 or 4 bytes")


def _report_bad_events(server) -> None:
    """Have ``server`` hand an event it cannot build to the Controller as MalformedEvent at once,
    and note whether an event is due (``awaiting_event``, for close_controller).

    ai2thor builds events in its HTTP thread: an exception there only ends that request, and the
    Controller would wait its full action timeout for an event that never comes. The failure is
    queued in place of the event instead, and ``receive`` raises it.
    """
    create_event, receive, send = server.create_event, server.receive, server.send
    server.awaiting_event = False  # an action was sent and its event not yet received

    def checked_create_event(metadata, files):
        try:
            _check_buffers(metadata, files)
            return create_event(metadata, files)
        except Exception as err:  # anything the event's data makes ai2thor raise
            return err if isinstance(err, MalformedEvent) else \
                MalformedEvent(f"{type(err).__name__}: {err}")

    def checked_receive(timeout=None):
        event = receive(timeout)
        server.awaiting_event = False
        if isinstance(event, MalformedEvent):
            raise MalformedEvent(f"the simulator sent a malformed event ({event})")
        return event

    def tracked_send(action):
        send(action)
        server.awaiting_event = bool(action)  # stop() sends {}: no event follows

    server.create_event, server.receive, server.send = (checked_create_event, checked_receive,
                                                        tracked_send)


@functools.cache
def _controller_class() -> type:
    """ai2thor's Controller whose server reports malformed events (see _report_bad_events) and
    whose simulator dies with the process that owns the Controller.

    ``_build_server`` is ai2thor's (private) hook that makes the server; it runs before the first
    event, so events during start-up are checked too. ``unity_command`` is the command line
    ai2thor starts the simulator with: a SIGKILLed owner (the OOM killer) runs no cleanup, and
    the simulator would live on under init. The kernel's parent-death signal is tied to the
    thread that starts the simulator: the Controller's (start or reset), which is the thread
    that uses and closes it (run_shard).
    """
    from ai2thor.controller import Controller

    class CheckedController(Controller):
        def _build_server(self, host, port, width, height):
            super()._build_server(host, port, width, height)
            _report_bad_events(self.server)

        def unity_command(self, width, height, headless):
            return dies_with_this_process(super().unity_command(width, height, headless))

    return CheckedController


def open_controller(config: CollectConfig, worker: int, first_scene: str):
    """A started Controller in ``first_scene`` rendering at the configured size."""
    import ai2thor.platform

    kwargs = controller_kwargs(config, worker)
    needs_x = ("local_executable_path" in kwargs
               or kwargs.get("platform") is ai2thor.platform.Linux64)
    if needs_x and not _has_x_display(config):
        raise CollectError(f"{_describe(kwargs)} renders on an X server and none was found: give "
                           "--x-display, set DISPLAY, start one (sudo ai2thor-xorg start) or use "
                           "--platform CloudRendering")
    try:
        controller = _controller_class()(scene=first_scene, **kwargs)
    except TimeoutError:
        raise CollectError(f"no answer from {_describe(kwargs)} within "
                           f"{config.simulator_start_timeout:g} s") from None
    except Exception as err:  # ai2thor raises bare Exceptions for missing builds and platforms
        hint = ("; Ai2Thor downloads its build into ~/.ai2thor/releases on first use, so offline "
                "use --local-executable-path or a running simulator" if "platform" in kwargs
                else "")
        raise CollectError(f"could not start {_describe(kwargs)}: {err}{hint}") from err
    return controller


def close_controller(controller) -> None:
    """Stop the controller and free its port (ai2thor's WsgiServer.stop leaves it listening)."""
    import ai2thor.wsgi_server

    server = controller.server
    if getattr(server, "awaiting_event", False):
        # A stop signal interrupted step(): take the event the simulator is sending (the server
        # sends no stop while one waits), so that it gets the stop instead of a closed port.
        try:
            server.receive(timeout=STOP_WAIT)
        except Exception as err:  # the simulator may be gone already
            log.debug("waiting for the interrupted action's event: %s", err)
    try:
        controller.stop()
    except Exception as err:  # the simulator may be gone already
        log.debug("stopping the controller: %s", err)
    if isinstance(server, ai2thor.wsgi_server.WsgiServer):
        # shutdown() waits for the serving loop, which a request stuck on a dead simulator could
        # block; don't wait for long.
        stopper = threading.Thread(target=server.wsgi_server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=2.0)
        server.wsgi_server.server_close()


def step(controller, action: str, **args):
    """``controller.step`` with failures (of the simulator or the action) as CollectError."""
    try:
        return controller.step(action=action, raise_for_failure=True, **args)
    except simulator_errors() as err:
        scene = controller.last_event.metadata.get("sceneName") if controller.last_event else "?"
        raise CollectError(f"Ai2Thor action {action} failed in scene {scene}: {describe(err)}") \
            from err


def reset_scene(controller, config: CollectConfig, scene: str) -> None:
    """Load ``scene`` and make the simulator render at the configured size."""
    try:
        event = controller.reset(scene)
    except simulator_errors() as err:
        raise CollectError(f"could not load scene {scene}: {describe(err)}") from err
    # A simulator that was already running keeps its own resolution; the Controller only fixes
    # the size of builds it starts itself.
    if (event.screen_width, event.screen_height) != (config.width, config.height):
        event = step(controller, "ChangeResolution", x=config.width, y=config.height)
    if (event.screen_width, event.screen_height) != (config.width, config.height):
        raise CollectError(f"the simulator renders {event.screen_width}x{event.screen_height} "
                           f"after ChangeResolution to {config.width}x{config.height}")
