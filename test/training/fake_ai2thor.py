"""Stand-in for the Ai2Thor Unity simulator (the build cannot exist here).

A separate process that speaks the simulator's side of Ai2Thor's WSGI protocol to the real
``ai2thor.controller.Controller`` (started with ``start_unity=False`` and ``WsgiServer``): it POSTs
multipart form data to ``http://HOST:PORT/train`` -- ``metadata`` (JSON), ``token``, ``image``
(RGB24, rows bottom-up) and ``image_ids`` (RGBA32 instance colours, bottom-up) -- and each
response body is the next action as JSON; one without an ``action`` (``stop()`` sends ``{}``)
ends the session.

Each iTHOR FloorPlan is a procedural room: coloured boxes (objects of known Ai2Thor types, each
with an instance colour) in front of a wall and a floor, drawn with a pinhole camera at the
agent's pose, nearer boxes over farther ones. :func:`build_scene` and :func:`render` are
importable so tests can redraw any recorded pose and compare it with what the collector stored.

    python fake_ai2thor.py --port 8765 [--width 300 --height 300] [--die-after N] [--log FILE]
                           [--fault KIND@N ...] [--refuse ACTION ...]

``--fault KIND@N`` spoils the event answering the N-th action: ``short-ids`` sends image_ids
400 bytes short, ``no-objects`` and ``no-agent`` leave that key out of the metadata.
``--refuse ACTION`` makes every ACTION fail (lastActionSuccess false, with an errorMessage).
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np

ROOM_SIZE = 6.0  # metres; the room spans [0, ROOM_SIZE] in x and z
AGENT_Y = 0.9  # agent position y on the floor, as in iTHOR
CAMERA_HEIGHT = 0.675  # camera above the agent position when standing
HORIZON_LIMITS = (-30.0, 60.0)  # the default agent's camera pitch limits
# Object types per room type; some are outside the SAOM classes (the collector must drop them).
ROOM_OBJECTS = {
    1: ["Fridge", "CounterTop", "Microwave", "Mug", "Pan", "Bowl", "Toaster", "StoveBurner"],
    201: ["Sofa", "ArmChair", "CoffeeTable", "TVStand", "Television", "Vase", "Book", "FloorLamp"],
    301: ["Bed", "Dresser", "Desk", "Laptop", "AlarmClock", "Pillow", "Book", "Shelf"],
    401: ["Toilet", "Sink", "Mirror", "SoapBottle", "Towel", "ToiletPaper", "GarbageCan",
          "Plunger"],
}
FLOOR_ID, WALL_ID = "Floor|+00.00|+00.00|+00.00", "Wall|+00.00|+01.50|+06.00"


@dataclass(frozen=True)
class Box:
    """An object: a vertical box centred at (x, z), ``width`` wide, from y0 to y1."""

    object_id: str
    object_type: str
    x: float
    z: float
    width: float
    y0: float
    y1: float
    color: tuple[int, int, int]  # RGB of its material


def _instance_color(index: int) -> tuple[int, int, int]:
    # 37 and 256 are coprime, so the red channel alone is unique for 256 instances.
    return (index * 37 + 11) % 256, (index * 91 + 53) % 256, (index * 173 + 7) % 256


def _room_first(number: int) -> int:
    for first in ROOM_OBJECTS:
        if first <= number < first + 30:
            return first
    raise ValueError(f"FloorPlan{number} is not an iTHOR scene")


def build_scene(scene: str, spawn_seed: int | None = None) -> list[Box]:
    """The objects of ``scene`` (``FloorPlanN`` or ``FloorPlanN_physics``); ``spawn_seed``
    re-places them as ``InitialRandomSpawn(randomSeed=spawn_seed)`` does."""
    number = int(scene.removeprefix("FloorPlan").removesuffix("_physics"))
    rng = np.random.default_rng(number)
    types = [t for t in ROOM_OBJECTS[_room_first(number)] for _ in range(1 + int(rng.integers(2)))]
    place = np.random.default_rng([number, spawn_seed]) if spawn_seed is not None else rng
    boxes = []
    for i, object_type in enumerate(types):
        x, z = (float(v) for v in place.uniform(0.6, ROOM_SIZE - 0.6, size=2))
        y0 = float(rng.uniform(0.0, 0.8))
        boxes.append(Box(object_id=f"{object_type}|{x:+06.2f}|{y0:+06.2f}|{z:+06.2f}",
                         object_type=object_type, x=x, z=z, width=float(rng.uniform(0.3, 1.2)),
                         y0=y0, y1=y0 + float(rng.uniform(0.2, 1.2)),
                         color=tuple(int(c) for c in rng.integers(40, 220, size=3))))
    return boxes


def reachable_positions(boxes: list[Box], grid_size: float = 0.25) -> list[dict]:
    """Grid points inside the room that are not within 0.4 m of an object's centre."""
    steps = np.arange(0.5, ROOM_SIZE - 0.5 + 1e-9, grid_size)
    return [{"x": round(float(x), 2), "y": AGENT_Y, "z": round(float(z), 2)}
            for x in steps for z in steps
            if all(math.hypot(x - b.x, z - b.z) > 0.4 for b in boxes)]


def instance_colors(boxes: list[Box]) -> dict[str, tuple[int, int, int]]:
    """Instance colour of every object id, floor and wall included."""
    ids = [FLOOR_ID, WALL_ID] + [b.object_id for b in boxes]
    return {object_id: _instance_color(i) for i, object_id in enumerate(ids)}


def render(boxes: list[Box], position: dict, yaw: float, horizon: float, width: int, height: int,
           field_of_view: float = 90.0, brightness: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 [H,W,3], instance colours uint8 [H,W,3]), rows top-down, seen from the camera
    at ``position`` looking along ``yaw`` (degrees, 0 = +z, clockwise) pitched down by
    ``horizon`` degrees; ``field_of_view`` is vertical, as in Unity."""
    colors = instance_colors(boxes)
    focal = (height / 2) / math.tan(math.radians(field_of_view) / 2)
    pitch, heading = math.radians(horizon), math.radians(yaw)
    cam_y = position["y"] + CAMERA_HEIGHT
    rgb = np.empty((height, width, 3), np.uint8)
    ids = np.empty((height, width, 3), np.uint8)
    horizon_row = int(round(height / 2 - focal * math.tan(pitch)))
    top = slice(0, max(0, min(height, horizon_row)))
    rgb[:], ids[:] = (150, 120, 90), colors[FLOOR_ID]
    rgb[top], ids[top] = (200, 200, 190), colors[WALL_ID]

    def project(b: Box) -> tuple[float, tuple[int, int, int, int]] | None:
        dx, dz = b.x - position["x"], b.z - position["z"]
        ahead = dx * math.sin(heading) + dz * math.cos(heading)
        lateral = dx * math.cos(heading) - dz * math.sin(heading)
        # Camera frame after pitching down: depth and height of a point dy above the camera.
        def depth(dy: float) -> float:
            return -dy * math.sin(pitch) + ahead * math.cos(pitch)
        if min(depth(b.y0 - cam_y), depth(b.y1 - cam_y)) <= 0.1:
            return None
        def row(dy: float) -> float:
            up = dy * math.cos(pitch) + ahead * math.sin(pitch)
            return height / 2 - focal * up / depth(dy)
        mid = depth((b.y0 + b.y1) / 2 - cam_y)
        cols = (width / 2 + focal * (lateral - b.width / 2) / mid,
                width / 2 + focal * (lateral + b.width / 2) / mid)
        rows = (row(b.y1 - cam_y), row(b.y0 - cam_y))
        c0, c1 = (int(np.clip(round(c), 0, width)) for c in cols)
        r0, r1 = (int(np.clip(round(r), 0, height)) for r in rows)
        return ahead, (r0, r1, c0, c1)

    visible = [(p, b) for b in boxes if (p := project(b)) is not None]
    for (_, (r0, r1, c0, c1)), b in sorted(visible, key=lambda pb: -pb[0][0]):  # far first
        rgb[r0:r1, c0:c1] = b.color
        ids[r0:r1, c0:c1] = colors[b.object_id]
    if brightness != 1.0:
        rgb = np.clip(rgb * brightness, 0, 255).astype(np.uint8)
    return rgb, ids


class FakeSimulator:
    """The simulator's state and its answers to actions."""

    def __init__(self, width: int, height: int, refuse: tuple[str, ...] = ()):
        self.width, self.height, self.refuse = width, height, refuse
        self.scene: str | None = None
        self.boxes: list[Box] = []
        self.init_params: dict = {}
        self.position = {"x": 0.5, "y": AGENT_Y, "z": 0.5}
        self.yaw = self.horizon = 0.0
        self.brightness = 1.0
        self.rng = np.random.default_rng(12345)  # materials and lighting, like the real one

    def handle(self, action: dict) -> tuple[bool, str, object]:
        """Apply ``action``; (success, error message, actionReturn)."""
        name = action.get("action")
        if name in self.refuse:
            return False, f"{name} refused (--refuse)", None
        if name == "GetScenesInBuild":
            return True, "", [f"FloorPlan{first + i}_physics" for first in ROOM_OBJECTS
                              for i in range(30)]
        if name == "Reset":
            self.scene = action["sceneName"]
            self.boxes = build_scene(self.scene)
            self.brightness = 1.0
            return True, "", None
        if name == "Initialize":
            self.init_params = action
            self.position = reachable_positions(self.boxes, self.grid_size)[0]
            self.yaw = self.horizon = 0.0
            return True, "", {"cameraNearPlane": 0.1, "cameraFarPlane": 20.0}
        if name == "ChangeResolution":
            self.width, self.height = int(action["x"]), int(action["y"])
            return True, "", None
        if name == "GetReachablePositions":
            return True, "", reachable_positions(self.boxes, self.grid_size)
        if name == "TeleportFull":
            target = {k: action[k] for k in ("x", "y", "z")}
            if not any(all(abs(p[k] - target[k]) < 1e-3 for k in "xyz")
                       for p in reachable_positions(self.boxes, self.grid_size)):
                return False, f"position {target} is not reachable", None
            if not HORIZON_LIMITS[0] <= action["horizon"] <= HORIZON_LIMITS[1]:
                return False, f"horizon {action['horizon']} out of range", None
            self.position, self.yaw = target, float(action["rotation"]["y"])
            self.horizon = float(action["horizon"])
            return True, "", None
        if name == "InitialRandomSpawn":
            self.boxes = build_scene(self.scene, int(action["randomSeed"]))
            return True, "", None
        if name == "RandomizeMaterials":
            self.boxes = [replace(b, color=tuple(int(c) for c in self.rng.integers(40, 220, 3)))
                          for b in self.boxes]
            return True, "", None
        if name == "RandomizeLighting":
            low, high = action.get("brightness", (0.5, 1.5))
            self.brightness = float(self.rng.uniform(low, high))
            return True, "", None
        return False, f"Invalid action: {name}", None

    @property
    def grid_size(self) -> float:
        return float(self.init_params.get("gridSize", 0.25))

    def event(self, action: dict, success: bool, error: str, action_return: object
              ) -> tuple[dict, dict[str, bytes]]:
        """(metadata, image buffers) describing the state after ``action``."""
        name = action.get("action", "")
        colors = instance_colors(self.boxes)
        agent = {
            "screenWidth": self.width, "screenHeight": self.height,
            "lastAction": name, "lastActionSuccess": success, "errorMessage": error,
            "errorCode": "" if success or not error.startswith("Invalid action")
            else "InvalidAction",
            "actionReturn": action_return, "sceneName": self.scene or "",
            "agent": {"name": "agent", "position": dict(self.position),
                      "rotation": {"x": 0.0, "y": self.yaw, "z": 0.0},
                      "cameraHorizon": self.horizon, "isStanding": True},
            "objects": [{"objectId": b.object_id, "objectType": b.object_type,
                         "name": b.object_type,
                         "position": {"x": b.x, "y": (b.y0 + b.y1) / 2, "z": b.z},
                         "visible": True} for b in self.boxes],
            "colors": [{"name": k, "color": list(v)} for k, v in colors.items()]
            + [{"name": b.object_type, "color": list(colors[b.object_id])} for b in self.boxes],
            "thirdPartyCameras": [], "fov": self.init_params.get("fieldOfView", 90.0),
        }
        files = {}
        if self.scene is not None:
            rgb, ids = render(self.boxes, self.position, self.yaw, self.horizon, self.width,
                              self.height, self.init_params.get("fieldOfView", 90.0),
                              self.brightness)
            # The Unity build sends rows bottom-up; instance colours as RGBA32, alpha 255.
            files["image"] = np.ascontiguousarray(rgb[::-1]).tobytes()
            if self.init_params.get("renderInstanceSegmentation"):
                rgba = np.concatenate([ids, np.full(ids.shape[:2] + (1,), 255, np.uint8)], 2)
                files["image_ids"] = np.ascontiguousarray(rgba[::-1]).tobytes()
        return agent, files


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n'
                     f'Content-disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Type: application/octet-stream\r\n'
                     f'Content-disposition: form-data; name="{name}"; filename="{name}"\r\n\r\n'
                     .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _connect(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """Wait until the Controller's server accepts connections (it starts after us in tests)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return http.client.HTTPConnection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"fake_ai2thor: nothing listens on {host}:{port}")
            time.sleep(0.05)


FAULTS = ("short-ids", "no-objects", "no-agent")


def spoil(kind: str, agent: dict, files: dict[str, bytes]) -> None:
    """Apply the fault ``kind`` (one of FAULTS) to an event."""
    if kind == "short-ids":
        files["image_ids"] = files["image_ids"][:-400]
    else:
        del agent[kind.removeprefix("no-")]


def serve(host: str, port: int, width: int, height: int, die_after: int | None = None,
          log: str | None = None, connect_timeout: float = 60.0,
          faults: dict[int, str] | None = None, refuse: tuple[str, ...] = ()) -> None:
    """One session: post events until the Controller answers without an action."""
    sim = FakeSimulator(width, height, refuse)
    conn = _connect(host, port, connect_timeout)
    action: dict = {}
    result: tuple = (True, "", None)
    sequence_id, answered = 0, 0
    while True:
        agent, files = sim.event(action, *result)
        if answered in (faults or {}):
            spoil(faults[answered], agent, files)
        metadata = {"agents": [agent], "sequenceId": sequence_id, "activeAgentId": 0,
                    "thirdPartyCameras": []}
        body, content_type = _multipart({"metadata": json.dumps(metadata), "token": ""}, files)
        conn.request("POST", "/train", body=body, headers={"Content-Type": content_type})
        action = json.loads(conn.getresponse().read())
        if "action" not in action:  # stop() sends {} (the server adds a sequenceId)
            return
        answered += 1
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(action) + "\n")
        if die_after is not None and answered >= die_after:
            os._exit(3)  # a crash: no answer, no goodbye
        sequence_id = action.get("sequenceId", sequence_id)
        result = sim.handle(action)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--die-after", type=int, help="crash after receiving this many actions")
    parser.add_argument("--log", help="append every received action to this JSON-lines file")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--fault", action="append", default=[], metavar="KIND@N",
                        help=f"spoil the event answering the N-th action; KIND: {FAULTS}")
    parser.add_argument("--refuse", action="append", default=[], metavar="ACTION",
                        help="fail every ACTION")
    args = parser.parse_args(argv)
    faults = {int(n): kind for kind, n in (f.split("@") for f in args.fault)}
    serve(args.host, args.port, args.width, args.height, args.die_after, args.log,
          args.connect_timeout, faults, tuple(args.refuse))


if __name__ == "__main__":
    sys.exit(main())
