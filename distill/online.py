"""Online distillation: a student follows a teacher while the teacher trains (Rusu et al. 4.4).

The run alternates rounds. In each round the teacher trains for a chunk of env steps (the same
compiled DQN chunk as `distill teacher`), then its latest parameters act (epsilon 0.05) to record
fresh (observation, Q-values) data into a sliding window of the most recent rounds (the paper
keeps the most recent hours of play), and the student takes a block of distillation updates on
that window. Both are evaluated in the env after every round.
"""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np

from distill import dataset, envs, evaluate, student, teacher, xla
from distill.config import PositiveInt, positive_int


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """How a student follows a training teacher, round by round."""

    rounds: PositiveInt = 40
    """rounds of teacher training, then recording, then student updates"""
    rows_per_round: PositiveInt = 64
    """rows the teacher records a round (x 64 envs = 4,096 fresh states)"""
    window_rounds: PositiveInt = 8
    """the student samples from the most recent rounds' data"""
    updates_per_round: PositiveInt = 500
    """student minibatch updates a round"""
    eval_episodes: PositiveInt = 50
    """episodes per evaluation of the teacher and the student"""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            positive_int(f.name, getattr(self, f.name))


def stability(scores) -> dict:
    """Spread (std of the evaluations over the second half of the run) and the worst drop
    between two successive evaluations."""
    s = np.asarray(scores, dtype=float)
    drops = s[:-1] - s[1:]
    return {
        "spread": float(np.std(s[len(s) // 2 :])),
        "worst_drop": float(max(drops.max(initial=0.0), 0.0)),
        "final": float(s[-1]),
        "best": float(s.max()),
    }


def online_distillation(
    teacher_config: teacher.DQNConfig,
    student_config: student.StudentConfig,
    online: OnlineConfig,
    progress: bool = True,
    snapshot_rounds: tuple[int, ...] = (),
) -> dict:
    """Run the teacher and the student side by side; returns per-round scores and stability,
    and with `snapshot_rounds` (1-based) both networks' parameters after those rounds under
    "snapshots" ({round: {"teacher": params, "student": params}}: arrays, for watching them
    play, not for a results.json)."""
    from tqdm.auto import tqdm

    env_id = teacher_config.env_id
    spec = envs.spec(env_id)
    trainer = teacher.make_train(teacher_config)
    run_teacher = xla.jit(trainer.run, static_argnums=1)
    chunk = max(teacher_config.iterations // online.rounds, 1)
    num_envs = 64
    gen_config = dataset.DatasetConfig(
        states=online.rows_per_round * num_envs, num_envs=num_envs, seed=teacher_config.seed
    )
    acting = types.SimpleNamespace(env_id=env_id, apply=trainer.network.apply)
    gen_init, gen_shard = dataset.make_gymnax_generator(acting, gen_config)
    gen_shard = xla.jit(gen_shard, static_argnums=2)
    s_config = dataclasses.replace(
        student_config,
        eval_every=online.updates_per_round,
        updates=online.updates_per_round * online.rounds,
        eval_episodes=online.eval_episodes,
    )
    distiller = student.make_distill(s_config, env_id, 1)
    run_student = xla.jit(lambda s, d, hyper: distiller.run(s, d, hyper, 1, 0, True))
    teacher_eval = xla.jit(
        evaluate.make_gymnax_evaluator(env_id, trainer.network.apply, online.eval_episodes)
    )

    @xla.jit
    def insert(window, record, slot):
        start = slot * online.rows_per_round
        return {
            k: jax.lax.dynamic_update_slice_in_dim(
                window[k], record[k].astype(window[k].dtype), start, axis=0
            )
            for k in window
        }

    key = jax.random.PRNGKey(teacher_config.seed)
    k_t, k_g, k_s, key = jax.random.split(key, 4)
    t_state = trainer.init(k_t)
    g_state = gen_init(k_g)
    s_state = distiller.init(k_s)
    window = None
    rows, snapshots = [], {}
    hyper = jax.tree_util.tree_map(jnp.float32, s_config.hyper)  # the loss's, e.g. tau
    for r in tqdm(range(online.rounds), desc=f"online {env_id}", disable=not progress):
        t_state, _ = run_teacher(t_state, chunk)
        g_state, record = gen_shard(t_state.params, g_state, online.rows_per_round)
        if window is None:  # the first round's data fills the whole window
            window = {
                k: jnp.concatenate([v] * online.window_rounds, axis=0) for k, v in record.items()
            }
        else:
            window = insert(window, record, r % online.window_rounds)
        s_state, m = run_student(s_state, window, hyper)
        key, k_e = jax.random.split(key)
        t_score = float(jnp.mean(teacher_eval(t_state.params, k_e, evaluate.EVAL_EPSILON)))
        rows.append(
            {
                "round": r + 1,
                "env_steps": int(t_state.iteration) * teacher_config.num_envs,
                "teacher_score": t_score,
                "student_score": float(m.score[0]),
                "student_loss": float(m.loss[0]),
                "agreement": float(m.agreement[0]),
            }
        )
        if r + 1 in snapshot_rounds:
            snapshots[r + 1] = {"teacher": t_state.params, "student": s_state.params}
    extra = {"snapshots": snapshots} if snapshot_rounds else {}
    return {
        "env_id": env_id,
        "rows": rows,
        "teacher": stability([r["teacher_score"] for r in rows]),
        "student": stability([r["student_score"] for r in rows]),
        "config": {
            "teacher": dataclasses.asdict(teacher_config),
            "student": dataclasses.asdict(s_config),
            "online": dataclasses.asdict(online),
        },
        "spec": {"num_actions": spec.num_actions},
        **extra,
    }
