"""facefoundry flows package."""
