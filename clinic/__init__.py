"""clinic: the receiving side of edge — ingest hub Bundles into PostgreSQL without loss."""

__version__ = "0.1.0"
