"""Code shared by the dispatcher, the agents and the bus: names, errors, settings, models.

Nothing in this package does I/O at import time.
"""
