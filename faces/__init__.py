"""faces: detection, five-point alignment and identity embedders shared by every stage.

Conventions: images are RGB uint8 H x W x 3; aligned faces are 112 x 112 on the
ArcFace template; embeddings are float32 unit vectors compared by cosine.
"""

if __name__ != "facefoundry.faces":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.faces: import that")

from facefoundry._lazy import lazy_exports

_EXPORTS = {
    "Partition": "embed_stage",
    "embed_partition": "embed_stage",
    "embed_partitions": "embed_stage",
    "ALIGNED_SIZE": "align",
    "ARCFACE_TEMPLATE": "align",
    "align_face": "align",
    "Detection": "detect",
    "Detector": "detect",
    "get_detector": "detect",
    "select_face": "detect",
    "EMBEDDER_HELP": "specs",
    "Embedder": "embedders",
    "get_embedder": "embedders",
    "l2_normalise": "embedders",
    "FaceImageError": "io",
    "decode_image": "io",
    "load_image": "io",
    "ModelFileError": "models",
    "FaceBatchResult": "pipeline",
    "FaceOutcome": "pipeline",
    "process_images": "pipeline",
    "process_images_parallel": "pipeline",
    "result_to_table": "pipeline",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
