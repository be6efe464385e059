"""The bottom layer: errors, tensor shapes, input checks, devices and seed streams, safe files.

Nothing here knows about processes, networks or solvers; every other layer may import it.
"""
