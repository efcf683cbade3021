"""The I/O layer: where shard folders live (local, s3://, gs://, http(s)://), the node cache, uploads."""
