"""Looking at a result in the browser: the page behind `sync-splat view` (and `--view` of restyle, mesh, panorama).

A viser server (127.0.0.1 unless the user passes another `--host`) serves one page that shows what PATH holds:

- **a splat scene** (a 3DGS `.ply`, a web-viewer `.splat`, a splatfacto `.ckpt`, `config.yml` or run folder): the
  browser renders the Gaussians itself with viser's splatting (the server needs no GPU), DC colours only. With a
  `before` scene of the same geometry (the scene PATH was restyled from), both colour sets are sent and a
  "Colours" control switches between them. The browser sorts every Gaussian each frame, so at most `max_gaussians`
  are sent: bigger scenes are shown as a random subset (the same one for both colour sets), and the page and the
  terminal say so.
- **a textured mesh** (`.obj` with its `.mtl` and images, `.glb`/`.gltf`, a `.ply` with faces), sent as binary glTF.
- **an equirectangular panorama** (a 2:1 `.png`/`.jpg`): a sphere around the camera, textured from inside. The
  sphere's material is unlit (glTF's `KHR_materials_unlit`), so the scene's lights do not shade the painting. When
  its six cube faces lie beside it (`panorama --cube-faces`), a "Show" control switches to a cube of them.
  Directions follow docs/conventions.md (longitude 0 along +z, increasing to the right, y up), mirrored into the
  viewer's right-handed frame (x -> -x) so that the panorama reads as a 360-degree viewer shows it.
- **instance cameras**: for a splat scene a sync-splat run wrote (`restyle`, `demo`, `ns-train sync-splat`), one
  frustum per instance view, showing the view the sampler delivered there, read from the run record beside the
  scene (`<stem>_run.json` and its views, or `run.json` in its folder).

The scene's up axis is +y (the frame of this project's rigs and panoramas); nerfstudio captures are z-up (`--up +z`).
viser is imported only inside these functions, so importing `sync_splat` stays light.
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.apps.view_content import Up, load_mesh, load_panorama, load_splats, ply_has_faces, up_vector
from sync_splat.errors import InputError

Kind = Literal["splats", "mesh", "panorama"]

SPLAT_SUFFIXES = (".splat", ".ckpt", ".yml", ".yaml")
"""Files that hold a splat scene (besides `.ply` files without faces, and splatfacto run folders)."""
MESH_SUFFIXES = (".obj", ".glb", ".gltf")
"""Files that hold a mesh (besides `.ply` files with faces)."""
PANORAMA_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ViewConfig:
    """Where the page is served and what it sends."""

    host: str = "127.0.0.1"
    """Address to listen on. The default keeps the page on this machine; 0.0.0.0 opens it to every network this
    machine is on (anyone who can reach the port sees the scene)."""
    port: int = 8080
    """Port to listen on (the next free one when it is taken; the terminal prints the address)."""
    before: Path | None = None
    """The scene PATH was restyled from (same geometry): adds a control that switches between its colours and
    PATH's."""
    max_gaussians: int = 1_000_000
    """At most this many Gaussians are sent to the browser (a random subset of bigger scenes), so it stays
    responsive."""
    up: Up = "+y"
    """The scene's up axis (+y: this project's rigs and panoramas; +z: nerfstudio captures)."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InputError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_gaussians < 1:
            raise InputError(f"--max-gaussians must be at least 1, got {self.max_gaussians}")


@dataclass(frozen=True)
class InstanceViews:
    """A run's instance cameras and the views they produced, shown as frustums.

    Attributes:
        c2w: camera-to-world transforms, OpenCV axes, `[N, 4, 4]`.
        fov_y: vertical field of view of each camera, radians, `[N]`.
        images: the views, `rgb01` `[N, 3, H, W]`.
    """

    c2w: Float[Tensor, "N 4 4"]
    fov_y: Float[Tensor, " N"]
    images: Float[Tensor, "N 3 H W"]

    @classmethod
    def recorded_for(cls, scene_path: Path) -> InstanceViews | None:
        """The instance views of the run that wrote the splat scene `scene_path`, from its run record, or None
        where there is no readable record of a splat run in the scene's own frame with its delivered views."""
        from sync_splat.apps.run_record import RunRecord, record_of

        record_path = record_of(scene_path)
        if record_path is None:
            return None
        try:
            record = RunRecord.load(record_path)
            if record.kind not in ("restyle", "demo", "ns-train") or record.frame is not None:
                return None
            images = record.delivered_views()
        except InputError:
            return None
        cameras = record.cameras
        if images is None or cameras is None:
            return None
        fov_y = 2 * torch.atan(cameras.height / (2 * cameras.Ks[:, 1, 1]))
        return cls(c2w=cameras.c2w, fov_y=fov_y, images=images)


@dataclass
class ViewPage:
    """A running page: the viser server, what it shows, and its switches.

    Attributes:
        server: the `viser.ViserServer`.
        kind: what PATH holds.
        summary: one line saying what is shown (and what was left out).
        controls: each switch's dropdown by label: "Colours" (restyled / source) with a `before` scene, "Show"
            (sphere / cube faces) for a panorama whose cube faces lie beside it.
        showing: the option each switch shows now.
    """

    server: Any
    kind: Kind
    summary: str
    controls: dict[str, Any] = field(default_factory=dict)
    showing: dict[str, str] = field(default_factory=dict)
    _nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.server.get_port()}"

    def add_switch(self, label: str, nodes: dict[str, Any]) -> None:
        """A dropdown that shows one of `nodes` (option -> scene node) and hides the others; the first is shown."""
        first = next(iter(nodes))
        self._nodes[label] = nodes
        self.controls[label] = self.server.gui.add_dropdown(label, tuple(nodes), initial_value=first)
        self.controls[label].on_update(lambda event: self.show(label, event.target.value))
        self.show(label, first)

    def show(self, label: str, option: str) -> None:
        """Make `option` of the switch `label` visible and hide its other options."""
        for name, node in self._nodes[label].items():
            node.visible = name == option
        self.showing[label] = option

    def close(self) -> None:
        """Stop the server."""
        self.server.stop()


def open_page(path: str | Path, config: ViewConfig = ViewConfig(), instances: InstanceViews | None = None) -> ViewPage:
    """Load PATH, start the server and build its page; returns at once (the server runs in its own threads).

    `instances` are shown as frustums; None shows those of PATH's run record when PATH is a splat scene that has one.

    Raises:
        InputError: PATH (or `config.before`) cannot be read or shown, or the server cannot listen on `config.host`.
    """
    path = Path(path)
    kind = kind_of(path)
    if config.before is not None and kind != "splats":
        raise InputError(f"--before {config.before}: source colours apply to splat scenes only, and {path} is a {kind}")
    if kind == "splats":
        content = load_splats(path, config)
        if instances is None and path.is_file():
            instances = InstanceViews.recorded_for(path)
    elif kind == "mesh":
        content = load_mesh(path)
    else:
        content = load_panorama(path)
    _check_listenable(config.host)

    import viser

    with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own address table; `serve` prints one line
        server = viser.ViserServer(host=config.host, port=config.port, verbose=False)
    try:
        server.scene.set_up_direction(config.up)
        page = ViewPage(server=server, kind=kind, summary="")
        eye, target = content.build(page, config.up)
        if instances is not None:
            _add_frustums(server, instances, content.extent)
            page.summary += f", {len(instances.c2w)} instance views"
        server.gui.add_markdown(page.summary)
        server.on_client_connect(lambda client: _point_camera(client, eye, target, config.up))
    except BaseException:
        server.stop()
        raise
    return page


def serve(page: ViewPage) -> None:
    """Print what is shown and where, then keep serving until Ctrl-C (which the command line reports in one line)."""
    print(f"{page.summary}: open {page.url} (Ctrl-C to stop)", flush=True)
    while True:
        time.sleep(3600)


def kind_of(path: Path) -> Kind:
    """What a file holds, from its extension (and, for `.ply`, whether its header declares faces).

    Raises:
        InputError: the path does not exist or its type is not one the viewer shows.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file: pass a splat scene (.ply, .splat, .ckpt, config.yml), a mesh "
                         "(.obj, .glb, .gltf, .ply) or a panorama (.png, .jpg)")  # fmt: skip
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in SPLAT_SUFFIXES:
        return "splats"
    if suffix == ".ply":
        return "mesh" if ply_has_faces(path) else "splats"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    if suffix in PANORAMA_SUFFIXES:
        return "panorama"
    raise InputError(
        f"{path}: the viewer does not show {suffix or 'extensionless'} files: pass a splat scene (.ply, .splat, .ckpt, "
        "config.yml), a mesh (.obj, .glb, .gltf, .ply) or a 2:1 panorama (.png, .jpg)"
    )


def _add_frustums(server: Any, instances: InstanceViews, extent: float) -> None:
    """One frustum per instance camera, showing its view, sized to a tenth of the scene."""
    from viser.transforms import SO3

    height, width = instances.images.shape[-2:]
    pixels = (instances.images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    for i, c2w in enumerate(instances.c2w.detach().double().cpu().numpy()):
        server.scene.add_camera_frustum(
            f"/cameras/view_{i:02d}", fov=float(instances.fov_y[i]), aspect=width / height, scale=0.1 * extent,
            image=pixels[i].permute(1, 2, 0).cpu().numpy(), wxyz=SO3.from_matrix(c2w[:3, :3]).wxyz,
            position=c2w[:3, 3],
        )  # fmt: skip


def _point_camera(client: Any, eye: np.ndarray, target: np.ndarray, up: Up) -> None:
    with client.atomic():
        client.camera.up_direction = tuple(up_vector(up))
        client.camera.position = tuple(eye)
        client.camera.look_at = tuple(target)


def _check_listenable(host: str) -> None:
    """Refuse a host this machine cannot listen on, before viser tries (it would retry ports until it gives up)."""
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise InputError(
            f"--host {host}: cannot listen on it ({reason}): pass an address of this machine "
            "(127.0.0.1 for this machine only, 0.0.0.0 for every network)"
        ) from None
