"""IDiff-Face: identity-conditioned diffusion (model, trainer, samplers, pipeline, stage)."""
