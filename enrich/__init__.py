"""enrich: caption a streamed image dataset with a VLM on Ray, into a Delta table, exactly once.

Importing this package is light: Ray, vllm and torch are imported only where a run needs them.
"""

__version__ = "0.1.0"
