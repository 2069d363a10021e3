"""Dataset converters to verl's multimodal parquet (see README, *Preparing data*)."""
