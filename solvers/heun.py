"""Heun's second-order method on the probability-flow ODE dx/dt = f·x − ½g²·s
(Karras et al. 2022, Algorithm 1, without churn)."""
from __future__ import annotations


def heun(prob, x):
    """d = v(x, t_i);  x̃ = x − d·Δt;  x ← x − ½(d + v(x̃, t_{i+1}))·Δt.
    A step that lands on σ = 0 keeps the Euler value (the score is undefined there)."""
    for i in range(prob.K):
        dt = prob.t[i] - prob.t[i + 1]
        d = prob.pf_velocity(x, i)
        x_euler = x - d * dt
        if prob.sigma[i + 1] > 0:
            x = x - 0.5 * (d + prob.pf_velocity(x_euler, i + 1)) * dt
        else:
            x = x_euler
        prob.done(i, x)
    return x


def euler(prob, x):
    """Euler's method on the probability-flow ODE: x ← x − v(x, t_i)·Δt (first order)."""
    for i in range(prob.K):
        x = x - prob.pf_velocity(x, i) * (prob.t[i] - prob.t[i + 1])
        prob.done(i, x)
    return x
