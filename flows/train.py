"""`factory train sft|distill|grpo`: launch the trainer's recipes (torchrun when asked).

Registered on `flows.cli.app` by importing this module (flows/cli.py does).
"""
