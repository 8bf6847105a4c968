"""`factory report`: a self-contained HTML page of a run, a dataset, evals and training curves.

Registered on `flows.cli.app` by importing this module (flows/cli.py does).
"""
