"""A whole explanation: the states to explain, every policy's maps and agreement on them, and
the figures and explain.json written from them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from distill import acting, dataset, envs, evaluate, families, xla
from distill.config import ConfigError, positive_int
from distill.explain.agreement import agreement_report, distinct_states
from distill.explain.linear import (
    LinearConfig,
    fit_linear,
    linear_report,
    linear_scores,
    preference_weights,
)
from distill.explain.saliency_maps import SALIENCY_METHODS, explain_states, map_similarity

# ---------------------------------------------------------------------------- states


def collect_states(
    policy,
    num_states: int,
    seed: int = 0,
    epsilon: float = evaluate.EVAL_EPSILON,
    spacing: int = 32,
) -> np.ndarray:
    """States the policy visits playing epsilon-greedily, `[num_states, *obs_shape]`.

    Parallel envs play from their own resets; every `spacing`-th step is kept (not the reset),
    so the states spread over the episodes instead of repeating their similar openings.
    """
    positive_int("num_states", num_states)
    positive_int("spacing", spacing)
    if not families.of(policy.spec).in_graph:
        return _collect_host(policy, num_states, seed, epsilon, spacing)
    num_envs = min(16, -(-num_states // 4))  # several kept steps per game reach further in
    kept_rows = -(-num_states // num_envs)
    config = dataset.DatasetConfig(
        states=num_envs * kept_rows * spacing, num_envs=num_envs, epsilon=epsilon, seed=seed
    )
    init, shard = dataset.make_gymnax_generator(policy, config)
    run = xla.jit(shard, static_argnums=2)
    _, record = run(policy.params, init(jax.random.PRNGKey(seed)), kept_rows * spacing)
    obs = np.asarray(record["obs"])[spacing - 1 :: spacing]  # [kept_rows, envs, ...]
    return obs.reshape(-1, *obs.shape[2:])[:num_states]


def _collect_host(policy, num_states, seed, epsilon, spacing) -> np.ndarray:
    num_envs = min(8, -(-num_states // 4))
    env = envs.make_atari(policy.env_id, num_envs, training=False)
    act = acting.host_actor(policy.apply, epsilon)
    key = jax.random.PRNGKey(seed)
    kept = []
    try:
        obs = envs.reset_in_env_order(env, seed)
        while len(kept) * num_envs < num_states:
            for _ in range(spacing):
                key, k = jax.random.split(key)
                _, action = act(policy.params, obs, k)
                obs, *_ = acting.host_step(env, action)
            kept.append(np.array(obs))
    finally:
        env.close()
    return np.concatenate(kept)[:num_states]


# ---------------------------------------------------------------------------- a whole report


def policy_label(policy, taken: Sequence[str] = ()) -> str:
    """A short name for a policy in figures: its network, and its folder when that differs."""
    folder = Path(policy.path).name
    label = policy.net if folder in (policy.net, "") else f"{policy.net} ({folder})"
    out, i = label, 2
    while out in taken:
        out, i = f"{label} #{i}", i + 1
    return out


def check_explainable(env_id: str) -> None:
    """Saliency maps need image observations: MinAtar's object channels or Atari's frames."""
    spec = envs.spec(env_id)
    if spec.family not in ("minatar", "atari"):
        raise ConfigError(
            f"{spec.env_id}: observations {spec.obs_shape} are not images; explanations need a "
            "MinAtar or Atari policy"
        )


def untrained_policy(env_id: str, net: str, seed: int = 0):
    """A network with its initial random weights, as a `Policy`: the baseline that says how
    alike two policies' maps or actions are by chance (shared image structure, a default
    action)."""
    from distill import checkpoint, networks

    spec = envs.spec(env_id)
    module = families.build_network(env_id, net)
    init = xla.jit(lambda k: networks.init_params(module, k, spec.obs_shape, spec.obs_dtype))
    params = init(jax.random.PRNGKey(seed))  # one compiled program: faster than op by op
    manifest = {"kind": "untrained", "env_id": spec.env_id, "net": net, "seed": seed}
    return checkpoint.Policy(
        spec.env_id, net, spec.num_actions, params, manifest, f"untrained {net}", module.apply
    )


def explain_policies(
    teacher,
    students: Sequence,
    obs: np.ndarray,
    top_fraction: float = 0.1,
    baselines: bool = True,
    seed: int = 0,
) -> dict:
    """Saliency maps of a teacher and its students on the same states `[n, *obs_shape]`, how
    similar each student's maps are to the teacher's, and how often each agrees with it.

    With `baselines`, an untrained network of each student's architecture gets the same
    treatment (under "baselines"): similarity and agreement by chance, to read the others by.
    """
    check_explainable(teacher.env_id)
    for s in students:
        if s.env_id != teacher.env_id:
            raise ConfigError(f"{s.path}: a student for {s.env_id}, not {teacher.env_id}")
    names = ["teacher"]
    for s in students:
        names.append(policy_label(s, names))
    policies = dict(zip(names, [teacher, *students], strict=True))
    untrained = {}
    if baselines:
        for s in students:
            untrained.setdefault(f"untrained {s.net}", untrained_policy(s.env_id, s.net, seed))
    everyone = {**policies, **untrained}
    obs = np.asarray(obs)
    q, maps = {}, {m: {} for m in SALIENCY_METHODS}
    for n, p in everyone.items():
        q[n], by_method = explain_states(p, obs)
        for m, v in by_method.items():
            maps[m][n] = v
    actions = envs.action_names(teacher.env_id)
    # MinAtar removal maps can only be non-zero where there is an object: compare those cells
    compared = {"gradient": None, "perturbation": None if teacher.spec.is_atari else obs > 0}

    def versus_teacher(n: str, p) -> dict:
        return {
            "path": p.path,
            "net": p.net,
            "similarity": {
                m: map_similarity(maps[m]["teacher"], maps[m][n], compared[m], top_fraction)
                for m in SALIENCY_METHODS
            },
            **agreement_report(q["teacher"], q[n], actions),
        }

    students_out = {n: versus_teacher(n, p) for n, p in policies.items() if n != "teacher"}
    for n, p in policies.items():
        if n != "teacher" and baselines:
            students_out[n]["untrained"] = f"untrained {p.net}"
    return {
        "env_id": teacher.env_id,
        "teacher": {"path": teacher.path, "net": teacher.net},
        "states": int(obs.shape[0]),
        "distinct_states": len({o.tobytes() for o in obs}),
        "action_names": list(actions),
        "channel_names": list(envs.MINATAR_CHANNELS.get(teacher.env_id, ())),
        "students": students_out,
        "baselines": {n: versus_teacher(n, p) for n, p in untrained.items()},
        "obs": obs,
        "q": q,
        "maps": maps,
    }


def _finite_or_none(x):
    """JSON has no NaN: an undefined number (an action never taken, a constant map) -> null."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def numbers(result: dict) -> dict:
    """The JSON-ready part of `explain_policies`: no arrays, and null for undefined numbers."""
    return _finite_or_none({k: v for k, v in result.items() if k not in ("obs", "q", "maps")})


def write_explanation(
    result: dict,
    out: str | Path,
    linear: dict | None = None,
    state: int = 0,
    disagreements: int = 4,
) -> list[Path]:
    """Figures (PNG) and explain.json into folder `out`; returns the files written.

    `result` from `explain_policies`; `linear` (optional) from `linear_report`. The per-state
    saliency figures show state `state`; each student's figure, up to `disagreements` states.
    """
    import matplotlib.pyplot as plt

    from distill import plotting
    from distill.checkpoint import atomic_write_bytes, atomic_write_json

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / name)

    obs, q, channels = result["obs"], result["q"], result["channel_names"] or None
    for m in SALIENCY_METHODS:
        maps = {n: v[state] for n, v in result["maps"][m].items()}
        fig = plotting.saliency_comparison(
            obs[state], maps, channels, title=f"{m} saliency, {result['env_id']}, state {state}"
        )
        save(fig, f"saliency_{m}.png")
        means = {n: v.mean(axis=0) for n, v in result["maps"][m].items()}
        fig = plotting.saliency_comparison(
            obs.mean(axis=0),
            means,
            channels,
            title=f"{m} saliency, {result['env_id']}, mean over {obs.shape[0]} states",
        )
        save(fig, f"saliency_{m}_mean.png")
    students = result["students"]
    if students:
        save(plotting.agreement_overview(students, result["env_id"]), "agreement.png")
        for i, (n, r) in enumerate(students.items()):
            idx = distinct_states(obs, r["disagreements"], disagreements)
            fig = plotting.disagreement_states(
                obs[idx],
                q["teacher"][idx],
                q[n][idx],
                r["action_names"],
                f"{n} vs teacher",
                channels,
            )
            save(fig, f"disagreements_{i}.png")
    payload = numbers(result)
    if linear is not None:
        fig = plotting.linear_weights(
            preference_weights(linear["w"]),
            channels,
            result["action_names"],
            "linear student: W minus its mean over actions",
        )
        save(fig, "linear_weights.png")
        buf = io.BytesIO()
        np.savez(buf, w=np.asarray(linear["w"]), b=np.asarray(linear["b"]))
        atomic_write_bytes(folder / "linear_student.npz", buf.getvalue())
        written.append(folder / "linear_student.npz")
        scalars = {k: v for k, v in linear.items() if k not in ("w", "b")}
        payload["linear"] = _finite_or_none(scalars)
    atomic_write_json(folder / "explain.json", payload)
    written.append(folder / "explain.json")
    return written


# ---------------------------------------------------------------------------- the command


def explain_command(
    teacher_path: str,
    student_paths: Sequence[str],
    states: int,
    seed: int,
    out: str,
    dataset_path: str | None = None,
    config: LinearConfig | None = None,
    episodes: int = 100,
) -> list[str]:
    """`distill explain`: load, check, explain, write; the summary lines it prints."""
    from distill import checkpoint

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    teacher = checkpoint.load(teacher_path)
    check_explainable(teacher.env_id)
    students = [checkpoint.load(p, env_id=teacher.env_id) for p in student_paths]
    data = None
    if dataset_path:
        if envs.spec(teacher.env_id).family != "minatar":
            raise ConfigError(
                f"--dataset: a linear student reads MinAtar object channels; {teacher.env_id} "
                "is not a MinAtar game"
            )
        data = dataset.load_dataset(dataset_path, env_id=teacher.env_id)
        if not dataset.same_source(
            data.manifest.get("teacher"), dataset.teacher_fingerprint(teacher)
        ):
            raise ConfigError(
                f"--dataset {dataset_path}: made by the teacher in "
                f"{data.manifest.get('teacher', {}).get('path')}, not by {teacher_path}"
            )
    obs = collect_states(teacher, states, seed=seed)
    result = explain_policies(teacher, students, obs)
    linear = None
    if data is not None:
        config = config if config is not None else LinearConfig(seed=seed)
        fitted = fit_linear(data, config)
        linear = linear_report(fitted, config, linear_scores(fitted, teacher, episodes))
    written = write_explanation(result, folder, linear)
    lines = []
    for name, r in result["students"].items():
        base = result["baselines"][r["untrained"]]
        sim, chance = r["similarity"], base["similarity"]
        lines.append(
            f"{name}: agreement {r['agreement']:.1%} (untrained {base['agreement']:.1%}); "
            f"saliency Spearman vs teacher: gradient {sim['gradient']['spearman']:.2f} "
            f"(untrained {chance['gradient']['spearman']:.2f}), perturbation "
            f"{sim['perturbation']['spearman']:.2f} "
            f"(untrained {chance['perturbation']['spearman']:.2f})"
        )
    if linear is not None:
        lines.append(
            f"linear student: fidelity {linear['fidelity']:.1%} on "
            f"{linear['held_out_states']:,} held-out states, score {linear['score']:.2f} "
            f"({linear['percent_of_teacher']:.0f}% of the teacher's {linear['teacher_score']:.2f})"
        )
    lines.append(f"{len(written)} files in {folder} (explain.json and figures)")
    return lines
