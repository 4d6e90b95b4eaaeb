"""facefoundry filters package."""
