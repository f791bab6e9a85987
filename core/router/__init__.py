"""Data parallelism's router: which engine replica serves each request (cache_aware.py), from an
approximate picture of each replica's prefix cache (approx_tree.py)."""
