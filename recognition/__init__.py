"""recognition: training face recognizers (arcface_torch-style backbones, margin heads,
augmentation, the trainer and ONNX export).

``evaluation/`` keeps the verification protocol that judges them; generators that need
a differentiable identity network import it from here.
"""

if __name__ != "facefoundry.recognition":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.recognition: import that")
