"""Prefect flows and tasks, the `factory` CLI and reports: the only layer that orders stages
and the only one that imports Prefect."""
