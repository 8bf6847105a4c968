"""`factory eval`: evaluate a student on a shipped benchmark with the factory's verifiers.

Registered on `flows.cli.app` by importing this module (flows/cli.py does).
"""
