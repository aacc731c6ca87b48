"""Value relabelling: return-to-go labels from a learned value (issue 20; QDT, Yamagata et al. 2023).

A DT trained on realised returns-to-go copies, at a target R, whatever the data did before it
happened to get R; in a stochastic env that includes luck. Value relabelling replaces the
realised label by a learned estimate of the expected return-to-go.

QDT (Q-learning Decision Transformer) learns Q by conservative Q-learning (CQL) and relabels
each trajectory backwards, the relabelled return-to-go never below the value of the state:
``R_t = max(V(s_t), r_t + R_{t+1})`` from the last step (``R_{T+1} = 0``), so a trajectory that
passed through a state from which the data show a better continuation is labelled with that
better return (stitching). Here (``DataConfig.rtg_label``):

- ``"value_critic"``: QDT's rule with V the behaviour PPO's *final* critic, evaluated on every
  stored state at collection time (``value.npy`` in the store, ``critic_values``). The final
  critic, not the critic of the update that acted: it is the value of the best behaviour in the
  data (QDT wants the value of a better policy than the one that acted), and it is one function
  for every source (the random and wait rollouts have no critic of their own). It is PPO's
  discounted value (``ppo.gamma``) of the observation alone (no time), so it underestimates the
  undiscounted return by gamma^(steps left) and cannot see the time limit.
- ``"value_fitted"``: QDT's rule with V fitted offline on the dataset (``fit_q``): a Q network
  Q(s, t, a) regressed on the realised returns-to-go (Monte-Carlo, undiscounted, one jitted
  training loop) and V(s, t) = max_a Q(s, t, a) over the actions the data take in that state
  (discrete BCQ's filter, Fujimoto et al. 2019: a behaviour head pi(a | s, t) fitted alongside, and
  only actions with pi >= 0.3 of the likeliest count; an untaken action's Q is an unconstrained
  guess, which QDT's CQL penalty pushes down instead). Where this differs from QDT: no dynamic
  programming (no bootstrapping, so no multi-step stitching: V is one step of greedy improvement
  over the data's behaviour mix, where QDT's CQL estimates the optimal value), and the network
  sees the stored compact *state* (agent cell and direction, ball cells, the step count), the
  env's full Markov state, not the partial observation: the goal reward falls with time, so a
  value without time is wrong, and balls out of view decide crashes.
- ``"q_fitted"``: the issue's "RTG replaced by the expected return-to-go", made action-dependent:
  each step is labelled Q(s_t, t, a_t), the mean return the data got after taking that action in
  that state at that time. (Labelling with V(s_t, t) alone would give every action of a state the
  same label, and the DT could no longer be steered by the target.)

All three keep the label's meaning (an undiscounted return in the env's return range); the
relabelling runs once before training, over the whole dataset.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dtjax.data import store

LABELS = ("value_critic", "value_fitted", "q_fitted")  # the rtg_label values this module computes


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The offline Q fit (small: the dataset is 1-2M steps of a tiny state)."""

    steps: int = 3000  # Adam steps (minibatches), one jitted lax.scan
    batch_size: int = 1024  # rows per minibatch, drawn uniformly over all steps
    hidden: int = 128  # width of the two ReLU layers
    lr: float = 3e-3  # Adam learning rate, cosine-decayed to 0
    seed: int = 0  # PRNG seed of init and minibatches (the relabelling is deterministic)
    support: float = 0.3  # V's max runs over actions with pi(a | s, t) >= support * max_a pi (discrete BCQ's threshold)


def returns_to_go(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) float32 undiscounted realised return-to-go per step (as ``dtjax.data.dataset.returns_to_go``)."""
    ep, starts, _, _ = store.episode_index(arrays)
    r = np.asarray(arrays["reward"], np.float64)
    after = np.cumsum(r[::-1])[::-1]  # sum from each step to the dataset's end
    ends = np.append(starts[1:], len(r))
    tail = np.append(after, 0.0)[ends]  # the part after each episode's end
    return (after - tail[ep]).astype(np.float32)


def qdt_relabel(rtg: np.ndarray, value: np.ndarray, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """QDT's backward relabelling over a flat dataset: ``R_t = max(V_t, r_t + R_{t+1})``, restarting
    at each episode end (``done`` marks an episode's last step, where ``R_{t+1} = 0``).

    ``rtg`` is not used by the rule (it follows from the rewards) and is only checked for shape.
    Returns (N,) float32 (a jitted reverse ``lax.scan``).
    """
    if not (len(rtg) == len(value) == len(reward) == len(done)):
        raise ValueError(f"qdt_relabel: lengths differ (rtg {len(rtg)}, value {len(value)}, reward {len(reward)}, done {len(done)})")

    @jax.jit
    def scan(v, r, d):
        def step(acc, x):
            v_t, r_t, d_t = x
            acc = jnp.maximum(v_t, r_t + jnp.where(d_t, 0.0, acc))
            return acc, acc

        return jax.lax.scan(step, jnp.float32(0), (v, r, d), reverse=True)[1]

    return np.asarray(scan(jnp.asarray(value, jnp.float32), jnp.asarray(reward, jnp.float32), jnp.asarray(done, bool)))


# ---- the offline Q network: Q(state, t) -> (n_actions,), on the compact stored state ----


def _layout(arrays: dict[str, np.ndarray]) -> tuple[int, int, tuple[str, ...]]:
    """(grid cells per side, largest time + 1, the family's extra state fields) of a dataset."""
    pos, obst = np.asarray(arrays["agent_pos"]), np.asarray(arrays["obstacles"])
    side = int(max(pos.max(), obst.max() if obst.size else 0)) + 1
    return side, int(np.asarray(arrays["time"]).max()) + 1, tuple(sorted(store.state_fields(arrays)))


def features(rows: dict[str, jax.Array], side: int, horizon: int) -> jax.Array:
    """(B, F) float32 features of B stored states: one-hot agent cell (side^2), one-hot direction (4),
    ball occupancy (side^2), time / horizon (1), and the family's extra state fields, flattened."""
    cell = lambda p: p[..., 0] * side + p[..., 1]  # noqa: E731
    agent = jax.nn.one_hot(cell(rows["agent_pos"]), side * side)
    balls = jax.nn.one_hot(cell(rows["obstacles"]), side * side).sum(-2).clip(0, 1)  # (B, 0, 2) -> zeros
    parts = [agent, jax.nn.one_hot(rows["agent_dir"], 4), balls, (rows["time"] / horizon)[:, None]]
    parts += [rows[k].reshape(len(rows["time"]), -1).astype(jnp.float32) for k in sorted(rows) if k.startswith("x:")]
    return jnp.concatenate([p.astype(jnp.float32) for p in parts], -1)


def _init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)} for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _apply(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def _device_rows(arrays: dict[str, np.ndarray], extra: tuple[str, ...]) -> dict[str, jax.Array]:
    rows = {k: jnp.asarray(np.asarray(arrays[k], np.int32)) for k in ("agent_pos", "agent_dir", "obstacles", "time", "action")}
    rows.update({f"x:{k}": jnp.asarray(np.asarray(arrays[k], np.int32)) for k in extra})
    return rows


def fit_q(arrays: dict[str, np.ndarray], n_actions: int, cfg: FitConfig = FitConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Fit Q(s, t, a) by Monte-Carlo regression on the realised returns-to-go, and the behaviour
    pi(a | s, t) by cross-entropy, in one network. Returns (q, support), both (N, n_actions): Q of
    every stored state (float32: the expected return-to-go after each action under the data's
    behaviour mix, since the squared error on the taken action is minimised by the conditional
    mean) and whether each action is in the behaviour's support there (bool: pi(a | s, t) >=
    ``cfg.support`` * max_a pi; the taken action's Q is only fitted where the data take it).

    One jitted ``lax.scan`` of ``cfg.steps`` Adam steps on uniform minibatches, then one
    ``lax.map`` over the dataset in chunks.
    """
    side, horizon, extra = _layout(arrays)
    rows = _device_rows(arrays, extra)
    target = jnp.asarray(returns_to_go(arrays))
    n = len(target)
    take = lambda idx: {k: v[idx] for k, v in rows.items()}  # noqa: E731
    n_feat = features(take(jnp.arange(1)), side, horizon).shape[-1]
    tx = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))

    def loss(params, idx):
        r = take(idx)
        out = _apply(params, features(r, side, horizon))
        q, logits = out[:, :n_actions], out[:, n_actions:]
        q_a = jnp.take_along_axis(q, r["action"][:, None], -1)[:, 0]
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), r["action"][:, None], -1)[:, 0]
        return jnp.mean((q_a - target[idx]) ** 2) + 0.1 * jnp.mean(ce)

    @jax.jit
    def train(key):
        k_init, k_run = jax.random.split(key)
        params = _init(k_init, [n_feat, cfg.hidden, cfg.hidden, 2 * n_actions])

        def step(carry, i):
            params, opt = carry
            idx = jax.random.randint(jax.random.fold_in(k_run, i), (cfg.batch_size,), 0, n)
            g = jax.grad(loss)(params, idx)
            upd, opt = tx.update(g, opt, params)
            return (optax.apply_updates(params, upd), opt), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(cfg.steps))
        return params

    params = train(jax.random.PRNGKey(cfg.seed))
    chunk = 16384
    pad = (-n) % chunk
    idx = jnp.concatenate([jnp.arange(n), jnp.zeros(pad, jnp.int32)]).reshape(-1, chunk)

    def predict(i):
        out = _apply(params, features(take(i), side, horizon))
        pi = jax.nn.softmax(out[:, n_actions:])
        return out[:, :n_actions], pi >= cfg.support * pi.max(-1, keepdims=True)

    q, sup = jax.jit(lambda idx: jax.lax.map(predict, idx))(idx)
    return np.asarray(q.reshape(-1, n_actions)[:n], np.float32), np.asarray(sup.reshape(-1, n_actions)[:n])


def critic_values(network, params, env, arrays: dict[str, np.ndarray], chunk: int = 16384) -> np.ndarray:
    """(N,) float32: the PPO critic ``network`` (an ``ActorCritic``) with ``params`` on the observation
    of every stored state (regenerated with ``env.observe``), chunked through one jitted ``lax.map``."""
    cls = type(jax.eval_shape(env.reset_env, jax.random.PRNGKey(0), env.default_params)[1])  # the family's EnvState
    names = [f.name for f in dataclasses.fields(cls)]
    fields = {k: jnp.asarray(a if (a := np.asarray(arrays[k])).dtype == np.bool_ else a.astype(np.int32)) for k in names}
    n = len(arrays["time"])
    pad = (-n) % chunk
    idx = jnp.concatenate([jnp.arange(n), jnp.zeros(pad, jnp.int32)]).reshape(-1, chunk)

    def values(i):
        state = cls(**{k: v[i] for k, v in fields.items()})
        return network.apply(params, jax.vmap(env.observe)(state))[1]

    return np.asarray(jax.jit(lambda idx: jax.lax.map(values, idx))(idx).reshape(-1)[:n], np.float32)


def relabelled(arrays: dict[str, np.ndarray], label: str, n_actions: int | None = None) -> np.ndarray:
    """(N,) float32: every step's RTG under ``label`` (one of ``LABELS``; see the module docstring)."""
    if label not in LABELS:
        raise ValueError(f"value labels are {', '.join(LABELS)}, got {label!r}")
    rtg = returns_to_go(arrays)
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    if label == "value_critic":
        if "value" not in arrays:
            raise store.DatasetError("rtg_label 'value_critic' needs a dataset with the PPO critic's values (value.npy), "
                                     "collected with that label (MLP PPO); collect a new one")
        return qdt_relabel(rtg, np.asarray(arrays["value"], np.float32), arrays["reward"], done)
    n_actions = int(n_actions or max(store.N_ACTIONS, int(np.asarray(arrays["action"]).max()) + 1))
    q, support = fit_q(arrays, n_actions)
    if label == "q_fitted":
        return np.take_along_axis(q, np.asarray(arrays["action"], np.int64)[:, None], 1)[:, 0]
    return qdt_relabel(rtg, np.where(support, q, -np.inf).max(1), arrays["reward"], done)


def rtg_shift(arrays: dict[str, np.ndarray], label: str) -> np.ndarray:
    """(N,) float32 to add to the realised return-to-go to get the ``label``'s RTG (``relabel.rtg_shift``)."""
    return (relabelled(arrays, label) - returns_to_go(arrays)).astype(np.float32)
