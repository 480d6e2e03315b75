"""The foundation layer: errors, file I/O, checkpoints, seeding, configs, distributed helpers, plotting.

It imports nothing of this project; models/, prompters/ and paths.py may import only this part of trainers/.
"""
