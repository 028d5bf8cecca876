"""The trainer's helpers, one concept per module; train.py wires them together top to bottom
(see ``model/__init__.py`` for the list)."""
