"""Prefect flows: one per stage, plus the parent `pipeline` that calls them as subflows.

Tasks are small and typed, pass Parquet part paths (never DataFrames or models), and
publish a markdown artifact per stage.
"""
