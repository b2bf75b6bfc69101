"""The compare stage (stage.py): every trial of a sweep side by side, and the one export takes.

comparison.py ranks and summarises trials; report.py renders comparison.html. Only compare uses them.
"""
