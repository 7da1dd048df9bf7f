"""kling-batch: render batches of Kling O3 videos from manifests kept in version control."""

__version__ = "0.1.0"
