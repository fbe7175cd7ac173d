"""Shared test helpers."""

import dataclasses

import numpy as np

from mestim.problem import prepare
from mestim.sources import InMemory
from mestim.sums import Kernel, plan


def closed_form_and_autodiff(stack, data, perturb=0.1, weights=None, seed=0):
    """The row sums of a stack at θ = init·(1 + perturb·noise) computed twice: with the blocks' closed-form chunk
    Jacobians, and with the same ψ by autodiff (the closed form hidden behind a plain function)."""
    problem = prepare(stack, data, weights=weights)
    autodiff = dataclasses.replace(problem.spec, blocks=tuple(
        dataclasses.replace(b, psi=lambda t, row, f=b.psi, **up: f(t, row, **up)) for b in problem.spec.blocks))
    rng = np.random.default_rng(seed)
    theta = problem.init * (1 + perturb * rng.standard_normal(problem.init.size)) + perturb * 0.1
    every = plan(problem.spec, jacobian=tuple(b.name for b in problem.spec.blocks))
    sums = [InMemory(Kernel(spec, 256), problem.used, problem.w).sums(theta, every)
            for spec in (problem.spec, autodiff)]
    return problem, sums[0], sums[1]
