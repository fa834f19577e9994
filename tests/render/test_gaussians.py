"""The Gaussian renderer: the torch compositor against a dense per-pixel reference, its weights, its gradient, the
gsplat backend's argument mapping, and (CUDA only) parity with gsplat.rasterization."""

import inspect
import math

import numpy as np
import pytest
import torch

import sync_splat.render.gaussians as gaussians
from sync_splat.errors import InputError
from sync_splat.render.gaussians import RenderOutput, gaussian_weights, render_gaussians

WIDTH, HEIGHT = 32, 24  # 2 x 2 tiles of 16 pixels, the bottom row of tiles cut at 8 pixels


def random_scene(seed: int, num_gaussians: int = 40, channels: int = 3, dtype: torch.dtype = torch.float64) -> dict:
    """Gaussians in front of two cameras (a few behind the first one), features in [0, 1]."""
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g, dtype=dtype)

    means = torch.stack(
        [uniform(-1.5, 1.5, num_gaussians), uniform(-1.0, 1.0, num_gaussians), uniform(1.0, 5.0, num_gaussians)], -1
    )
    behind = num_gaussians // 8
    means[:behind, 2] = uniform(-2.0, 0.005, behind)  # behind the first camera or in front of its near plane
    scales = torch.exp(uniform(math.log(0.03), math.log(0.4), num_gaussians, 3))
    quats = torch.randn(num_gaussians, 4, generator=g, dtype=dtype)
    opacities = uniform(0.05, 1.0, num_gaussians)
    features = torch.rand(num_gaussians, channels, generator=g, dtype=dtype)
    # Camera 0 at the origin looking along +z; camera 1 turned 20 degrees about y and moved to the side.
    angle = math.radians(20.0)
    c2w_1 = torch.tensor(
        [
            [math.cos(angle), 0.0, math.sin(angle), -0.8],
            [0.0, 1.0, 0.0, 0.1],
            [-math.sin(angle), 0.0, math.cos(angle), 0.2],
            [0.0, 0.0, 0.0, 1.0],
        ],
        dtype=dtype,
    )
    viewmats = torch.stack([torch.eye(4, dtype=dtype), torch.linalg.inv(c2w_1)])
    Ks = torch.tensor([[30.0, 0.0, WIDTH / 2], [0.0, 28.0, HEIGHT / 2], [0.0, 0.0, 1.0]], dtype=dtype).expand(2, 3, 3)
    return dict(
        means=means, quats_wxyz=quats, scales=scales, opacities=opacities, features=features,
        viewmats=viewmats, Ks=Ks.clone(), width=WIDTH, height=HEIGHT,
    )  # fmt: skip


def geometry(scene: dict) -> dict:
    return {k: v for k, v in scene.items() if k != "features"}


def reference_render(scene: dict, antialiased: bool = False, tile_size: int = 16) -> tuple[np.ndarray, ...]:
    """gsplat 1.4.0's classic rasterisation written pixel by pixel: every Gaussian is projected on its own, and each
    pixel walks all of them in depth order (no tiles are built; a Gaussian reaches a pixel when the pixel's tile
    overlaps the Gaussian's 3-sigma square, gsplat's rule)."""
    means, quats, scales = (scene[k].double().numpy() for k in ("means", "quats_wxyz", "scales"))
    opacities, features = scene["opacities"].double().numpy(), scene["features"].double().numpy()
    width, height = scene["width"], scene["height"]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    num_views, channels = len(scene["viewmats"]), features.shape[1]
    image = np.zeros((num_views, channels, height, width))
    alpha = np.zeros((num_views, 1, height, width))
    depth = np.zeros((num_views, 1, height, width))
    viewmats, Ks = scene["viewmats"].double().numpy(), scene["Ks"].double().numpy()
    for v, (viewmat, K) in enumerate(zip(viewmats, Ks, strict=True)):
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        splats = []
        for i in range(len(means)):
            x, y, z = viewmat[:3, :3] @ means[i] + viewmat[:3, 3]
            if z < 0.01:
                continue
            w, qx, qy, qz = quats[i] / np.linalg.norm(quats[i])
            rot = np.array(
                [
                    [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - w * qz), 2 * (qx * qz + w * qy)],
                    [2 * (qx * qy + w * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - w * qx)],
                    [2 * (qx * qz - w * qy), 2 * (qy * qz + w * qx), 1 - 2 * (qx * qx + qy * qy)],
                ]
            )
            cov_cam = viewmat[:3, :3] @ rot @ np.diag(scales[i] ** 2) @ rot.T @ viewmat[:3, :3].T
            # The Jacobian is evaluated at the centre clamped to 1.3 times the field of view.
            tx = z * min((width - cx) / fx + 0.15 * width / fx, max(-(cx / fx + 0.15 * width / fx), x / z))
            ty = z * min((height - cy) / fy + 0.15 * height / fy, max(-(cy / fy + 0.15 * height / fy), y / z))
            J = np.array([[fx / z, 0.0, -fx * tx / z**2], [0.0, fy / z, -fy * ty / z**2]])
            cov2d = J @ cov_cam @ J.T
            det_orig = np.linalg.det(cov2d)
            cov2d = cov2d + 0.3 * np.eye(2)
            det = np.linalg.det(cov2d)
            if det <= 0:
                continue
            half_trace = 0.5 * np.trace(cov2d)
            radius = math.ceil(3 * math.sqrt(half_trace + math.sqrt(max(0.01, half_trace**2 - det))))
            u, w_ = fx * x / z + cx, fy * y / z + cy
            if u + radius <= 0 or u - radius >= width or w_ + radius <= 0 or w_ - radius >= height:
                continue
            tile_range = [
                min(max(0, math.floor(u / tile_size - radius / tile_size)), tiles_x),
                min(max(0, math.ceil(u / tile_size + radius / tile_size)), tiles_x),
                min(max(0, math.floor(w_ / tile_size - radius / tile_size)), tiles_y),
                min(max(0, math.ceil(w_ / tile_size + radius / tile_size)), tiles_y),
            ]
            opacity = opacities[i] * (math.sqrt(max(0.0, det_orig / det)) if antialiased else 1.0)
            splats.append((z, u, w_, np.linalg.inv(cov2d), opacity, features[i], tile_range))
        splats.sort(key=lambda s: s[0])
        for row in range(height):
            for col in range(width):
                transmittance, colour, depth_sum = 1.0, np.zeros(channels), 0.0
                for z, u, w_, conic, opacity, feature, (tx0, tx1, ty0, ty1) in splats:
                    if not (tx0 <= col // tile_size < tx1 and ty0 <= row // tile_size < ty1):
                        continue
                    d = np.array([u - (col + 0.5), w_ - (row + 0.5)])
                    sigma = 0.5 * d @ conic @ d
                    a = min(0.999, opacity * math.exp(-sigma))
                    if sigma < 0 or a < 1 / 255:
                        continue
                    if transmittance * (1 - a) <= 1e-4:
                        break
                    colour += a * transmittance * feature
                    depth_sum += a * transmittance * z
                    transmittance *= 1 - a
                image[v, :, row, col] = colour
                alpha[v, 0, row, col] = 1 - transmittance
                depth[v, 0, row, col] = depth_sum / (1 - transmittance) if transmittance < 1 else 0.0
    return image, alpha, depth


def outputs(out: RenderOutput) -> tuple[torch.Tensor, ...]:
    return out.image, out.alpha, out.depth


def assert_matches(out: RenderOutput, expected: tuple[np.ndarray, ...], atol: float = 1e-9) -> None:
    for name, value, reference in zip(("image", "alpha", "depth"), outputs(out), expected, strict=True):
        np.testing.assert_allclose(value.detach().numpy(), reference, atol=atol, rtol=0, err_msg=name)


def assert_same(out: RenderOutput, expected: RenderOutput, atol: float = 1e-12) -> None:
    for value, reference in zip(outputs(out), outputs(expected), strict=True):
        assert value.shape == reference.shape
        torch.testing.assert_close(value, reference, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "seed, num_gaussians, channels, antialiased",
    [
        (0, 20, 3, False),
        (1, 50, 3, False),
        (2, 50, 4, False),  # SD latents: 4 channels
        (3, 30, 1, True),
        (4, 50, 4, True),
    ],
)
def test_torch_compositor_matches_dense_reference(
    seed: int, num_gaussians: int, channels: int, antialiased: bool
) -> None:
    scene = random_scene(seed, num_gaussians, channels)
    out = render_gaussians(**scene, backend="torch", antialiased=antialiased)
    assert out.image.shape == (2, channels, HEIGHT, WIDTH)
    assert out.alpha.shape == out.depth.shape == (2, 1, HEIGHT, WIDTH)
    assert (out.alpha > 0.5).any() and (out.alpha == 0).any()  # the scene is neither empty nor all covered
    assert_matches(out, reference_render(scene, antialiased=antialiased))


def test_gaussian_crossing_tile_corner_renders_seamlessly() -> None:
    # One round Gaussian centred where four tiles meet: the image is mirror-symmetric about the tile borders.
    scene = random_scene(0, num_gaussians=1)
    scene["means"] = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    scene["scales"] = torch.full((1, 3), 0.2, dtype=torch.float64)
    scene["opacities"] = torch.tensor([0.9], dtype=torch.float64)
    scene.update(width=32, height=32, viewmats=scene["viewmats"][:1], Ks=scene["Ks"][:1].clone())
    scene["Ks"][0, :2, 2] = 16.0
    out = render_gaussians(**scene, backend="torch")
    alpha = out.alpha[0, 0]
    assert alpha[15, 15] > 0.8 and alpha[0, 0] == 0  # covers the corner, not the whole image
    torch.testing.assert_close(alpha, alpha.flip(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, alpha.flip(1), atol=1e-12, rtol=0)
    assert_matches(out, reference_render(scene))


def test_gaussians_behind_the_near_plane_are_culled() -> None:
    scene = random_scene(5)
    in_front = scene["means"][:, 2] > 0.01  # in front of camera 0's near plane
    assert (~in_front).any()
    # Make the Gaussians behind camera 0 huge and opaque: they must still leave no trace in its image.
    scene["scales"][~in_front] = 3.0
    scene["opacities"][~in_front] = 1.0
    without = dict(scene, **{k: scene[k][in_front] for k in ("means", "quats_wxyz", "scales", "opacities", "features")})
    first_view = dict(viewmats=scene["viewmats"][:1], Ks=scene["Ks"][:1])
    assert_same(render_gaussians(**dict(scene, **first_view)), render_gaussians(**dict(without, **first_view)))


def single_view_scene(depths: list[float], opacities: list[float], column: float, row: float, scale: float) -> dict:
    """Round Gaussians whose centres project to pixel position (column, row) of camera 0 (fx 30, fy 28, centre
    (16, 12)), one per depth, with features e_k (channel k lights up for Gaussian k)."""
    scene = random_scene(0, num_gaussians=len(depths))
    z = torch.tensor(depths, dtype=torch.float64)
    scene["means"] = torch.stack([(column - 16) * z / 30, (row - 12) * z / 28, z], dim=-1)
    scene["quats_wxyz"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64).expand(len(depths), 4)
    scene["scales"] = torch.full((len(depths), 3), scale, dtype=torch.float64)
    scene["opacities"] = torch.tensor(opacities, dtype=torch.float64)
    scene["features"] = torch.eye(len(depths), dtype=torch.float64)
    scene.update(viewmats=scene["viewmats"][:1], Ks=scene["Ks"][:1])
    return scene


@pytest.mark.parametrize(
    "opacities, expected_weights",
    [
        ([1.0], [0.999]),  # alpha is capped at 0.999
        ([1.0, 1.0], [0.999, 0.0]),  # T would fall to 1e-6: the second one is left out
        ([0.85] * 6, [0.85 * 0.15**k for k in range(4)] + [0.0, 0.0]),  # the 5th would bring T to 7.6e-5 <= 1e-4
        ([0.5] * 3, [0.5, 0.25, 0.125]),
        ([0.003, 0.5], [0.0, 0.5]),  # alpha < 1/255 is skipped and leaves T at 1
    ],
)
def test_front_to_back_weights_follow_gsplat(opacities: list[float], expected_weights: list[float]) -> None:
    # The Gaussians are stacked on the centre of pixel (row 12, column 16), front to back; there sigma = 0.
    depths = [1.5 + 0.5 * k for k in range(len(opacities))]
    scene = single_view_scene(depths[::-1], opacities[::-1], column=16.5, row=12.5, scale=0.1)  # given back to front
    out = render_gaussians(**scene, backend="torch")
    weights = torch.tensor(expected_weights[::-1], dtype=torch.float64)
    torch.testing.assert_close(out.image[0, :, 12, 16], weights, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.alpha[0, 0, 12, 16], weights.sum(), atol=1e-12, rtol=0)
    assert_matches(out, reference_render(scene))


@pytest.mark.parametrize("column, lit, dark", [(9.0, 15, 16), (23.0, 16, 15)])
def test_gaussian_reaches_only_the_tiles_its_3_sigma_square_touches(column: float, lit: int, dark: int) -> None:
    # Centred 7 px from the tile border at x = 16, with 2D variances 5.0 + 0.3 (x) and about 4.1 + 0.3 (y): radius
    # ceil(3 sqrt(5.3)) = 7, so the square ends at the border. The first pixel across it lies 7.5 px away, where
    # alpha = exp(-0.5 * 7.5^2 / 5.3) = 0.0048 >= 1/255, but its tile is one gsplat never visits.
    scale = math.sqrt(5.0 / (15**2 * (1 + (7 / 30) ** 2)))  # (fx / z)^2 (1 + (x / z)^2) s^2 = 5 at z = 2
    scene = single_view_scene([2.0], [1.0], column=column, row=12.0, scale=scale)
    out = render_gaussians(**scene, backend="torch")
    tail = math.exp(-0.5 * (7.5**2 / 5.3 + 0.5**2 / (14**2 * scale**2 + 0.3)))
    assert tail >= 1 / 255
    assert out.alpha[0, 0, 12, lit] > tail and out.alpha[0, 0, 12, dark] == 0
    assert_matches(out, reference_render(scene))


def test_depth_of_an_opaque_gaussian_is_its_distance() -> None:
    scene = random_scene(0, num_gaussians=1)
    scene["means"] = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    scene["scales"] = torch.full((1, 3), 0.3, dtype=torch.float64)
    scene["opacities"] = torch.tensor([1.0], dtype=torch.float64)
    out = render_gaussians(**scene, backend="torch")
    covered = out.alpha[0] > 0
    assert covered.any() and not covered.all()
    torch.testing.assert_close(out.depth[0][covered], torch.full_like(out.depth[0][covered], 3.0))
    assert (out.depth[0][~covered] == 0).all()


@pytest.mark.parametrize("channels", [3, 4])
def test_weights_reproduce_image_and_alpha(channels: int) -> None:
    scene = random_scene(6, channels=channels)
    out = render_gaussians(**scene, backend="torch")
    W = gaussian_weights(**geometry(scene))
    assert W.is_sparse and W.shape == (2 * HEIGHT * WIDTH, 40)
    assert W._nnz() < W.shape[0] * W.shape[1] / 4  # stored sparsely, zeros left out
    image = (W @ scene["features"]).reshape(2, HEIGHT, WIDTH, channels).permute(0, 3, 1, 2)
    alpha = (W @ torch.ones(40, 1, dtype=torch.float64)).reshape(2, 1, HEIGHT, WIDTH)
    torch.testing.assert_close(image, out.image, atol=1e-12, rtol=0)
    torch.testing.assert_close(alpha, out.alpha, atol=1e-12, rtol=0)


def test_gradient_flows_to_features_through_the_weights() -> None:
    scene = random_scene(7, channels=4)
    features = scene.pop("features").requires_grad_(True)
    out = render_gaussians(**scene, features=features, backend="torch")
    upstream = torch.randn(out.image.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (out.image * upstream).sum().backward()
    W = gaussian_weights(**scene)
    expected = W.t() @ upstream.permute(0, 2, 3, 1).reshape(-1, 4)  # d(sum(upstream * W f)) / df = W^T upstream
    assert features.grad is not None and features.grad.abs().sum() > 0
    torch.testing.assert_close(features.grad, expected, atol=1e-12, rtol=0)


def test_chunks_carry_transmittance_across_blocks_split_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    scene = random_scene(8, num_gaussians=50, channels=4)
    whole = render_gaussians(**scene, backend="torch")
    monkeypatch.setattr(gaussians, "_CHUNK_ELEMENTS", 3 * gaussians._BLOCK**2)  # three (Gaussian, block) pairs
    chunked = render_gaussians(**scene, backend="torch")
    assert_same(chunked, whole)


def test_float32_inputs_give_float32_outputs() -> None:
    scene64 = random_scene(9, channels=4)
    scene32 = {k: v.float() if torch.is_tensor(v) else v for k, v in scene64.items()}
    out32, out64 = render_gaussians(**scene32, backend="torch"), render_gaussians(**scene64, backend="torch")
    assert out32.image.dtype == out32.alpha.dtype == out32.depth.dtype == torch.float32
    assert gaussian_weights(**geometry(scene32)).dtype == torch.float32
    # Single precision moves a few near-threshold decisions (alpha >= 1/255); the images stay close on average.
    assert (out32.image.double() - out64.image).abs().mean() < 1e-4


def test_no_visible_gaussians_renders_empty_images() -> None:
    scene = random_scene(10)
    scene["means"][:, 2] = -1.0  # all behind the first camera
    scene["viewmats"] = scene["viewmats"][:1]
    scene["Ks"] = scene["Ks"][:1]
    out = render_gaussians(**scene, backend="torch")
    assert out.image.abs().sum() == 0 and out.alpha.sum() == 0 and out.depth.sum() == 0
    assert gaussian_weights(**geometry(scene))._nnz() == 0


def test_auto_backend_on_cpu_is_the_torch_compositor() -> None:
    scene = random_scene(11)
    auto, torch_out = render_gaussians(**scene), render_gaussians(**scene, backend="torch")
    torch.testing.assert_close(auto.image, torch_out.image, atol=0, rtol=0)


def test_gsplat_backend_refuses_cpu_tensors() -> None:
    with pytest.raises(InputError, match="CUDA"):
        render_gaussians(**random_scene(0), backend="gsplat")


def test_bad_shapes_name_the_argument() -> None:
    scene = random_scene(0)
    scene["opacities"] = scene["opacities"][:, None]
    with pytest.raises(InputError, match="opacities"):
        render_gaussians(**scene)


def rasterize_to_pixels_loop(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: torch.Tensor,
    flatten_ids: torch.Tensor,
    backgrounds: torch.Tensor | None = None,
    batch_per_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat 1.4.0's forward rasterisation kernel (`rasterize_to_pixels_fwd.cu`) transcribed pixel by pixel, with
    the signature of `gsplat.cuda._torch_impl._rasterize_to_pixels`: each pixel walks its tile's list (gsplat's own
    `isect_offsets` and `flatten_ids`: which Gaussians, in which order) front to back. Returns `[C, H, W, D]`
    colours and `[C, H, W, 1]` alphas."""
    num_cameras, num_gaussians, channels = colors.shape
    tiles_y, tiles_x = isect_offsets.shape[1:]
    offsets = isect_offsets.flatten().tolist() + [len(flatten_ids)]
    ids = flatten_ids.tolist()
    xy = means2d.reshape(-1, 2).tolist()
    conic = conics.reshape(-1, 3).tolist()
    opacity = opacities.reshape(-1).tolist()
    flat_colors = colors.reshape(-1, channels)
    render_colors = torch.zeros(num_cameras, image_height, image_width, channels, dtype=colors.dtype)
    render_alphas = torch.zeros(num_cameras, image_height, image_width, 1, dtype=colors.dtype)
    for camera in range(num_cameras):
        for i in range(image_height):
            for j in range(image_width):
                tile = (camera * tiles_y + i // tile_size) * tiles_x + j // tile_size
                transmittance, hits, weights = 1.0, [], []
                for g in ids[offsets[tile] : offsets[tile + 1]]:
                    dx, dy = xy[g][0] - (j + 0.5), xy[g][1] - (i + 0.5)
                    sigma = 0.5 * (conic[g][0] * dx * dx + conic[g][2] * dy * dy) + conic[g][1] * dx * dy
                    alpha = min(0.999, opacity[g] * math.exp(-sigma))
                    if sigma < 0 or alpha < 1 / 255:
                        continue
                    if transmittance * (1 - alpha) <= 1e-4:
                        break
                    hits.append(g)
                    weights.append(alpha * transmittance)
                    transmittance *= 1 - alpha
                if hits:
                    render_colors[camera, i, j] = torch.tensor(weights, dtype=colors.dtype) @ flat_colors[hits]
                render_alphas[camera, i, j, 0] = 1 - transmittance
    if backgrounds is not None:
        render_colors = render_colors + backgrounds[:, None, None, :] * (1 - render_alphas)
    return render_colors, render_alphas


@pytest.mark.parametrize("seed, channels, antialiased", [(12, 4, True), (14, 3, False)])
def test_gsplat_backend_calls_gsplat_as_gsplat_reads_it(
    monkeypatch: pytest.MonkeyPatch, seed: int, channels: int, antialiased: bool
) -> None:
    """Our gsplat call, answered on the CPU by gsplat's own Python: `gsplat.rendering._rasterization` (how gsplat
    reads the arguments, its torch projection `_fully_fused_projection`, its render modes and output layout) with
    its CUDA helpers swapped for gsplat's torch `_isect_tiles` and `_isect_offset_encode` and a transcription of
    its compositing kernel. A wrong belief about gsplat (quaternion order, view matrix direction, colour or output
    layout, render mode, the antialiasing compensation) makes it disagree with our torch renderer."""
    import gsplat
    import gsplat.cuda._torch_impl as gsplat_torch
    import gsplat.rendering as gsplat_rendering

    accepted = inspect.signature(gsplat.rasterization)
    reference_takes = inspect.signature(gsplat_rendering._rasterization).parameters
    calls = []

    def rasterization_on_cpu(**kwargs):
        calls.append(kwargs)
        accepted.bind(**kwargs)  # a TypeError if gsplat 1.4.0 does not take a keyword we pass or needs one more
        left_out = set(kwargs) - set(reference_takes)
        assert left_out <= {"packed", "sparse_grad", "absgrad"}, left_out  # memory layout and gradients only
        return gsplat_rendering._rasterization(**{k: v for k, v in kwargs.items() if k in reference_takes})

    def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, packed, **_):
        assert not packed
        return gsplat_torch._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)

    monkeypatch.setattr(gsplat, "rasterization", rasterization_on_cpu)
    monkeypatch.setattr(gsplat_rendering, "isect_tiles", isect_tiles)
    monkeypatch.setattr(gsplat_rendering, "isect_offset_encode", gsplat_torch._isect_offset_encode)
    monkeypatch.setattr(gsplat_torch, "_rasterize_to_pixels", rasterize_to_pixels_loop)

    scene = random_scene(seed, channels=channels)
    args = [scene[k] for k in ("means", "quats_wxyz", "scales", "opacities", "features", "viewmats", "Ks")]
    theirs = gaussians._render_gsplat(*args, WIDTH, HEIGHT, 0.01, 1e10, 0.3, antialiased, 16)
    ours = render_gaussians(**scene, backend="torch", antialiased=antialiased)
    assert len(calls) == 1
    assert (ours.alpha > 0.5).any() and (ours.alpha == 0).any() and (ours.depth > 0).any()
    assert_same(theirs, ours, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels, antialiased", [(3, False), (4, True)])
def test_torch_compositor_matches_gsplat(channels: int, antialiased: bool) -> None:
    pytest.importorskip("gsplat")
    scene = random_scene(13, num_gaussians=2000, channels=channels, dtype=torch.float32)
    scene = {k: v.cuda() if torch.is_tensor(v) else v for k, v in scene.items()}
    scene["width"], scene["height"] = 96, 64
    scene["Ks"][:, 0, 2], scene["Ks"][:, 1, 2] = 48.0, 32.0
    ours = render_gaussians(**scene, backend="torch", antialiased=antialiased)
    theirs = render_gaussians(**scene, backend="gsplat", antialiased=antialiased)
    assert (theirs.alpha > 0.5).float().mean() > 0.2
    for value, reference in zip(outputs(ours), outputs(theirs), strict=True):
        diff = (value - reference).abs()
        # gsplat uses fast float32 exp: a few pixels may flip a threshold (alpha >= 1/255, T > 1e-4).
        assert (diff > 1e-4).float().mean() < 1e-3
        assert diff.max() < 0.05
