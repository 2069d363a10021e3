"""Dataset converters to verl's multimodal parquet (see docs/data.md)."""
