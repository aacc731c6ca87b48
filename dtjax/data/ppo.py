"""A jitted PPO behaviour policy that records every transition it makes (PureJaxRL style).

``make_train(cfg, env, env_params)`` returns ``(train, network)``; ``train(key)`` is the whole
run (rollouts, GAE, PPO epochs) as one jittable function of nested ``lax.scan``s over vmapped
envs, like luchris429/purejaxrl ``ppo.py``. As the original project did, every transition of
every rollout during training is kept, from the first random policy to the last, because a
spread of returns is what a Decision Transformer needs.

Recorded per step (compact; the observation is regenerated exactly by ``env.observe``): the
state the agent acted in (agent_pos, agent_dir, obstacles, time), the action, the reward, and
``terminated`` / ``truncated``.

Termination vs truncation. gymnax 1.x returns them separately, and we use both. At a
termination (goal or crash) the return after the step is 0, so GAE does not bootstrap. At a
truncation (``time == max_steps`` without a terminal event) the episode is cut by the time
limit, which the observation does not show, so the MDP would have continued: GAE bootstraps
with the critic's value of the *final* state (``info["final_observation"]``, before the
auto-reset), and does not carry advantages across the boundary. PureJaxRL's single ``done``
would treat timeouts as terminal and teach the critic that standing still for 300 steps is
worth 0 from states that look like any other. (Timeouts are rare once the policy learns; the
choice matters mostly early on.)

``make_rollout`` runs a trained (or the uniform random) policy with epsilon-random actions, and
optionally branches into uniform-random play at a random step, waits, or plays blind to the
obstacles (see DataMixConfig).
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
    original's `src/ppo/agent.py` (orthogonal init, sqrt(2) gain; actor head 0.01, critic 1).

    ``obs`` (..., H, W, C) uint8 -> (logits (..., n_actions), value (...)).
    """

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
    """One vmapped env step of a PPO rollout; every leaf is (num_envs, ...) (time-major when stacked)."""

    state: Any  # envs.EnvState the action was taken in
    action: jax.Array  # (E,) int32
    reward: jax.Array  # (E,) float32
    terminated: jax.Array  # (E,) bool
    truncated: jax.Array  # (E,) bool
    value: jax.Array  # (E,) critic value of `obs`
    log_prob: jax.Array  # (E,) log pi(action | obs) under the rollout policy
    obs: jax.Array  # (E, H, W, C) the observation acted on
    next_value: jax.Array  # (E,) value of the state reached before any auto-reset (truncation bootstrap)
    first: Any = None  # (E,) bool, recurrent rollouts only (dtjax.data.ppo_rnn): `obs` starts its episode


def gae(traj: Transition, last_value: jax.Array, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a (T, E) rollout, gymnax 1.x style.

    ``last_value`` (E,): value of the observation after the last step. Returns (advantages,
    value targets), both (T, E). A termination stops bootstrapping; a truncation bootstraps from
    the final state's value (``traj.next_value``); neither carries advantages across episodes.
    """

    def step(carry, t):
        next_adv, next_value = carry
        # After an episode end the carried value belongs to the next episode's reset state; at a
        # truncation bootstrap from the final state instead, at a termination not at all.
        boot = jnp.where(t.truncated, t.next_value, next_value) * (1.0 - t.terminated)
        delta = t.reward + gamma * boot - t.value
        cont = 1.0 - (t.terminated | t.truncated)
        adv = delta + gamma * lam * cont * next_adv
        return (adv, t.value), adv

    _, adv = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
    return adv, adv + traj.value


def ppo_loss(params, network, batch, cfg: PPOConfig, ent_coef):
    """Clipped surrogate + value loss - entropy bonus, advantages normalised per minibatch.

    ``batch`` = (Transition (M, ...), advantages (M,), targets (M,)); ``ent_coef``: the entropy
    weight now (it may be annealed). Returns (loss, (pg, v, entropy)).
    """
    traj, adv, targets = batch
    logits, value = network.apply(params, traj.obs)
    return ppo_terms(logits, value, traj, adv, targets, cfg, ent_coef)


def ppo_terms(logits, value, traj: Transition, adv, targets, cfg: PPOConfig, ent_coef):
    """The PPO objective from the policy's ``logits`` and ``value`` on ``traj`` (any leading shape):
    ``ppo_loss`` here, and ``dtjax.data.ppo_rnn`` with the recurrence re-run. Returns (loss, (pg, v, entropy))."""
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, traj.action[..., None], -1)[..., 0]
    ratio = jnp.exp(logp - traj.log_prob)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
    v_loss = 0.5 * ((value - targets) ** 2).mean()
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
    total = pg + cfg.vf_coef * v_loss - ent_coef * entropy
    return total, (pg, v_loss, entropy)


def update_record(traj: Transition, losses) -> tuple[dict, dict]:
    """What one PPO update keeps (both PPOs): the compact transitions (state, action, reward,
    terminated, truncated) and its metrics (mean return of the episodes ended in the rollout, their
    count, the mean loss and entropy over the epochs' minibatches; ``losses`` as ``ppo_terms``)."""
    ended = traj.terminated | traj.truncated
    n_ended = ended.sum()
    metrics = {
        "mean_return": jnp.where(n_ended > 0, (traj.reward * ended).sum() / jnp.maximum(n_ended, 1), jnp.nan),
        "episodes": n_ended,
        "loss": losses[0].mean(),
        "entropy": losses[3].mean(),
    }
    record = {"state": traj.state, "action": traj.action, "reward": traj.reward,
              "terminated": traj.terminated, "truncated": traj.truncated}
    return record, metrics


def snapshot_updates(cfg: PPOConfig) -> np.ndarray:
    """The update indices whose params become the snapshots: evenly spaced, the last the final one."""
    n_updates = cfg.num_updates
    snap_every = max(1, n_updates // max(cfg.n_snapshots, 1))
    idx = np.minimum(np.arange(1, cfg.n_snapshots + 1) * snap_every - 1, n_updates - 1)
    idx[-1] = n_updates - 1
    return idx


def make_train(cfg: PPOConfig, env, env_params):
    """Build ``(train, network)`` for ``cfg``; jit ``train`` (or vmap it over seeds) as you like.

    ``train(key)`` returns a dict:
    - ``params``: the final policy;
    - ``snapshots``: ``cfg.n_snapshots`` param sets stacked on a leading axis, evenly spaced over
      training, the last one the final policy;
    - ``transitions``: every step, leaves shaped (num_updates, num_steps, num_envs, ...):
      ``state`` (envs.EnvState acted in), ``action``, ``reward``, ``terminated``, ``truncated``;
      each env's timeline continues across updates;
    - ``metrics``: per update, ``mean_return`` of the episodes that ended in it (NaN if none;
      rewards are terminal-only in Dynamic Obstacles, so the last reward is the return),
      ``episodes``, ``loss``, ``entropy``.
    """
    network = ActorCritic(n_actions=env.num_actions, hidden=cfg.hidden)
    n_updates = cfg.num_updates
    batch_size = cfg.num_envs * cfg.num_steps
    mb_size = batch_size // cfg.num_minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, n_updates * cfg.update_epochs * cfg.num_minibatches) if cfg.anneal_lr else cfg.lr
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))
    # Entropy bonus: linear from ent_coef (explore: find the goal before settling on turning in
    # place, the safe 0-return behaviour) to ent_coef_end (a sharp final policy for the data).
    ent_schedule = optax.linear_schedule(cfg.ent_coef, cfg.ent_coef_end, max(n_updates - 1, 1))
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def train(key):
        # INIT
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
            ent_coef = ent_schedule(update_idx)

            # EPOCHS: shuffle the (T * E) batch into minibatches, one Adam step each
            def epoch(carry, k_epoch):
                params, opt_state = carry
                flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), (traj, adv, targets))
                perm = jax.random.permutation(k_epoch, batch_size)
                mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, mb_size) + x.shape[1:]), flat)

                def minibatch(carry, mb):
                    params, opt_state = carry
                    (loss, aux), grads = jax.value_and_grad(ppo_loss, has_aux=True)(params, network, mb, cfg, ent_coef)
                    updates, opt_state = tx.update(grads, opt_state, params)
                    return (optax.apply_updates(params, updates), opt_state), (loss, *aux)

                return jax.lax.scan(minibatch, (params, opt_state), mbs)

            (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(k_perm, cfg.update_epochs))

            # RECORD: the compact transitions and this update's metrics
            record, metrics = update_record(traj, losses)
            return (params, opt_state, obs, state), (record, metrics, params)

        (params, opt_state, _, _), (record, metrics, all_params) = jax.lax.scan(
            update, (params, opt_state, obs, state), jnp.arange(n_updates)
        )
        # SNAPSHOTS: evenly spaced param sets (the per-update params are small: ~30k floats)
        snapshots = jax.tree.map(lambda x: x[snapshot_updates(cfg)], all_params)
        return {"params": params, "snapshots": snapshots, "transitions": record, "metrics": metrics}

    return train, network


def make_rollout(env, env_params, network, num_envs: int, num_steps: int):
    """The MLP policy's mix rollout: ``mix_rollout`` with ``network.apply`` on each step's observation."""

    def act(params, carry, obs, first):
        return carry, jax.vmap(lambda p: network.apply(p, obs)[0])(params)  # (P, E, A): P is small

    return mix_rollout(env, env_params, act, lambda params: (), num_envs, num_steps)


def blind_state(state):
    """``state`` with its obstacles moved off the grid (where every cell reads as wall, so none is
    drawn): what a policy blind to the balls sees. A family without obstacles is unchanged."""
    if not hasattr(state, "obstacles"):
        return state
    return state.replace(obstacles=jnp.full_like(state.obstacles, -1))


def mix_rollout(env, env_params, act, init_carry, num_envs: int, num_steps: int):
    """Build ``rollout(key, params, policy, eps, branch_steps, wait_steps=None, wait_from=None, temperature=None,
    blind=None) -> record``: many behaviour
    policies at once, one per env, in a single jittable scan (one compilation for a whole mix).

    The policy is ``act(params, carry, obs, first) -> (carry, logits (P, E, A))`` for all P param
    sets at once (``first``: (E,) bool, the step starts an episode), its carry starting as
    ``init_carry(params)``: ``()`` for the MLP, the GRU's hidden states for ``dtjax.data.ppo_rnn``.

    Args (E = num_envs):
      params: a stack of P param sets (leaves with a leading P axis), e.g. PPO snapshots.
      policy: (E,) int32, the param set each env follows; -1 = the uniform random policy.
      eps: (E,) float32, probability of a uniform random action instead of a policy sample.
      branch_steps: (E,) int32; if > 0, each episode of that env draws a branch step
        ``b ~ U{0, ..., branch_steps-1}`` at reset, follows its policy while ``time < b`` and acts
        uniformly at random from then on; 0 = never branch.
      wait_steps: (E,) int32 or None; if > 0, each episode of that env draws a wait
        ``w ~ U{0, ..., wait_steps-1}`` at reset and turns left in place (action 0, which never
        ends an episode) while ``time < w``, then follows its policy: slower successes, returns
        that fill [0, 1) (the goal reward falls with time); 0 / None = never wait.
      wait_from: (E,) int32 or None: the shortest wait, ``w ~ U{wait_from, ..., wait_steps-1}``
        (None = 0).
      temperature: (E,) float32 dividing the logits before sampling; None = 1 (the policy itself).
      blind: (E,) bool or None: the policy of that env sees the env without its obstacles
        (``blind_state``), so it walks its obstacle-free path and
        crashes when a ball is in the way: a behaviour that is a deterministic function of the
        state under greedy sampling, whose crash rate comes from the env's randomness (the balls'
        moves) alone. None = never blind.

    Returns ``record``, leaves time-major (num_steps, E, ...): ``state`` (acted in), ``action``,
    ``reward``, ``terminated``, ``truncated``, ``keep`` (the step is at or after its episode's
    branch point; always True for envs that never branch) and ``draw`` (int32: the episode's
    branch step or wait, 0 if neither: with the env's policy it names the behaviour that acted,
    see ``dtjax.data.relabel``). Envs auto-reset.
    """
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    vobserve = jax.vmap(lambda s: env.observe(blind_state(s), env_params))
    never = jnp.iinfo(jnp.int32).max
    env_idx = jnp.arange(num_envs)

    def rollout(key, params, policy, eps, branch_steps, wait_steps=None, wait_from=None, temperature=None, blind=None):
        wait_steps = jnp.zeros(num_envs, jnp.int32) if wait_steps is None else jnp.asarray(wait_steps, jnp.int32)
        wait_from = jnp.zeros(num_envs, jnp.int32) if wait_from is None else jnp.asarray(wait_from, jnp.int32)
        temperature = jnp.ones((num_envs,), jnp.float32) if temperature is None else temperature
        k_reset, k_branch, k_run = jax.random.split(key, 3)

        def draw(k):  # (branch step, wait) of a fresh episode in each env
            k_b, k_w = jax.random.split(k)
            b = jax.random.randint(k_b, (num_envs,), 0, jnp.maximum(branch_steps, 1))
            w = jax.random.randint(k_w, (num_envs,), wait_from, jnp.maximum(wait_steps, wait_from + 1))
            return jnp.where(branch_steps > 0, b, never), jnp.where(wait_steps > 0, w, 0)

        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), env_params)

        def step(carry, k):
            obs, state, pcarry, first, (branch, wait) = carry
            k_pol, k_eps, k_rand, k_env, k_b = jax.random.split(k, 5)
            if blind is not None:  # static: rollouts without blind envs pay nothing
                obs = jnp.where(blind.reshape((-1,) + (1,) * (obs.ndim - 1)), vobserve(state), obs)
            pcarry, logits = act(params, pcarry, obs, first)
            sampled = jax.random.categorical(k_pol, logits[jnp.maximum(policy, 0), env_idx] / temperature[:, None])
            rand = jax.random.randint(k_rand, (num_envs,), 0, env.num_actions)
            branched = state.time >= branch
            use_rand = (policy < 0) | (jax.random.uniform(k_eps, (num_envs,)) < eps) | branched
            action = jnp.where(state.time < wait, 0, jnp.where(use_rand, rand, sampled))
            nobs, nstate, reward, term, trunc, _ = vstep(jax.random.split(k_env, num_envs), state, action, env_params)
            fresh = draw(k_b)
            ended = term | trunc
            nbranch, nwait = jnp.where(ended, fresh[0], branch), jnp.where(ended, fresh[1], wait)
            keep = branched | (branch_steps <= 0)
            rec = {"state": state, "action": action, "reward": reward, "terminated": term, "truncated": trunc, "keep": keep,
                   "draw": jnp.where(branch_steps > 0, branch, wait).astype(jnp.int32)}
            return (nobs, nstate, pcarry, ended, (nbranch, nwait)), rec

        init = (obs, state, init_carry(params), jnp.ones((num_envs,), bool), draw(k_branch))
        _, rec = jax.lax.scan(step, init, jax.random.split(k_run, num_steps))
        return rec

    return rollout
