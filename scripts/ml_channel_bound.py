#!/usr/bin/env python3
"""How often can anyone pick the simulator's best channel from 60 days of history?

Mirrors `src/ml/simulate.rs` for users who receive both channels: base open rates email
U(0.1, 0.5) and push U(0.05, 0.45), deliveries on 35% (email) and 25% (push) of days at a uniform
local hour 07:00-22:59, opened with probability base x (0.2 + 0.8 x curve(hour)), the curve one
evening/lunch/morning peak or the bimodal commute + evening shape. The "oracle" knows each user's
curve and both priors exactly and picks the channel with the higher posterior probability of
being best given the user's opens: an upper bound for any model of the history.

Usage: python3 scripts/ml_channel_bound.py [users] [days]   (needs numpy)
Result at 20,000 users x 60 days, seed 1: about 0.70 (always email: 0.62).
"""
import sys

import numpy as np

users = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
days = int(sys.argv[2]) if len(sys.argv) > 2 else 60
rng = np.random.default_rng(1)


def curves(n):
    """Engagement curve over 24 local hours (weekday), scaled to a top of 1, per user."""
    hours = np.arange(24) + 0.5
    profile = rng.random(n)
    out = np.zeros((n, 24))
    for i in range(n):
        if profile[i] < 0.35:
            peaks = [(8 + rng.normal() * 0.5, 0.75, 1.0), (20 + rng.normal(), 1.0, 0.8 + 0.4 * rng.random())]
        else:
            centre = 20.5 if profile[i] < 0.6 else 12.5 if profile[i] < 0.8 else 8.5
            peaks = [(centre + rng.normal(), 1.0, 1.0)]
        c = np.full(24, 0.05)
        for h, w, weight in peaks:
            d = np.abs(hours - h)
            d = np.minimum(d, 24 - d)
            c += weight * np.exp(-d * d / (2 * w * w))
        out[i] = c / c.max()
    return out


curve = curves(users)
email = 0.1 + 0.4 * rng.random(users)
push = 0.05 + 0.4 * rng.random(users)
grid_e = np.linspace(0.1, 0.5, 81)
grid_p = np.linspace(0.05, 0.45, 81)


def log_likelihood(base, rate, grid):
    """Draw one channel's history and return log P(history | base = g) for each grid value."""
    ll = np.zeros((users, grid.size))
    for _ in range(days):
        sent = rng.random(users) < rate
        hour = rng.integers(7, 23, users)
        m = 0.2 + 0.8 * curve[np.arange(users), hour]
        opened = rng.random(users) < base * m
        q = np.clip(grid[None, :] * m[:, None], 1e-9, 1 - 1e-9)
        ll += np.where(sent[:, None], np.where(opened[:, None], np.log(q), np.log(1 - q)), 0.0)
    return ll


def posterior(ll):
    p = np.exp(ll - ll.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


pe = posterior(log_likelihood(email, 0.35, grid_e))
pp = posterior(log_likelihood(push, 0.25, grid_p))
email_better = (grid_e[:, None] >= grid_p[None, :]).astype(float)
p_email_best = np.einsum("ni,ij,nj->n", pe, email_better, pp)
truth_email = email >= push
oracle = ((p_email_best >= 0.5) == truth_email).mean()
print(f"{users} users x {days} days: oracle picks the best channel for {oracle:.3}; always email {truth_email.mean():.3}")
