"""One interface over gymnax (MinAtar, CartPole: pure JAX) and ale-py (Atari: C++ threads).

`spec(env_id)` tells what an environment is (observation shape and dtype, actions, random-policy
score, backend); `make(env_id)` gives a `GymnaxEnv` whose `reset`/`step` are pure functions usable
inside `jax.jit`, `jax.vmap` and `lax.scan`; `make_atari(env_id, num_envs, ...)` gives ale-py's
`AtariVectorEnv` set up with the paper's preprocessing. Ids are the libraries' own:
"Breakout-MinAtar", "CartPole-v1", "ALE/Pong-v5".
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp

MINATAR_IDS = (
    "Breakout-MinAtar",
    "SpaceInvaders-MinAtar",
    "Asterix-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
)
VECTOR_IDS = ("CartPole-v1",)
GYMNAX_IDS = (*MINATAR_IDS, *VECTOR_IDS)
# What each MinAtar channel shows (Young & Tian 2019; gymnax keeps MinAtar's order).
MINATAR_CHANNELS: dict[str, tuple[str, ...]] = {
    "Breakout-MinAtar": ("paddle", "ball", "trail", "brick"),
    "SpaceInvaders-MinAtar": (
        "cannon",
        "alien",
        "alien_left",
        "alien_right",
        "friendly_bullet",
        "enemy_bullet",
    ),
    "Asterix-MinAtar": ("player", "enemy", "trail", "gold"),
    "Freeway-MinAtar": ("chicken", "car", "speed1", "speed2", "speed3", "speed4", "speed5"),
    "Seaquest-MinAtar": (
        "sub_front",
        "sub_back",
        "friendly_bullet",
        "trail",
        "enemy_bullet",
        "enemy_fish",
        "enemy_sub",
        "oxygen_gauge",
        "diver_gauge",
        "diver",
    ),
}

# The ten games of Rusu et al. (2016).
PAPER_ATARI_GAMES = (
    "Breakout",
    "BeamRider",
    "Enduro",
    "Freeway",
    "MsPacman",
    "Pong",
    "Qbert",
    "Riverraid",
    "Seaquest",
    "SpaceInvaders",
)
PAPER_ATARI_IDS = tuple(f"ALE/{g}-v5" for g in PAPER_ATARI_GAMES)

# The paper's Atari protocol (Mnih et al. 2015 preprocessing; Rusu et al. 2016, section 5).
ATARI_FRAMESKIP = 4
ATARI_STACK = 4
ATARI_FRAME = (84, 84)  # grayscale frame, height x width
ATARI_NOOP_MAX = 30
ATARI_MAX_FRAMES = 108_000  # 30 minutes at 60 Hz

# Mean undiscounted return of the uniform random policy. MinAtar and CartPole: 1000 episodes,
# `distill evaluate --random --env ID --episodes 1000`; Atari: 30 episodes with no-op starts,
# `distill evaluate --random --env ALE/GAME-v5 --episodes 30`. Missing ids are measured on demand.
RANDOM_SCORES: dict[str, float] = {}

Backend = Literal["gymnax", "ale"]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What an environment is: everything a network, a dataset or an evaluation needs to know."""

    env_id: str
    backend: Backend
    family: str  # the name of its entry in distill.families (minatar, atari, vector, ...)
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int
    max_episode_steps: int  # agent steps (Atari: 108,000 frames / frameskip 4)

    @property
    def is_atari(self) -> bool:
        return self.backend == "ale"

    @property
    def random_score(self) -> float | None:
        return RANDOM_SCORES.get(self.env_id)

    @property
    def safe_name(self) -> str:
        """The id as a folder name: 'ALE/Pong-v5' -> 'ALE-Pong-v5'."""
        return self.env_id.replace("/", "-")


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@functools.cache
def _ale_roms() -> dict[str, str]:
    """Camel-case game name -> ale-py ROM id, for every ROM ale-py ships."""
    from ale_py import roms

    return {"".join(p.capitalize() for p in r.split("_")): r for r in roms.get_all_rom_ids()}


def _known_ids() -> list[str]:
    return [*GYMNAX_IDS, *(f"ALE/{g}-v5" for g in _ale_roms())]


def _unknown(env_id: str) -> ValueError:
    close = difflib.get_close_matches(env_id, _known_ids(), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ValueError(
        f"unknown env id {env_id!r}{hint}. Supported: {', '.join(GYMNAX_IDS)}, "
        f"and ALE/<Game>-v5 for any ale-py game (e.g. {', '.join(PAPER_ATARI_IDS[:3])})"
    )


def ale_game(env_id: str) -> str:
    """'ALE/Pong-v5' -> 'pong' (ale-py's ROM id); unknown games raise ValueError."""
    m = re.fullmatch(r"ALE/([A-Za-z0-9]+)-v5", env_id)
    if not m or m.group(1) not in _ale_roms():
        raise _unknown(env_id)
    return _ale_roms()[m.group(1)]


@functools.cache
def _atari_actions(rom: str) -> tuple[str, ...]:
    """The names of a game's minimal action set, in the order the agent indexes them."""
    import ale_py

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(rom))
    return tuple(a.name for a in ale.getMinimalActionSet())


def _atari_num_actions(rom: str) -> int:
    return len(_atari_actions(rom))


# MinAtar's full action set; each game uses some of them (`env.action_set`).
MINATAR_ACTIONS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")


def action_names(env_id: str) -> tuple[str, ...]:
    """Names of the actions in the order the agent indexes them: ale-py's minimal action set on
    Atari (NOOP, FIRE, RIGHT...), MinAtar's action set, 'a0', 'a1'... for other envs."""
    if spec(env_id).is_atari:
        return _atari_actions(ale_game(env_id))
    if env_id in MINATAR_IDS:
        return tuple(MINATAR_ACTIONS[int(i)] for i in make(env_id).env.action_set)
    return tuple(f"a{i}" for i in range(spec(env_id).num_actions))


# (family name, owns(env_id) -> bool, spec(env_id) -> EnvSpec), in registration order; filled by
# distill.families.register, which `import distill` runs for the built-in families.
_KINDS: list[tuple[str, Any, Any]] = []


def register_kind(family: str, owns, spec_of) -> None:
    """Let `spec` answer for the ids a family owns (called by `distill.families.register`)."""
    _KINDS.append((family, owns, spec_of))
    spec.cache_clear()


def unregister_kind(family: str) -> None:
    """Forget a family's ids (for tests that register a throwaway family)."""
    _KINDS[:] = [k for k in _KINDS if k[0] != family]
    spec.cache_clear()


@functools.cache
def spec(env_id: str) -> EnvSpec:
    """The `EnvSpec` of an id, from the env family that owns it (`distill.families`).

    An unknown id raises ValueError listing close matches.
    """
    if not isinstance(env_id, str):
        raise ValueError(f"env id must be a string; got {env_id!r}")
    for family, owns, spec_of in _KINDS:
        if owns(env_id):
            return dataclasses.replace(spec_of(env_id), family=family)
    raise _unknown(env_id)


def gymnax_spec(env_id: str) -> EnvSpec:
    """The spec of a gymnax env (MinAtar, CartPole), read off gymnax itself."""
    if env_id not in GYMNAX_IDS:
        raise _unknown(env_id)
    import gymnax

    env, params = gymnax.make(env_id)
    obs = jax.eval_shape(lambda k: env.reset(k, params)[0], jax.random.PRNGKey(0))
    return EnvSpec(
        env_id=env_id,
        backend="gymnax",
        family="",  # set by spec() from the owning family
        obs_shape=tuple(obs.shape),
        obs_dtype=str(obs.dtype),
        num_actions=int(env.num_actions),
        max_episode_steps=int(params.max_steps_in_episode),
    )


def ale_spec(env_id: str) -> EnvSpec:
    """The spec of an ale-py game with the paper's preprocessing (a stack of 84x84 frames)."""
    rom = ale_game(env_id)
    return EnvSpec(
        env_id=env_id,
        backend="ale",
        family="",  # set by spec() from the owning family
        obs_shape=(ATARI_STACK, *ATARI_FRAME),
        obs_dtype="uint8",
        num_actions=_atari_num_actions(rom),
        max_episode_steps=ATARI_MAX_FRAMES // ATARI_FRAMESKIP,
    )


@dataclasses.dataclass(frozen=True)
class GymnaxEnv:
    """A gymnax environment as two pure functions with automatic reset.

    `reset(key) -> (obs, state)`; `step(key, state, action) -> (obs, state, reward, done, info)`.
    When an episode ends, `obs` is already the first observation of the next episode (gymnax
    resets inside `step`); `done` marks the end (terminated or truncated) and
    `info["terminated"]` tells the two apart for bootstrapping. Vectorise with `jax.vmap`.
    """

    spec: EnvSpec
    env: Any
    params: Any

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = self.env.reset(key, self.params)
        return obs.astype(self.spec.obs_dtype), state

    def step(self, key: jax.Array, state: Any, action: jax.Array):
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, state, action, self.params
        )
        done = jnp.logical_or(terminated, truncated)
        info = {"terminated": terminated, "truncated": truncated}
        return obs.astype(self.spec.obs_dtype), state, reward.astype(jnp.float32), done, info


def make(env_id: str) -> GymnaxEnv:
    """A pure-JAX environment (MinAtar or CartPole). Atari ids go through `make_atari`."""
    s = spec(env_id)
    if s.backend != "gymnax":
        raise ValueError(f"{env_id} is an Atari env: use distill.envs.make_atari (host env)")
    import gymnax

    env, params = gymnax.make(env_id)
    return GymnaxEnv(s, env, params)


def make_atari(
    env_id: str,
    num_envs: int,
    *,
    batch_size: int = 0,
    training: bool = False,
    num_threads: int = 0,
    noop_max: int = ATARI_NOOP_MAX,
):
    """ale-py's `AtariVectorEnv` with the paper's preprocessing.

    84x84 grayscale, a stack of 4, frameskip 4 with max-pooling over the last two frames, up to 30
    no-op actions at the start of each episode, episodes capped at 108,000 frames, no sticky
    actions (the deterministic ALE of 2015). `training=True` adds what DQN trains with: rewards
    clipped to [-1, 1]. Episodes are always whole games: DQN's other training trick, a life loss
    ending the episode for bootstrapping, is the teacher loop's (`life_lost`), because ale-py's
    own `episodic_life` resets the whole game on a life loss (measured on Breakout: the next
    observation is a new game's with 5 lives), so a teacher would only ever see its first life.
    `batch_size < num_envs` turns on the asynchronous send/recv mode.
    Observations: uint8 `[batch, 4, 84, 84]`.
    """
    from ale_py.vector_env import AtariVectorEnv, AutoresetMode

    rom = ale_game(env_id)
    if num_envs < 1 or not 0 <= batch_size <= num_envs:
        raise ValueError(
            f"need num_envs >= 1 and 0 <= batch_size <= num_envs; got {num_envs}, {batch_size}"
        )
    return AtariVectorEnv(
        game=rom,
        num_envs=num_envs,
        batch_size=batch_size,
        num_threads=num_threads,
        frameskip=ATARI_FRAMESKIP,
        stack_num=ATARI_STACK,
        img_height=ATARI_FRAME[0],
        img_width=ATARI_FRAME[1],
        grayscale=True,
        maxpool=True,
        noop_max=noop_max,
        max_num_frames_per_episode=ATARI_MAX_FRAMES,
        repeat_action_probability=0.0,
        reward_clipping=training,
        episodic_life=False,  # see the docstring: `life_lost` instead
        # the observation returned with done=True is already the next episode's first, as in
        # gymnax: replay and datasets then never hold a transition across an episode boundary
        autoreset_mode=AutoresetMode.SAME_STEP,
    )


def reset_in_env_order(env, seed: int):
    """`env.reset(seed=seed)`'s observations in env-id order (see `in_env_order`)."""
    import numpy as np

    obs, info = env.reset(seed=seed)
    return obs[np.argsort(info["env_id"])]


def lives_in_env_order(info):
    """The lives left in each env after a step or reset (`info["lives"]`), in env-id order."""
    import numpy as np

    return np.asarray(info["lives"])[np.argsort(info["env_id"])]


def life_lost(before, after, game_over):
    """Where a life was lost while the game goes on (lives `before` -> `after`; None before the
    first step): DQN's training ends the episode there for bootstrapping, not the game."""
    import numpy as np

    if before is None:
        return np.zeros_like(game_over)
    return (after < before) & ~game_over


def in_env_order(obs, reward, terminated, truncated, info):
    """An `AtariVectorEnv` step result in env-id order: (obs, reward, terminated, truncated).

    ale-py returns a batch in the order its threads finished (`info["env_id"]`); actions are
    sent in env-id order, so the results must be put back in that order before acting again.
    """
    import numpy as np

    order = np.argsort(info["env_id"])
    return obs[order], reward[order], terminated[order], truncated[order]
