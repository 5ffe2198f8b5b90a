#!/usr/bin/env python3
"""How often can anyone pick the simulator's best channel from 60 days of history?

Mirrors `src/ml/simulate.rs` for users who receive both channels (mobile users with email and
push consent). Channel affinity: a user prefers push with a probability that depends on the
platform (ios 0.55, android 0.45) minus a plan shift (basic 0.1, pro 0.2); the preferred
channel's base open rate is U(0.3, 0.7) and the other channel's is U(0.1, 0.4) x that; a
share of 5% is near-indifferent: a common rate U(0.2, 0.6) times U(0.85, 1.15) per channel,
drawn independently. Deliveries go out on 35% (email) and 25% (push) of days at a uniform local
hour 07:00-22:59, opened with probability base x (0.2 + 0.8 x curve(hour)), the curve one
evening/lunch/morning peak or the bimodal commute + evening shape.

The "oracle" knows each user's curve, platform, plan and the joint prior of the two rates
exactly (a Monte Carlo histogram per platform and plan) and picks the channel with the higher
posterior probability of being best given the user's deliveries and opens: an upper bound for
any model of the history.

Usage: python3 scripts/ml_channel_bound.py [users] [days]   (needs numpy)
Result at 20,000 users x 60 days, seed 1: printed below the figures in docs/ml.md.
"""
import sys

import numpy as np

users = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
days = int(sys.argv[2]) if len(sys.argv) > 2 else 60
rng = np.random.default_rng(1)

PUSH_PREFERENCE = {"ios": 0.55, "android": 0.45}
PLAN_SHIFT = {"free": 0.0, "basic": 0.1, "pro": 0.2}
INDIFFERENT = 0.05


def draw_rates(n, platform, plan):
    """Base open rates (email, push) of n users of one platform and plan, as the simulator draws them."""
    prefers_push = rng.random(n) < PUSH_PREFERENCE[platform] - PLAN_SHIFT[plan]
    indifferent = rng.random(n) < INDIFFERENT
    preferred = rng.uniform(0.3, 0.7, n)
    other = preferred * rng.uniform(0.1, 0.4, n)
    email = np.where(prefers_push, other, preferred)
    push = np.where(prefers_push, preferred, other)
    common = rng.uniform(0.2, 0.6, n)
    email = np.where(indifferent, common * rng.uniform(0.85, 1.15, n), email)
    push = np.where(indifferent, common * rng.uniform(0.85, 1.15, n), push)
    return email, push


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


# Users with both channels are mobile: ios 0.35 and android 0.40 of all users; plans 60/30/10%.
platform = np.where(rng.random(users) < 0.35 / 0.75, "ios", "android")
plan = rng.choice(["free", "basic", "pro"], users, p=[0.6, 0.3, 0.1])
email = np.zeros(users)
push = np.zeros(users)
for pf in PUSH_PREFERENCE:
    for pl in PLAN_SHIFT:
        group = (platform == pf) & (plan == pl)
        email[group], push[group] = draw_rates(group.sum(), pf, pl)
curve = curves(users)

# The prior of (email, push) per platform and plan on a grid of bin centres.
edges = np.linspace(0.0, 0.72, 145)
grid = (edges[:-1] + edges[1:]) / 2
email_better = (grid[:, None] >= grid[None, :]).astype(float)
prior = {}
for pf in PUSH_PREFERENCE:
    for pl in PLAN_SHIFT:
        e, p = draw_rates(400_000, pf, pl)
        h, _, _ = np.histogram2d(e, p, bins=[edges, edges])
        prior[pf, pl] = h / h.sum()


def log_likelihood(base, rate):
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


def likelihood(ll):
    return np.exp(ll - ll.max(axis=1, keepdims=True))


le = likelihood(log_likelihood(email, 0.35))
lp = likelihood(log_likelihood(push, 0.25))
p_email_best = np.zeros(users)
for (pf, pl), joint in prior.items():
    g = (platform == pf) & (plan == pl)
    best = np.einsum("ni,ij,nj->n", le[g], joint * email_better, lp[g])
    total = np.einsum("ni,ij,nj->n", le[g], joint, lp[g])
    p_email_best[g] = best / np.maximum(total, 1e-300)
truth_email = email >= push
oracle = ((p_email_best >= 0.5) == truth_email).mean()
by_platform = ((platform == "ios") & ~truth_email).sum() / (platform == "ios").sum()
print(
    f"{users} users x {days} days: oracle picks the best channel for {oracle:.3}; "
    f"always email {truth_email.mean():.3}; push best for {by_platform:.3} of ios users"
)
