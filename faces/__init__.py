"""faces: detection, five-point alignment and identity embedders shared by every stage.

Conventions: images are RGB uint8 H x W x 3; aligned faces are 112 x 112 on the
ArcFace template; embeddings are float32 unit vectors compared by cosine.
"""

if __name__ != "facefoundry.faces":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.faces: import that")

from facefoundry.faces.align import ALIGNED_SIZE, ARCFACE_TEMPLATE, align_face
from facefoundry.faces.detect import Detection, Detector, get_detector, select_face
from facefoundry.faces.embedders import EMBEDDER_HELP, Embedder, get_embedder, l2_normalise
from facefoundry.faces.io import FaceImageError, decode_image, load_image
from facefoundry.faces.models import ModelFileError
from facefoundry.faces.pipeline import (
    FaceBatchResult,
    FaceOutcome,
    process_images,
    process_images_parallel,
    result_to_table,
)

__all__ = [
    "ALIGNED_SIZE",
    "ARCFACE_TEMPLATE",
    "EMBEDDER_HELP",
    "Detection",
    "Detector",
    "Embedder",
    "FaceBatchResult",
    "FaceImageError",
    "FaceOutcome",
    "ModelFileError",
    "align_face",
    "decode_image",
    "get_detector",
    "get_embedder",
    "l2_normalise",
    "load_image",
    "process_images",
    "process_images_parallel",
    "result_to_table",
    "select_face",
]
