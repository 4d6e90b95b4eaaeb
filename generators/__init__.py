"""facefoundry generators package."""

if __name__ != "facefoundry.generators":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.generators: import that")
