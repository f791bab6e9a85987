"""Foundation tests: plugin discovery, selection, configuration, hook specs and the docs."""
