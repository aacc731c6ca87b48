"""A jitted PPO behaviour policy that records every transition it makes (PureJaxRL style).

``make_train(cfg, env, env_params)`` returns ``train(key)``: the whole run (rollouts, GAE, PPO
epochs) is one jitted function of nested ``lax.scan``s over vmapped envs. As the original
project did, every transition of every rollout during training is kept, from the first random
policy to the last, because a spread of returns is what a Decision Transformer needs.

Recorded per step (compact, the observation is regenerated exactly by ``env.observe``): the
state the agent acted in (agent_pos, agent_dir, obstacles, time), the action, the reward, and
``terminated`` / ``truncated``. gymnax 1.x returns them separately: GAE bootstraps through a
truncation with the value of the final state, and stops at a termination (PureJaxRL's single
``done`` would wrongly treat timeouts as terminal).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dtjax.config import PPOConfig


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (hidden-hidden tanh) on the flattened observation, as the
    original's `src/ppo/agent.py` (orthogonal init, sqrt(2) gain; actor head 0.01, critic 1)."""

    n_actions: int = 3
    hidden: int = 64

    @nn.compact
    def __call__(self, obs):
        x = obs.reshape(obs.shape[:-3] + (-1,)).astype(jnp.float32)
        orth = nn.initializers.orthogonal
        a = x
        for _ in range(2):
            a = nn.tanh(nn.Dense(self.hidden, kernel_init=orth(np.sqrt(2)))(a))
        logits = nn.Dense(self.n_actions, kernel_init=orth(0.01))(a)
        v = x
        for _ in range(2):
            v = nn.tanh(nn.Dense(self.hidden, kernel_init=orth(np.sqrt(2)))(v))
        value = nn.Dense(1, kernel_init=orth(1.0))(v)[..., 0]
        return logits, value


class Transition(NamedTuple):
    state: Any  # envs.EnvState the action was taken in
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    value: jax.Array
    log_prob: jax.Array
    obs: jax.Array
    next_value: jax.Array  # value of the state reached (before auto-reset), for truncation bootstraps


def gae(traj: Transition, last_value: jax.Array, gamma: float, lam: float):
    """Generalised advantage estimation over a (T, envs) rollout; returns (advantages, targets)."""

    def step(carry, t):
        next_adv, next_value = carry
        # After a truncation the next state is a reset: bootstrap from the final state's value.
        boot = jnp.where(t.truncated & ~t.terminated, t.next_value, next_value)
        nonterminal = 1.0 - t.terminated
        delta = t.reward + gamma * boot * nonterminal - t.value
        episode_end = t.terminated | t.truncated
        adv = delta + gamma * lam * nonterminal * (1.0 - t.truncated) * next_adv
        adv = jnp.where(episode_end & ~t.terminated, delta, adv)
        return (adv, t.value), adv

    _, adv = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
    return adv, adv + traj.value


def ppo_loss(params, network, batch, cfg: PPOConfig):
    """Clipped surrogate + value loss - entropy bonus, advantages normalised per minibatch."""
    traj, adv, targets = batch
    logits, value = network.apply(params, traj.obs)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, traj.action[..., None], -1)[..., 0]
    ratio = jnp.exp(logp - traj.log_prob)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
    v_loss = 0.5 * ((value - targets) ** 2).mean()
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
    total = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
    return total, (pg, v_loss, entropy)


def make_train(cfg: PPOConfig, env, env_params):
    """Build ``train(key) -> dict`` for ``cfg``; jit it (or vmap it over seeds) as you like.

    Returns a dict with ``params`` (final), ``snapshots`` (cfg.n_snapshots param sets, evenly
    spaced, the last one final), ``transitions`` (every step: arrays shaped
    (num_updates, num_steps, num_envs, ...)) and ``metrics`` (per update: mean episode return of
    episodes finished in the update, losses).
    """
    network = ActorCritic(n_actions=env.num_actions, hidden=cfg.hidden)
    n_updates = cfg.num_updates
    batch_size = cfg.num_envs * cfg.num_steps
    mb_size = batch_size // cfg.num_minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, n_updates * cfg.update_epochs * cfg.num_minibatches) if cfg.anneal_lr else cfg.lr
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))
    snap_every = max(1, n_updates // max(cfg.n_snapshots, 1))
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def train(key):
        k_init, k_reset, k_run = jax.random.split(key, 3)
        obs0 = jnp.zeros((1,) + env.observation_shape(), jnp.uint8)
        params = network.init(k_init, obs0)
        opt_state = tx.init(params)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, cfg.num_envs), env_params)

        # ROLLOUT: num_steps vmapped env steps under the current policy
        def env_step(carry, step_key):
            params, obs, state = carry
            k_act, k_env = jax.random.split(step_key)
            logits, value = network.apply(params, obs)
            action = jax.random.categorical(k_act, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            nobs, nstate, reward, term, trunc, info = vstep(jax.random.split(k_env, cfg.num_envs), state, action, env_params)
            _, final_value = network.apply(params, info["final_observation"])
            t = Transition(state, action, reward, term, trunc, value, log_prob, obs, final_value)
            return (params, nobs, nstate), t

        # UPDATE: one rollout, GAE, then epochs of minibatch PPO steps
        def update(carry, update_idx):
            params, opt_state, obs, state = carry
            k = jax.random.fold_in(k_run, update_idx)
            k_roll, k_perm = jax.random.split(k)
            (_, obs, state), traj = jax.lax.scan(env_step, (params, obs, state), jax.random.split(k_roll, cfg.num_steps))
            _, last_value = network.apply(params, obs)
            adv, targets = gae(traj, last_value, cfg.gamma, cfg.gae_lambda)

            def epoch(carry, k_epoch):
                params, opt_state = carry
                flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), (traj, adv, targets))
                perm = jax.random.permutation(k_epoch, batch_size)
                mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, mb_size) + x.shape[1:]), flat)

                def minibatch(carry, mb):
                    params, opt_state = carry
                    (loss, aux), grads = jax.value_and_grad(ppo_loss, has_aux=True)(params, network, mb, cfg)
                    updates, opt_state = tx.update(grads, opt_state, params)
                    return (optax.apply_updates(params, updates), opt_state), (loss, *aux)

                return jax.lax.scan(minibatch, (params, opt_state), mbs)

            (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(k_perm, cfg.update_epochs))
            ended = traj.terminated | traj.truncated
            n_ended = ended.sum()
            metrics = {
                "mean_return": jnp.where(n_ended > 0, (traj.reward * ended).sum() / jnp.maximum(n_ended, 1), jnp.nan),
                "episodes": n_ended,
                "loss": losses[0].mean(),
                "entropy": losses[3].mean(),
            }
            record = (traj.state, traj.action, traj.reward, traj.terminated, traj.truncated)
            return (params, opt_state, obs, state), (record, metrics, params)

        (params, opt_state, _, _), (record, metrics, all_params) = jax.lax.scan(
            update, (params, opt_state, obs, state), jnp.arange(n_updates)
        )
        snap_idx = jnp.minimum(jnp.arange(1, cfg.n_snapshots + 1) * snap_every - 1, n_updates - 1).at[-1].set(n_updates - 1)
        snapshots = jax.tree.map(lambda x: x[snap_idx], all_params)
        st, action, reward, term, trunc = record
        return {
            "params": params,
            "snapshots": snapshots,
            "transitions": {"state": st, "action": action, "reward": reward, "terminated": term, "truncated": trunc},
            "metrics": metrics,
        }

    return train, network


def make_rollout(env, env_params, network, num_envs: int, num_steps: int):
    """``rollout(key, params, eps) -> transitions`` (num_steps, num_envs, ...) of an epsilon-greedy-
    sampled policy: with probability eps a uniform random action, else a sample from the policy.
    ``params=None`` gives the uniform random policy."""
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(key, params, eps):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), env_params)

        def step(carry, k):
            obs, state = carry
            k_pol, k_eps, k_rand, k_env = jax.random.split(k, 4)
            rand = jax.random.randint(k_rand, (num_envs,), 0, env.num_actions)
            if params is None:
                action = rand
            else:
                logits, _ = network.apply(params, obs)
                action = jnp.where(jax.random.uniform(k_eps, (num_envs,)) < eps, rand, jax.random.categorical(k_pol, logits))
            nobs, nstate, reward, term, trunc, _ = vstep(jax.random.split(k_env, num_envs), state, action, env_params)
            return (nobs, nstate), {"state": state, "action": action, "reward": reward, "terminated": term, "truncated": trunc}

        _, rec = jax.lax.scan(step, (obs, state), jax.random.split(k_run, num_steps))
        return rec

    return rollout
