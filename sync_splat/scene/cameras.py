"""Camera rigs: a batch of pinhole cameras, orbit rigs around a bounding sphere, and nerfstudio cameras.

Conventions (docs/conventions.md): `c2w` is camera-to-world `[N, 4, 4]` in OpenCV axes (x right, y down, z forward);
`viewmats` are their inverses (world-to-camera), which the renderers take; `Ks` are pinhole intrinsics in pixels
with the centre of pixel (row i, column j) at `(j + 0.5, i + 0.5)`.

World frame of the rigs built here: **y up**, the demo scene's frame (and the panoramas'). Azimuth 0 looks from the
+z side towards the centre, azimuths increase towards +x; elevation is the angle above the horizontal (x, z) plane.
A camera's direction from the centre is `(cos(el) sin(az), sin(el), cos(el) cos(az))`, the panorama direction with
longitude `az` and latitude `el`.

Nerfstudio cameras (OpenGL axes) are converted once, in `Cameras.from_nerfstudio`; nothing else here holds OpenGL
cameras and nothing here imports nerfstudio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sync_splat.errors import InputError

# OpenGL camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward): flip y and z.
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass(frozen=True)
class Cameras:
    """N pinhole cameras sharing one image size.

    Attributes:
        c2w: camera-to-world transforms in OpenCV axes, `[N, 4, 4]` (rigid).
        Ks: pinhole intrinsics in pixels, `[N, 3, 3]`.
        width: image width W in pixels.
        height: image height H in pixels.
    """

    c2w: Float[Tensor, "N 4 4"]
    Ks: Float[Tensor, "N 3 3"]
    width: int
    height: int

    def __post_init__(self) -> None:
        n = self.c2w.shape[0] if self.c2w.ndim == 3 else -1
        if self.c2w.shape != (n, 4, 4) or self.Ks.shape != (n, 3, 3):
            raise InputError(
                f"Cameras: c2w must be [N, 4, 4] and Ks [N, 3, 3] with the same N, got {tuple(self.c2w.shape)} and "
                f"{tuple(self.Ks.shape)}"
            )
        if self.width < 1 or self.height < 1:
            raise InputError(f"Cameras: the image size must be positive, got width={self.width} height={self.height}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def viewmats(self) -> Float[Tensor, "N 4 4"]:
        """World-to-camera transforms (the inverses of `c2w`), OpenCV axes: what `render_gaussians` takes."""
        return torch.linalg.inv(self.c2w)

    @property
    def size(self) -> tuple[int, int]:
        """`(W, H)`."""
        return self.width, self.height

    def project(
        self, points: Float[Tensor, "P 3"], view: int, near: float = 1e-9
    ) -> tuple[Float[Tensor, " P"], Float[Tensor, " P"], Float[Tensor, " P"], Tensor]:
        """Where world `points` land in view `view`: their continuous pixel coordinates `(x, y)` (pixel `(col, row)`
        spans `[col, col + 1) x [row, row + 1)`), their depth along the optical axis, and whether they lie in front of
        the camera (depth above `near`) and inside its frame. In the points' dtype and device."""
        viewmat, K = torch.linalg.inv(self.c2w[view]).to(points), self.Ks[view].to(points)
        camera = points @ viewmat[:3, :3].T + viewmat[:3, 3]
        depth = camera[:, 2]
        safe = depth.clamp_min(near)
        x = K[0, 0] * camera[:, 0] / safe + K[0, 2]
        y = K[1, 1] * camera[:, 1] / safe + K[1, 2]
        inside = (depth > near) & (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
        return x, y, depth, inside

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """The same cameras with tensors on `device` / in `dtype`."""
        return Cameras(self.c2w.to(device, dtype), self.Ks.to(device, dtype), self.width, self.height)

    def subset(self, indices: Sequence[int] | Tensor) -> Cameras:
        """The cameras at `indices`, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.c2w.device).reshape(-1)
        if index.numel() and (index.min() < -len(self) or index.max() >= len(self)):
            raise InputError(f"Cameras.subset: indices must lie in [0, {len(self)}), got {index.tolist()}")
        return Cameras(self.c2w[index], self.Ks[index], self.width, self.height)

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras rendering `width x height` images: `fx, cx` scale by `W'/W` and `fy, cy` by `H'/H`.

        The field of view along each axis is unchanged; when the aspect changes, pixels stop being square.
        """
        if width < 1 or height < 1:
            raise InputError(f"Cameras.resized: the image size must be positive, got {width} x {height}")
        scale = torch.tensor(
            [width / self.width, height / self.height, 1.0], dtype=self.Ks.dtype, device=self.Ks.device
        )
        return Cameras(self.c2w, self.Ks * scale[:, None], width, height)

    def resized_for(self, native_size: int = 512, multiple: int = 64) -> Cameras:
        """The resolution policy for a diffusion model: the long side becomes `native_size`, the short side keeps
        the aspect, and both are rounded to the nearest multiple of `multiple` (halves round up; at least one
        multiple). Intrinsics are rescaled as in `resized`.

        Args:
            native_size: the model's native image size (512 for SD 1.5).
            multiple: what both sides must be multiples of (64 = 8 latent pixels x 8 for the UNet's downsampling).
        """
        if native_size < 1 or multiple < 1:
            raise InputError(
                f"Cameras.resized_for: native_size and multiple must be positive, got {native_size}, {multiple}"
            )
        scale = native_size / max(self.width, self.height)

        def to_multiple(side: float) -> int:
            return max(multiple, math.floor(side / multiple + 0.5) * multiple)

        return self.resized(to_multiple(self.width * scale), to_multiple(self.height * scale))

    @classmethod
    def orbit_rig(
        cls,
        centre: Sequence[float] | Tensor,
        radius: float,
        num_azimuths: int = 8,
        elevations_deg: Sequence[float] = (0.0, 30.0),
        top_views: int = 1,
        fov_deg: float = 60.0,
        size: tuple[int, int] = (512, 512),
        azimuth_offset_deg: float = 0.0,
    ) -> Cameras:
        """Cameras on a sphere around a bounding sphere, all looking at its centre, world y up.

        Views come ring by ring: for each elevation, `num_azimuths` azimuths `2 pi k / num_azimuths` (plus
        `azimuth_offset_deg`); then
        `top_views` views straight down from above, turned by `2 pi k / top_views` about the vertical axis (each is
        the limit of a ring view at that azimuth as the elevation goes to 90 degrees). Ring views keep world up
        pointing up in the image.

        The distance fits the sphere in the field of view: a sphere of radius r seen from distance d spans a cone
        of half-angle `asin(r / d)`, so `d = r / sin(fov / 2)` makes it touch the borders of the image's shorter
        side. `fov_deg` is the field of view across that shorter side; pixels are square, principal point centred.

        Args:
            centre: the bounding sphere's centre `[3]` (world frame, y up).
            radius: the bounding sphere's radius (> 0).
            num_azimuths: views per elevation ring.
            elevations_deg: one ring per elevation, in degrees above the horizontal plane (-90 < el < 90).
            top_views: views from straight above (0 for none).
            fov_deg: field of view across the shorter image side, in degrees (0 < fov < 180).
            size: `(W, H)` in pixels.
            azimuth_offset_deg: turns every ring (not the top views) by this angle.

        Returns:
            `num_azimuths * len(elevations_deg) + top_views` cameras, in float32 on the CPU.
        """
        width, height = size
        if radius <= 0 or not 0 < fov_deg < 180 or num_azimuths < 0 or top_views < 0:
            raise InputError(
                f"orbit_rig: need radius > 0, 0 < fov_deg < 180 and non-negative view counts, got radius={radius}, "
                f"fov_deg={fov_deg}, num_azimuths={num_azimuths}, top_views={top_views}"
            )
        if any(not -90 < el < 90 for el in elevations_deg):
            raise InputError(f"orbit_rig: elevations must lie in (-90, 90) degrees, got {tuple(elevations_deg)}")
        centre_t = torch.as_tensor(centre, dtype=torch.float64).reshape(3)
        half_fov = math.radians(fov_deg) / 2
        distance = radius / math.sin(half_fov)

        c2w = []
        for el_deg in elevations_deg:
            el = math.radians(el_deg)
            for k in range(num_azimuths):
                az = 2 * math.pi * k / num_azimuths + math.radians(azimuth_offset_deg)
                direction = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
                c2w.append(_look_at(centre_t + distance * direction, centre_t, up=torch.tensor([0.0, 1.0, 0.0])))
        for k in range(top_views):
            az = 2 * math.pi * k / top_views
            # Image up points away from the ring camera at this azimuth, as that camera's does when it rises to 90.
            up = -torch.tensor([math.sin(az), 0.0, math.cos(az)])
            c2w.append(_look_at(centre_t + distance * torch.tensor([0.0, 1.0, 0.0]), centre_t, up=up))

        focal = min(width, height) / 2 / math.tan(half_fov)
        K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
        c2w_t = torch.stack(c2w).float() if c2w else torch.zeros(0, 4, 4)
        return cls(c2w_t, K.expand(len(c2w_t), 3, 3).clone(), width, height)

    @classmethod
    def from_nerfstudio(
        cls,
        camera_to_worlds: Float[Tensor, "N 3 4"],
        fx: float | Tensor,
        fy: float | Tensor,
        cx: float | Tensor,
        cy: float | Tensor,
        width: int | Tensor,
        height: int | Tensor,
        max_views: int | None = None,
    ) -> Cameras:
        """Convert nerfstudio cameras (OpenGL axes) to OpenCV axes and keep an evenly spread subset.

        `c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)`. Takes plain tensors (e.g. the fields of a
        `nerfstudio.cameras.cameras.Cameras`), so nerfstudio is not imported here.

        Args:
            camera_to_worlds: `[N, 3, 4]` camera-to-world transforms in OpenGL axes.
            fx, fy, cx, cy: intrinsics in pixels: a number or a tensor of N values (`[N]` or `[N, 1]`).
            width, height: the image size: a number or a tensor of N equal values.
            max_views: keep at most this many views, spread evenly over the sequence (`evenly_spread_indices`);
                None keeps all.
        """
        if camera_to_worlds.ndim != 3 or camera_to_worlds.shape[1:] != (3, 4):
            raise InputError(
                f"from_nerfstudio: camera_to_worlds must be [N, 3, 4], got {tuple(camera_to_worlds.shape)}"
            )
        n = camera_to_worlds.shape[0]
        dtype, device = camera_to_worlds.dtype, camera_to_worlds.device
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype, device=device).expand(n, 1, 4)
        c2w = torch.cat([camera_to_worlds, bottom], dim=1) @ OPENGL_TO_OPENCV.to(dtype=dtype, device=device)

        def per_view(value: float | Tensor, name: str) -> Tensor:
            value = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
            if value.numel() not in (1, n):
                raise InputError(f"from_nerfstudio: {name} must be a number or N={n} values, got {value.numel()}")
            return value.expand(n)

        Ks = torch.zeros(n, 3, 3, dtype=dtype, device=device)
        Ks[:, 0, 0], Ks[:, 1, 1] = per_view(fx, "fx"), per_view(fy, "fy")
        Ks[:, 0, 2], Ks[:, 1, 2] = per_view(cx, "cx"), per_view(cy, "cy")
        Ks[:, 2, 2] = 1.0
        sizes = []
        for value, name in ((width, "width"), (height, "height")):
            values = torch.as_tensor(value).reshape(-1).unique()
            if values.numel() != 1:
                raise InputError(
                    f"from_nerfstudio: all cameras must share one {name}, got {values.tolist()}; "
                    "resize the images or pass a subset of cameras"
                )
            sizes.append(int(values.item()))
        cameras = cls(c2w, Ks, sizes[0], sizes[1])
        return cameras if max_views is None else cameras.subset(evenly_spread_indices(n, max_views))


def evenly_spread_indices(count: int, max_count: int) -> list[int]:
    """At most `max_count` of `range(count)`, spread evenly: the middle index of each of `max_count` equal bins.

    The bins' middles, `floor((2k + 1) count / (2 max_count))`, keep the picks symmetric for sequences that are
    paths as well as for loops (a circular capture: first and last views are neighbours).
    """
    if max_count < 1:
        raise InputError(f"max_views must be at least 1, got {max_count}")
    if max_count >= count:
        return list(range(count))
    return [((2 * k + 1) * count) // (2 * max_count) for k in range(max_count)]


def _look_at(eye: Tensor, target: Tensor, up: Tensor) -> Float[Tensor, "4 4"]:
    """OpenCV camera-to-world at `eye` looking at `target`, with world `up` pointing up in the image (-y)."""
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up.to(forward)), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w
