"""facefoundry flows package."""

if __name__ != "facefoundry.flows":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.flows: import that")
