"""WithAnyone-style multi-identity generator: K identities per image, each routed by its box.

Identity embeddings become tokens (``identity_tokens``); an added cross-attention term
(``attention``) lets each spatial position attend only to the tokens of the identity whose
layout box (``layout``) covers it. Training adds identity and InfoNCE losses on faces
cropped from the predicted clean image (``losses``, ``train``); ``generate`` samples group
images and crops them back into per-identity aligned faces for the dataset stages.
"""
