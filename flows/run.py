"""`factory run`, `factory runs`, `factory schedule`, `factory serve`: the Prefect flow.

Registered on `flows.cli.app` by importing this module (flows/cli.py does).
"""
