"""DuckDB side of the pipeline: short-lived connections, Parquet staging and the merge/replace writer.

``connection`` opens DuckDB files (waiting for another process's lock), ``writer`` loads staged
Parquet files into a table in one transaction (upsert or atomic swap).
"""
