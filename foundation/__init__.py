"""The foundation layer: errors, file I/O, checkpoints, seeding, configs, distributed helpers, plotting.

It imports nothing else of this project; every other package (prompters/, models/, trainers/, fixtures/) and paths.py
may import it.
"""
