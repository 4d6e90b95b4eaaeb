"""facefoundry generators package."""
