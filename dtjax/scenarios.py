"""Hand-made and sampled situations to probe a Decision Transformer with.

The hand-made states are the env's task's (``env.task.scenarios(env)``, ``envs.task.Scenario``:
for Dynamic Obstacles ``envs.dynamic_obstacles.scenarios``, built by hand from agent position,
direction and ball cells), turned into observations by the env's own pure ``observe``, so each is
exactly what the agent would see.

View geometry (MiniGrid): the agent sits at view cell (x=3, y=6) facing view "up"; the cell in
front is (3, 5). In the world, facing east (dir 0) from (x, y), "front" is (x+1, y), "left" is
(x, y-1) and "right" is (x, y+1).

``scenario_inputs`` gives ``circuits.Inputs`` (K = 1: tokens R, s) for any set of target RTGs;
``sample_inputs`` draws states from real rollouts (a random or given policy) for dataset means.
``rtg_pair`` and ``ball_pair`` turn such states into (clean, corrupted) pairs for patching and
circuit discovery: the same states at two target RTGs, and states with a ball ahead vs the same
with that cell emptied (``front_is_ball``, ``empty_front``). The ball helpers are facts of a task
with balls (Dynamic Obstacles): a front end calls them only when ``has_balls(task)``
(``require_balls`` gives the one-line "not defined for this task" error otherwise).
For a model with K > 1 timesteps of context both give K-timestep inputs padded as training and
closed-loop evaluation pad an episode's start (``Inputs.left_pad``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs import minigrid
from envs.task import Scenario, Task
from dtjax.circuits.core import Inputs
from dtjax.config import EnvConfig
from dtjax.evaluate import Window, push_step

ENV_ID = "MiniGrid-Dynamic-Obstacles-8x8-v0"  # the original's env, the default


def _env_cfg(env: EnvConfig | None, obs_mode: str | None, env_id: str | None, max_steps: int | None = None) -> EnvConfig:
    base = env or EnvConfig()
    changes = {k: v for k, v in (("obs_mode", obs_mode), ("env_id", env_id), ("max_steps", max_steps)) if v is not None}
    return base.replace(**changes) if changes else base


def task_scenarios(env: EnvConfig | None = None) -> dict[str, Scenario]:
    """name -> ``Scenario`` (state, caption): the hand-made states of ``env``'s task (default 8x8
    Dynamic Obstacles), in the task's order (``env.task.scenarios(env)``)."""
    jenv, _ = (env or EnvConfig()).make()
    return {s.name: s for s in jenv.task.scenarios(jenv)}


def task_pairs(env: EnvConfig | None = None) -> dict[str, tuple[str, str]]:
    """pair name -> (clean scenario, corrupted scenario): the task's patching pairs."""
    return dict((env or EnvConfig()).make()[0].task.pairs)


def scenario_states(names=None, env: EnvConfig | None = None) -> tuple[list[str], envs.EnvState]:
    """(names, a batched env state) for ``names`` (default all of the task's) in ``env`` (default 8x8).

    For Dynamic Obstacles ``start_seed0`` is MiniGrid's reset(seed=0) state in the fixed-start
    8x8 env, and the env's own ``reset(PRNGKey(0))`` state in any other.
    """
    known = task_scenarios(env)
    names = list(known) if names is None else list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; known: {', '.join(known)}")
    return names, jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *(known[n].state for n in names))


def scenario_caption(name: str, env: EnvConfig | None = None) -> str:
    known = task_scenarios(env)
    if name not in known:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    return known[name].caption


def observe_states(states: envs.EnvState, obs_mode: str = "image", env_id: str = ENV_ID,
                   env: EnvConfig | None = None) -> jax.Array:
    """Observations (n, 7, 7, C) uint8 of a batched EnvState, via the env's ``observe``."""
    jenv, jparams = _env_cfg(env, None if env else obs_mode, None if env else env_id).make()
    return jax.vmap(lambda s: jenv.observe(s, jparams))(states)


def scenario_history(scenario: Scenario) -> tuple[int, ...]:
    """The actions a scenario's window replays (``Scenario.actions``: taken from a reset state of
    the same episode to reach its ``state``, for a family whose model needs the history, such as
    Memory's; ``()`` for a state seen on its own or at an episode's start)."""
    return tuple(int(a) for a in getattr(scenario, "actions", ()) or ())


def _stack(states: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *states)


def scenario_inputs(names=None, rtg: float | jax.Array = 0.9, timestep: int = 0, obs_mode: str | None = None,
                    env_id: str | None = None, env: EnvConfig | None = None, n_timesteps: int = 1,
                    pad_action: int | None = None, pad_rtg: str = "zero") -> tuple[list[str], Inputs]:
    """(names, Inputs of batch n): each scenario at target RTG ``rtg`` and ``timestep``.

    ``env``: the EnvConfig to build them in (default: 8x8, image); ``obs_mode`` / ``env_id``
    override its fields. ``rtg`` may be an (n,) array (one per scenario). With one timestep the
    tokens are (R, s): the action token is not fed because it cannot affect the prediction (causal
    mask). ``n_timesteps`` > 1 (a model with a longer context) left-pads each scenario to that many
    timesteps as training and evaluation pad an episode's first step (``Inputs.left_pad``), with
    ``pad_action`` (default: the task's number of actions, the model's padding action) and
    padding RTG ``pad_rtg`` (``ModelConfig.pad_rtg``: 0, or the episode's initial RTG).

    A scenario with a history (``scenario_history``) is the window closed-loop evaluation would
    hold after playing its actions in the env from its episode's reset state: its last K
    observations, actions and timesteps (the env's step count, plus ``timestep``), the current
    RTG ``rtg`` and the earlier ones higher by the rewards received since. That reset state is
    the task's scenario without a history, at time 0, from which the actions reach exactly the
    scenario's ``state`` (``replay_windows``; none is a ``ValueError``).
    """
    env = _env_cfg(env, obs_mode, env_id)
    known = task_scenarios(env)
    names, states = scenario_states(names, env)
    n = len(names)
    rtg = jnp.broadcast_to(jnp.asarray(rtg, jnp.float32), (n,))
    jenv, jparams = env.make()
    pad = jenv.num_actions if pad_action is None else int(pad_action)
    histories = [scenario_history(known[nm]) for nm in names]
    if not any(histories):  # every scenario is an episode's first step
        obs = observe_states(states, env=env)
        inp = Inputs(obs=obs[:, None], rtg=rtg[:, None], timesteps=jnp.full((n, 1), timestep, jnp.int32))
        return names, inp if n_timesteps == 1 else inp.left_pad(n_timesteps, pad, pad_rtg)
    win = history_windows(jenv, jparams, [known[nm] for nm in names], list(known.values()), int(n_timesteps), pad, pad_rtg)
    inp = Inputs(obs=win.obs, rtg=win.rtg, timesteps=win.timesteps + jnp.int32(timestep),
                 actions=win.actions[:, :-1] if n_timesteps > 1 else None)
    return names, inp.with_rtg(rtg, pad, pad_rtg)


def history_windows(env, env_params, chosen: list[Scenario], candidates: list[Scenario], K: int, pad_action: int,
                    pad_rtg: str = "zero") -> Window:
    """(n, K, ...) windows of the ``chosen`` scenarios: each one's history replayed from the reset
    state among ``candidates`` (no history, time 0) that it reaches exactly (a scenario without a
    history starts and ends at its own state)."""
    return _replays(env, env_params, chosen, candidates, K, pad_action, pad_rtg)[0]


def scenario_start(name: str, env: EnvConfig | None = None) -> tuple[Any, tuple[int, ...]]:
    """(the reset state a scenario's history starts from, its actions): what a front end plays to
    reach scenario ``name`` with its history (the explorer); a scenario without a history is its
    own start with no actions."""
    known = task_scenarios(env)
    if name not in known:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    sc = known[name]
    if not scenario_history(sc):
        return sc.state, ()
    jenv, jparams = (env or EnvConfig()).make()
    _, start = _replays(jenv, jparams, [sc], list(known.values()), 1, jenv.num_actions)
    return start[0].state, scenario_history(sc)


def _replays(env, env_params, chosen: list[Scenario], candidates: list[Scenario], K: int,
             pad_action: int, pad_rtg: str = "zero") -> tuple[Window, list[Scenario]]:
    """``history_windows`` and the start scenario of each chosen one."""
    starts = [c for c in candidates if not scenario_history(c) and int(c.state.time) == 0]
    rows, acts, lengths = [], [], []
    length = max(1, max(len(scenario_history(sc)) for sc in chosen))
    for sc in chosen:
        h = scenario_history(sc)
        for st in ([sc] if not h else starts):
            rows.append(st.state)
            acts.append(list(h) + [pad_action] * (length - len(h)))
            lengths.append(len(h))
    win, final = replay_windows(env, env_params, _stack(rows), jnp.asarray(acts, jnp.int32), jnp.asarray(lengths, jnp.int32),
                                K, pad_action, pad_rtg)
    final = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(final))]
    pick, found, i = [], [], 0
    for sc in chosen:
        if not scenario_history(sc):
            pick.append(i)
            found.append(sc)
            i += 1
            continue
        target = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(sc.state))]
        hit = [j for j in range(len(starts)) if all(np.array_equal(a[i + j], b) for a, b in zip(final, target))]
        if not hit:
            raise ValueError(f"scenario {sc.name!r}: no reset state among the task's scenarios reaches its state by its actions")
        pick.append(i + hit[0])
        found.append(starts[hit[0]])
        i += len(starts)
    return jax.tree.map(lambda x: x[jnp.asarray(pick)], win), found


@functools.partial(jax.jit, static_argnames=("env", "K", "pad_action", "pad_rtg"))
def replay_windows(env, env_params, states, actions: jax.Array, lengths: jax.Array, K: int,
                   pad_action: int, pad_rtg: str = "zero") -> tuple[Window, Any]:
    """The (n, K, ...) context windows after playing ``actions[i, :lengths[i]]`` from ``states[i]``,
    and the (n,) states reached.

    ``states``: a batched env state (n,); ``actions`` (n, T) int32 (entries past a row's length
    are ignored). Each window starts as ``Window.start`` at the state and moves by ``push_step``
    after each action, as ``dtjax.evaluate`` moves it (the env's own ``step_env``, step keys
    ``fold_in(PRNGKey(0), i)``: a deterministic family ignores them); its RTGs are minus the
    rewards received so far (``Inputs.with_rtg`` then sets the current one).
    """
    def one(state, acts, length):
        w0 = Window.start(env.observe(state, env_params), jnp.float32(0), state.time, K, pad_action, pad_rtg)

        def step(carry, x):
            i, a = x
            st, w, ret = carry
            obs, nxt, reward, _, _ = env.step_env(jax.random.fold_in(jax.random.PRNGKey(0), i), st, a, env_params)
            moved = push_step(w, a, pad_action, obs=obs, rtg=-(ret + reward), timesteps=nxt.time)
            keep = i < length
            return jax.tree.map(lambda new, old: jnp.where(keep, new, old), (nxt, moved, ret + reward), (st, w, ret)), None

        (final, w, _), _ = jax.lax.scan(step, (state, w0, jnp.float32(0)), (jnp.arange(acts.shape[0]), acts))
        return w, final

    return jax.vmap(one)(states, actions, lengths)


def sample_inputs(key: jax.Array, n: int, rtg: float = 0.9, obs_mode: str | None = None, max_steps: int | None = None,
                  policy: Callable | None = None, n_envs: int = 16, env_id: str | None = None,
                  env: EnvConfig | None = None, n_timesteps: int = 1, pad_action: int | None = None,
                  pad_rtg: str = "zero") -> Inputs:
    """``n`` Inputs drawn from real rollouts: the window a policy sees at each visited step.

    Runs ``n_envs`` vmapped episodes (auto-reset) of ``env`` (default 8x8, max_steps 300; the
    keyword fields override it) for ceil(n / n_envs) steps each and keeps every visited step, in
    step-major order. ``policy(key, obs (n_envs, 7, 7, C), time (n_envs,)) -> actions`` defaults
    to uniform random actions (the reference outputs' data). The RTG token is set to ``rtg``; the
    timestep is the env's step count.

    ``n_timesteps`` K > 1: each input is the window of the K steps ending at the visited step, as
    closed-loop evaluation builds it (``dtjax.evaluate``): within the current episode, left-padded
    at the episode's start (zero observation, RTG 0, timestep 0, ``pad_action``); ``actions``
    (n, K) are the actions taken before each step and the current step's slot holds
    ``pad_action`` (3K tokens, so dataset means such as ``circuits.ablation_means`` cover the
    closed loop's positions and, trimmed, a scenario's 3K - 1). K = 1: one step, no action token.
    ``pad_action`` defaults to the task's number of actions (the model's padding action);
    ``pad_rtg`` is the padded timesteps' RTG (``ModelConfig.pad_rtg``: 0, or the episode's initial).
    """
    env_cfg = _env_cfg(env, obs_mode, env_id, max_steps)
    env, env_params = env_cfg.make()
    if int(n_timesteps) < 1:
        raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
    pad = env.num_actions if pad_action is None else int(pad_action)
    win = _rollout_windows(key, env, env_params, jnp.float32(rtg), n_envs, -(-n // n_envs), int(n_timesteps), pad, policy,
                           pad_rtg)
    win = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n], win)  # (steps, n_envs, ...) -> (n, ...)
    return Inputs(obs=win.obs, rtg=win.rtg, timesteps=jnp.minimum(win.timesteps, env_cfg.max_steps).astype(jnp.int32),
                  actions=win.actions if n_timesteps > 1 else None)


@functools.partial(jax.jit, static_argnames=("env", "n_envs", "steps", "K", "pad_action", "policy", "pad_rtg"))
def _rollout_windows(key, env, env_params, rtg, n_envs, steps, K, pad_action, policy, pad_rtg="zero") -> Window:
    """(steps, n_envs, K, ...) context windows of ``sample_inputs``, at target RTG ``rtg``."""
    k_reset, k_run = jax.random.split(key)
    obs0, state0 = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n_envs), env_params)
    rtgs = jnp.full((n_envs,), rtg, jnp.float32)
    if policy is None:  # uniform random actions
        def policy(k, obs, t):
            return jax.random.randint(k, (obs.shape[0],), 0, env.num_actions)

    def step(carry, k):
        obs, state, window = carry
        k_act, k_env = jax.random.split(k)
        action = policy(k_act, obs, state.time)
        obs, state, _, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(jax.random.split(k_env, n_envs), state,
                                                                                     action, env_params)
        nxt = push_step(window, action, pad_action, obs=obs, rtg=rtgs, timesteps=state.time)
        done = term | trunc  # auto-reset: obs and state are the next episode's first step
        new = jax.tree.map(lambda f, x: jnp.where(done.reshape((-1,) + (1,) * (x.ndim - 1)), f, x),
                           Window.start(obs, rtgs, state.time, K, pad_action, pad_rtg), nxt)
        return (obs, state, new), window

    first = Window.start(obs0, rtgs, state0.time, K, pad_action, pad_rtg)
    _, windows = jax.lax.scan(step, (obs0, state0, first), jax.random.split(k_run, steps))
    return windows


def render_view(obs: np.ndarray) -> np.ndarray:
    """A small RGB picture (7, 7, 3) float of a raw (7, 7, 3) or one-hot (7, 7, 20) view, rows = view y.

    Empty black, wall grey, key yellow, ball blue, goal green; the agent's cell (3, 6) red (a
    carried object shows there in the observation, Memory's fork: it is drawn as a smaller inset
    by the front ends that show it, here the agent wins).
    """
    obs = np.asarray(obs)
    obj = obs[..., :11].argmax(-1) if obs.shape[-1] == 20 else obs[..., 0]
    colours = {1: (0.05, 0.05, 0.05), 2: (0.5, 0.5, 0.5), 5: (0.95, 0.8, 0.1), 6: (0.2, 0.4, 1.0), 8: (0.1, 0.8, 0.2)}
    img = np.zeros((7, 7, 3))
    for code, rgb in colours.items():
        img[obj == code] = rgb
    img[3, 6] = (0.9, 0.1, 0.1)
    return img.transpose(1, 0, 2)  # [x, y] -> rows = y


# PAIRS OF REAL STATES (clean, corrupted) for patching and circuit discovery -----------------

FRONT = (3, 5)  # the view cell in front of the agent, [x, y]


def has_balls(task: Task) -> bool:
    """Whether ``task`` has balls to avoid (balls that can be hit, Dynamic Obstacles'): the ball
    helpers below, the census and the explorer's ball edits are defined for it. Memory's ball is
    an object to remember and walk to, not an obstacle: these are not defined for it."""
    return "ball" in task.objects and "hit" in task.outcomes


def require_balls(task: Task, what: str) -> None:
    """A one-line error when ``what`` (a ball analysis) is asked of a task without balls to avoid."""
    if not has_balls(task):
        why = "its balls are not obstacles" if "ball" in task.objects else "no balls"
        raise ValueError(f"{what} is not defined for this task ({task.family}: {why})")


def front_is_ball(obs: jax.Array) -> jax.Array:
    """(...,) bool: a ball in the cell ahead of views (..., 7, 7, C), raw codes (C = 3) or one-hot."""
    obs = jnp.asarray(obs)
    cell = obs[..., FRONT[0], FRONT[1], :]
    if obs.shape[-1] == 3:
        return cell[..., 0] == minigrid.OBJECT_TO_IDX["ball"]
    return cell[..., minigrid.OBJECT_TO_IDX["ball"]] == 1


def empty_front(inputs: Inputs) -> Inputs:
    """``inputs`` with the cell ahead in the current (last) view set to empty, in the view's encoding."""
    obs = jnp.asarray(inputs.obs)
    code = minigrid.CELL_CODES[minigrid.EMPTY] if obs.shape[-1] == 3 else minigrid.CELL_ONE_HOT[minigrid.EMPTY]
    return inputs.replace(obs=obs.at[:, -1, FRONT[0], FRONT[1]].set(jnp.asarray(code, obs.dtype)))


def current_window(inputs: Inputs) -> Inputs:
    """Windows of K > 1 timesteps without the current action slot (3K - 1 tokens, as evaluation
    feeds them and as scenarios are built: that slot cannot affect the prediction); K = 1 unchanged."""
    if inputs.actions is None or inputs.actions.shape[1] < inputs.n_timesteps:
        return inputs
    return inputs.replace(actions=inputs.actions[:, :-1])


def rtg_pair(states: Inputs, rtg: float = 0.9, corrupted_rtg: float = -1.0, pad_action: int = 3,
             pad_rtg: str = "zero") -> tuple[Inputs, Inputs]:
    """The same states at target RTG ``rtg`` (clean) and ``corrupted_rtg`` (corrupted): the RTG
    conditioning (``Inputs.with_rtg``: earlier RTGs of a window keep their differences; padding
    timesteps, those with action ``pad_action`` (the model's ``n_actions``), keep RTG 0, or move
    with the rest for ``pad_rtg="initial"``)."""
    states = current_window(states)
    b = states.batch
    return (states.with_rtg(jnp.full((b,), rtg), pad_action, pad_rtg),
            states.with_rtg(jnp.full((b,), corrupted_rtg), pad_action, pad_rtg))


def ball_pair(states: Inputs, n: int | None = None, rtg: float = 0.9, pad_action: int = 3,
              pad_rtg: str = "zero") -> tuple[Inputs, Inputs]:
    """The states with a ball in the cell ahead (clean; the first ``n`` of them) and the same
    states with that cell emptied (corrupted), at RTG ``rtg``: the obstacle-avoidance behaviour.
    The batch may be smaller than ``n``, or 0 when no state has a ball ahead."""
    states = current_window(states)
    idx = np.flatnonzero(np.asarray(front_is_ball(states.obs[:, -1])))[:n]
    clean = states.take(jnp.asarray(idx, jnp.int32)).with_rtg(jnp.full((len(idx),), rtg), pad_action, pad_rtg)
    return clean, empty_front(clean)
