"""A jitted recurrent (GRU) PPO behaviour policy that records every transition, for tasks that need memory.

The MLP PPO of ``dtjax.data.ppo`` sees one frame. In MiniGrid Memory the object that decides the
turn at the junction is seen only in the start room, so a Markov policy cannot beat a coin flip
there. This is PureJaxRL's ``ppo_rnn.py`` (luchris429/purejaxrl) adapted to dtjax: a shared
embedding, a GRU scanned over time whose hidden state is reset to zeros on the first step of every
episode, and actor and critic heads on the GRU's output. Minibatches are whole env sequences
(num_steps long) with the hidden state each env had at the start of the rollout, so the PPO
epochs re-run the recurrence exactly as the rollout did. (The original's behaviour policy for
MemoryDT was an LSTM PPO, BabyAI's ``TrajectoryLSTM``; reference doc §6.)

It records and returns exactly what ``dtjax.data.ppo`` does (``make_train(cfg, env, env_params)
-> (train, network)``, ``train(key)`` -> params, snapshots, transitions, metrics;
``make_rollout`` for the mix), so ``dtjax.data.collect`` picks one or the other by
``PPOConfig.arch`` and the store and the sampler see no difference. Termination vs truncation
as in ``dtjax.data.ppo`` (``gae`` is shared): at a truncation GAE bootstraps from the critic's
value of the final observation, read with the hidden state after the last step of the episode.

Snapshots are kept in a fixed buffer in the scan carry (the per-update params of a GRU on one-hot
views are ~1 MB: stacking all of them, as ``dtjax.data.ppo`` does, would not fit long runs).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dtjax.config import PPOConfig
from dtjax.data.ppo import Transition, gae, mix_rollout, ppo_terms, snapshot_updates, update_record


class ScannedGRU(nn.Module):
    """A GRU cell scanned over a leading time axis, its carry reset to zeros where ``resets``.

    ``__call__(h (E, H), (x (T, E, D), resets (T, E) bool)) -> (h' (E, H), y (T, E, H))``: at step
    t the carry is zeroed first if ``resets[t]`` (the input is an episode's first observation).
    """

    hidden: int

    @functools.partial(nn.scan, variable_broadcast="params", in_axes=0, out_axes=0, split_rngs={"params": False})
    @nn.compact
    def __call__(self, h, xs):
        x, reset = xs
        h = jnp.where(reset[:, None], jnp.zeros_like(h), h)
        h, y = nn.GRUCell(features=self.hidden)(h, x)
        return h, y


class ActorCriticRNN(nn.Module):
    """Embedding (Dense + ReLU) -> GRU -> separate actor and critic heads (Dense + ReLU -> out) on
    the GRU's output and the embedding, orthogonal init as PureJaxRL (actor output gain 0.01, critic 1).

    ``__call__(h (E, H), obs (T, E, *obs_shape), resets (T, E) bool)`` -> ``(h' (E, H), logits
    (T, E, n_actions), value (T, E))``. ``initial_state(E)`` is the zero carry.
    """

    n_actions: int = 3
    hidden: int = 64

    @nn.compact
    def __call__(self, h, obs, resets):
        orth = nn.initializers.orthogonal
        x = obs.reshape(obs.shape[:2] + (-1,)).astype(jnp.float32)
        x = nn.relu(nn.Dense(self.hidden, kernel_init=orth(np.sqrt(2)))(x))
        h, y = ScannedGRU(self.hidden)(h, (x, resets))
        # The heads see the GRU's output and, beside it, this step's embedding: Memory's decision
        # is an XOR of the remembered object and the layout seen now, which the heads' ReLU layer
        # can form from the two (without the skip, the GRU must pass the view through as well).
        y = jnp.concatenate([y, x], -1)
        a = nn.relu(nn.Dense(self.hidden, kernel_init=orth(2.0))(y))
        logits = nn.Dense(self.n_actions, kernel_init=orth(0.01))(a)
        v = nn.relu(nn.Dense(self.hidden, kernel_init=orth(2.0))(y))
        value = nn.Dense(1, kernel_init=orth(1.0))(v)[..., 0]
        return h, logits, value

    def initial_state(self, n: int) -> jax.Array:
        return jnp.zeros((n, self.hidden), jnp.float32)


def rnn_ppo_loss(params, network, h0, batch, cfg: PPOConfig, ent_coef):
    """Clipped surrogate + value loss - entropy bonus over whole sequences (``dtjax.data.ppo.ppo_loss``
    with the recurrence re-run from each env's rollout-start carry ``h0`` (M, H)).

    ``batch`` = (Transition (T, M, ...), advantages (T, M), targets (T, M)). Returns (loss, (pg, v, entropy)).
    """
    traj, adv, targets = batch
    _, logits, value = network.apply(params, h0, traj.obs, traj.first)
    return ppo_terms(logits, value, traj, adv, targets, cfg, ent_coef)


SELECT_ENVS, SELECT_STEPS = 64, 100  # held-out greedy episodes that pick the best of a population (~6400 env steps each)


def make_train(cfg: PPOConfig, env, env_params):
    """Build ``(train, network)`` for ``cfg`` (``cfg.arch == "gru"``); ``train(key)`` returns the
    dict of ``dtjax.data.ppo.make_train`` (params, snapshots, transitions, metrics): one run
    (``train_best_of`` runs a population)."""
    network = ActorCriticRNN(n_actions=env.num_actions, hidden=cfg.hidden)
    return _make_train_one(cfg, env, env_params, network), network


def train_best_of(cfg: PPOConfig, env, env_params, key: jax.Array):
    """``cfg.population`` runs (keys ``split(split(key)[0], N)``), one after another through one
    compiled ``train``; each is scored by ``greedy_score`` on the same held-out episodes (key
    ``split(key)[1]``) and the best is kept (best-of-N selection). Returns ``(out, network)``:
    ``out`` is the best run's ``train`` dict plus ``population_score`` (N,) (mean greedy return per
    ended episode) and ``population_success`` (N,) (the fraction of those that reached the goal).

    Sequential, not vmapped: one program holding the vmapped runs and the scoring rollout hung in
    XLA's CPU runtime (all threads waiting, 2 of 4 tries on a loaded 2-core machine); the single
    run never did. Only the best run's transitions are kept in memory."""
    train, network = make_train(cfg, env, env_params)
    run = jax.jit(train)
    score = jax.jit(functools.partial(greedy_score, make_rollout(env, env_params, network, SELECT_ENVS, SELECT_STEPS)))
    k_pop, k_select = jax.random.split(key)
    scores, successes, best = [], [], None
    for k in jax.random.split(k_pop, cfg.population):
        out = jax.block_until_ready(run(k))
        s, success = (float(x) for x in score(out["params"], k_select))
        if best is None or s > max(scores):
            best = out
        scores.append(s)
        successes.append(success)
        del out
    return {**best, "population_score": np.asarray(scores), "population_success": np.asarray(successes)}, network


def greedy_score(rollout, params, key) -> tuple[jax.Array, jax.Array]:
    """(mean return, success rate) per ended episode of the greedy policy ``params`` in ``rollout``
    (a ``make_rollout`` of E envs): each env runs whole episodes from resets drawn with ``key``.
    Greedy is sampling at temperature 1e-6 (argmax up to exact ties)."""
    E = SELECT_ENVS
    rec = rollout(key, jax.tree.map(lambda x: x[None], params), jnp.zeros(E, jnp.int32), jnp.zeros(E, jnp.float32),
                  jnp.zeros(E, jnp.int32), None, None, jnp.full((E,), 1e-6, jnp.float32))
    ended = rec["terminated"] | rec["truncated"]
    n = jnp.maximum(ended.sum(), 1)
    return (rec["reward"] * ended).sum() / n, (ended & (rec["reward"] > 0)).sum() / n


def _make_train_one(cfg: PPOConfig, env, env_params, network):
    """One recurrent PPO run: ``train(key)`` -> params, snapshots, transitions, metrics."""
    n_updates, E, T = cfg.num_updates, cfg.num_envs, cfg.num_steps
    mb_envs = E // cfg.num_minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, n_updates * cfg.update_epochs * cfg.num_minibatches) if cfg.anneal_lr else cfg.lr
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))
    ent_schedule = optax.linear_schedule(cfg.ent_coef, cfg.ent_coef_end, max(n_updates - 1, 1))
    snap_idx = jnp.asarray(snapshot_updates(cfg))
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def train(key):
        # INIT
        k_init, k_reset, k_run = jax.random.split(key, 3)
        obs0 = jnp.zeros((1, E) + env.observation_shape(), jnp.uint8)
        params = network.init(k_init, network.initial_state(E), obs0, jnp.zeros((1, E), bool))
        opt_state = tx.init(params)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, E), env_params)
        h, first = network.initial_state(E), jnp.ones((E,), bool)
        snaps = jax.tree.map(lambda x: jnp.zeros((cfg.n_snapshots,) + x.shape, x.dtype), params)

        # ROLLOUT: T vmapped env steps under the current policy, the GRU carried across them
        def env_step(carry, step_key):
            params, obs, state, h, first = carry
            k_act, k_env = jax.random.split(step_key)
            h_next, logits, value = network.apply(params, h, obs[None], first[None])
            logits, value = logits[0], value[0]
            action = jax.random.categorical(k_act, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            nobs, nstate, reward, term, trunc, info = vstep(jax.random.split(k_env, E), state, action, env_params)
            # the final observation continues the same episode: the carry after this step, no reset
            _, _, final_value = network.apply(params, h_next, info["final_observation"][None], jnp.zeros((1, E), bool))
            t = Transition(state, action, reward, term, trunc, value, log_prob, obs, final_value[0], first)
            return (params, nobs, nstate, h_next, term | trunc), t

        # UPDATE: one rollout, GAE, then epochs of minibatch PPO steps over whole env sequences
        def update(carry, update_idx):
            params, opt_state, obs, state, h, first, snaps = carry
            k = jax.random.fold_in(k_run, update_idx)
            k_roll, k_perm = jax.random.split(k)
            h0 = h  # each env's carry at the rollout's start: the epochs re-run the GRU from it
            (_, obs, state, h, first), traj = jax.lax.scan(env_step, (params, obs, state, h, first), jax.random.split(k_roll, T))
            _, _, last_value = network.apply(params, h, obs[None], first[None])
            adv, targets = gae(traj, last_value[0], cfg.gamma, cfg.gae_lambda)
            ent_coef = ent_schedule(update_idx)

            # EPOCHS: shuffle the envs into minibatches of whole sequences, one Adam step each
            def epoch(carry, k_epoch):
                params, opt_state = carry
                perm = jax.random.permutation(k_epoch, E)

                def split_envs(x, axis):  # (.., E, ..) -> (NM, .., E/NM, ..) along `axis`
                    x = jnp.take(x, perm, axis=axis)
                    x = x.reshape(x.shape[:axis] + (cfg.num_minibatches, mb_envs) + x.shape[axis + 1:])
                    return jnp.moveaxis(x, axis, 0)

                mbs = (split_envs(h0, 0), jax.tree.map(lambda x: split_envs(x, 1), (traj, adv, targets)))

                def minibatch(carry, mb):
                    params, opt_state = carry
                    h0_mb, batch = mb
                    (loss, aux), grads = jax.value_and_grad(rnn_ppo_loss, has_aux=True)(params, network, h0_mb, batch, cfg, ent_coef)
                    updates, opt_state = tx.update(grads, opt_state, params)
                    return (optax.apply_updates(params, updates), opt_state), (loss, *aux)

                return jax.lax.scan(minibatch, (params, opt_state), mbs)

            (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(k_perm, cfg.update_epochs))

            # SNAPSHOTS: written into their slot at the chosen updates
            hit = snap_idx == update_idx
            slot = jnp.argmax(hit)
            snaps = jax.tree.map(lambda b, p: jnp.where(hit.any(), b.at[slot].set(p), b), snaps, params)

            # RECORD: the compact transitions and this update's metrics
            record, metrics = update_record(traj, losses)
            return (params, opt_state, obs, state, h, first, snaps), (record, metrics)

        (params, *_, snaps), (record, metrics) = jax.lax.scan(
            update, (params, opt_state, obs, state, h, first, snaps), jnp.arange(n_updates)
        )
        return {"params": params, "snapshots": snaps, "transitions": record, "metrics": metrics}

    return train


def make_rollout(env, env_params, network: ActorCriticRNN, num_envs: int, num_steps: int):
    """The recurrent twin of ``dtjax.data.ppo.make_rollout``: ``dtjax.data.ppo.mix_rollout`` (same
    arguments and record) with a GRU carry per param set and env ((P, E, H): P is small), reset at
    every episode start, so the env's own policy acts on its whole episode's history."""
    apply = jax.vmap(lambda p, h, o, f: network.apply(p, h, o[None], f[None])[:2], in_axes=(0, 0, None, None))

    def act(params, h, obs, first):
        h, logits = apply(params, h, obs, first)  # (P, E, H), (P, 1, E, A)
        return h, logits[:, 0]

    def init_carry(params):
        return jnp.zeros((jax.tree.leaves(params)[0].shape[0], num_envs, network.hidden), jnp.float32)

    return mix_rollout(env, env_params, act, init_carry, num_envs, num_steps)
