"""ID-Booth's triplet identity loss on the decoded predicted x0.

anchor = the face in the image the UNet is denoising towards (x0 predicted from the
instance sample, decoded by the VAE), positive = the instance photo, negative = the
prior-class image; distance 1 - cos; margin 1.0 (PyTorch's default, as in the
reference); weighted by (1 - t/T)^2 so that only nearly clean predictions, whose faces
are meaningful, pull hard. The face crop is a differentiable similarity warp
(``grid_sample``) so the gradient reaches the LoRA weights; the landmarks that define
the warp come from a detector run on a detached copy. No face found: the term is
skipped for that sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facefoundry.faces.align import ARCFACE_TEMPLATE

ALIGNED = 112


def timestep_weights(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """(1 - t/T)^2: 1 for clean images, ~0 for pure noise."""
    return (1.0 - timesteps.float() / num_train_timesteps) ** 2


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Per-sample max(d(a, p) - d(a, n) + margin, 0) with d = 1 - cos."""
    return torch.clamp(
        cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin, min=0.0
    )


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) mapping ``source`` points onto
    ``target``: a 2 x 3 matrix, as insightface's alignment estimates it."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    cov = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - scale * rotation @ mu_s
    return matrix


def warp_to_template(
    images: torch.Tensor, matrices: torch.Tensor, size: int = ALIGNED
) -> torch.Tensor:
    """Differentiable ``cv2.warpAffine``: images (B, C, H, W) and 2 x 3 pixel matrices
    (image -> aligned crop) -> (B, C, size, size), zeros outside the image."""
    batch, _, height, width = images.shape
    full = torch.zeros(batch, 3, 3, dtype=torch.float64)
    full[:, :2] = matrices.double().cpu()
    full[:, 2, 2] = 1
    inverse = torch.linalg.inv(full)  # crop pixel -> image pixel
    half = size / 2.0
    from_out = torch.tensor([[half, 0, half - 0.5], [0, half, half - 0.5], [0, 0, 1]]).double()
    to_in = torch.tensor(
        [[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]]
    ).double()
    theta = (to_in @ inverse @ from_out)[:, :2].to(images.device, images.dtype)
    grid = F.affine_grid(theta, (batch, images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def aligned_matrix(resolution: int, size: int = ALIGNED) -> np.ndarray:
    """For images that are already template-aligned at ``resolution``: a plain rescale."""
    scale = size / resolution
    return np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])


def locate_faces(images: torch.Tensor, mode: str, detector=None) -> list[np.ndarray | None]:
    """A 2 x 3 alignment matrix per image ([-1, 1] tensors), or None where no face is
    found. ``mode="aligned"`` trusts that the images are already aligned."""
    resolution = images.shape[-1]
    if mode == "aligned":
        return [aligned_matrix(resolution) for _ in range(len(images))]
    from facefoundry.faces.detect import select_face

    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    matrices: list[np.ndarray | None] = []
    for image in pixels:
        face = select_face(detector.detect(np.ascontiguousarray(image)), image.shape, "largest")
        matrices.append(
            None if face is None else similarity_matrix(face.landmarks, ARCFACE_TEMPLATE)
        )
    return matrices


def embed_crops(identity_model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Identity embeddings (unit vectors) of [-1, 1] aligned crops, gradient kept."""
    return F.normalize(identity_model(crops.float()), dim=-1)


class SFaceIdentity(torch.nn.Module):
    """The differentiable torch SFace (``recognition.sface_torch``) as a triplet-loss
    identity network: [-1, 1] aligned 112 px crops -> raw 128-d features. Frozen."""

    def __init__(self):
        super().__init__()
        from facefoundry.generators.idiff_face.identity_loss import load_identity_recognizer

        self.recognizer = load_identity_recognizer()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        from facefoundry.recognition.sface_torch import preprocess_tensor

        return self.recognizer(preprocess_tensor((crops.float() + 1.0) * 127.5))
