"""ID-Booth (Tomasevic et al., FG 2025): one LoRA per identity on a Stable Diffusion-family
pipeline, DreamBooth with prior preservation plus a triplet identity loss, then
prompt-controlled variations (pose, background, expression, lighting) of each identity."""
