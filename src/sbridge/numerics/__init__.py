"""Numerical methods on plain fields ``v(x, t)``: SDE/ODE integrators and time grids (:mod:`.integrators`), exact
likelihoods, divergences and path bounds (:mod:`.likelihood`). They know nothing about solvers."""
