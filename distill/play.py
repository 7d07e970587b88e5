"""Watch policies play: a teacher and its students on the same episode starts, side by side.

`record` plays each policy's episodes; `render_frames` draws them, one panel per policy; `write`
saves a GIF (Pillow) or an MP4 (imageio-ffmpeg's H.264 where installed, else OpenCV's MPEG-4).

- MinAtar: policy i plays episode e from `evaluate.episode_keys(seed, e, 1)` with the key
  schedule of `evaluate.make_episode_evaluator` (reset, exploration and env randomness from that
  key alone), so every policy starts from the same state and sees the same randomness while it
  acts alike, and the score shown is the paired evaluation's score of that episode.
- Atari: gymnasium's ALE env with the paper's preprocessing (no-op starts, frameskip 4, 84x84
  grayscale, a stack of 4), reset with the same seed for every policy; the panels show the
  emulator's RGB screen.

Frame t of an episode shows the state s_t a policy acted in, its action a_t, the step t and the
score after r_t. A student's panel has a red border where its greedy action differs from the
teacher's (the first policy's) greedy action on the *student's own state*: the teacher is asked
about every state the student sees, so a disagreement still means something once the two
episodes have drifted apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill import acting, envs, evaluate, families

RED, GREY, WHITE, BLACK = (220, 30, 30), (200, 200, 200), (255, 255, 255), (0, 0, 0)
MINATAR_CELL = 14  # pixels per MinAtar cell
FORMATS = (".gif", ".mp4")


@dataclasses.dataclass(frozen=True)
class Track:
    """One policy's play of one episode, `T` steps (the episode's or the step cap)."""

    obs: np.ndarray  # [T, H, W, C] MinAtar states, or [T, 210, 160, 3] Atari RGB screens
    action: np.ndarray  # [T] the action taken (epsilon-greedy)
    greedy: np.ndarray  # [T] argmax of the policy's own Q-values
    teacher_greedy: np.ndarray  # [T] argmax of the teacher's Q-values on the same states
    score: np.ndarray  # [T] the return after each step's reward

    @property
    def steps(self) -> int:
        return int(self.action.shape[0])

    @property
    def disagrees(self) -> np.ndarray:
        """[T] whether the policy's greedy action differs from the teacher's."""
        return self.greedy != self.teacher_greedy


# ---------------------------------------------------------------------------- playing


def make_minatar_rollout(env_id: str, apply, teacher_apply, max_steps: int):
    """Jittable `(params, teacher_params, key, epsilon) -> (obs, action, greedy,
    teacher_greedy, score, running)`, each `[max_steps, ...]`: one episode from `key`, with
    the key schedule of `evaluate.make_episode_evaluator`; `running[t]`: step t was played."""
    env = envs.make(env_id)

    def rollout(params: Any, teacher_params: Any, key: jax.Array, epsilon: jax.Array):
        k_reset, k_play = jax.random.split(key)
        obs, state = env.reset(k_reset)

        def step(carry, t):
            obs, state, total, running = carry
            k = jax.random.split(jax.random.fold_in(k_play, t))
            q = apply(params, obs[None])  # [1, actions]
            q_teacher = teacher_apply(teacher_params, obs[None])
            action = acting.epsilon_greedy(k[0], q, epsilon)[0]
            next_obs, state, reward, done, _ = env.step(k[1], state, action)
            total = total + jnp.where(running, reward, 0.0)
            out = (obs, action, jnp.argmax(q[0]), jnp.argmax(q_teacher[0]), total, running)
            return (next_obs, state, total, running & ~done), out

        init = (obs, state, jnp.float32(0.0), jnp.bool_(True))
        _, out = jax.lax.scan(step, init, jnp.arange(max_steps))
        return out

    return rollout


def _tracks(arrays: tuple) -> list[Track]:
    """Tracks from a rollout's arrays `[episodes, max_steps, ...]`, cut where play ended."""
    obs, action, greedy, teacher_greedy, score, running = (np.asarray(a) for a in arrays)
    out = []
    for e in range(action.shape[0]):
        t = int(running[e].sum())  # running is True up to the episode's last step
        out.append(
            Track(obs[e, :t], action[e, :t], greedy[e, :t], teacher_greedy[e, :t], score[e, :t])
        )
    return out


def record_minatar(policies: Sequence, episodes: int, seed: int, max_steps: int, epsilon: float):
    """`[policy][episode]` Tracks of MinAtar (gymnax) policies; the first is the teacher."""
    teacher = policies[0]
    keys = evaluate.episode_keys(seed, 0, episodes)
    out = []
    for p in policies:
        rollout = make_minatar_rollout(p.env_id, p.apply, teacher.apply, max_steps)
        run = jax.jit(jax.vmap(rollout, in_axes=(None, None, 0, None)))
        out.append(_tracks(run(p.params, teacher.params, keys, jnp.float32(epsilon))))
    return out


def make_atari_env(env_id: str):
    """gymnasium's ALE env with the paper's evaluation preprocessing and RGB rendering:
    observations uint8 `[4, 84, 84]` as `distill.envs.make_atari` gives them; `render()` is the
    emulator's screen `[210, 160, 3]`."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(
        env_id,
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        max_num_frames_per_episode=envs.ATARI_MAX_FRAMES,
        render_mode="rgb_array",
    )
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=envs.ATARI_NOOP_MAX, frame_skip=envs.ATARI_FRAMESKIP, screen_size=84
    )
    return gym.wrappers.FrameStackObservation(env, envs.ATARI_STACK)


def record_atari(policies: Sequence, episodes: int, seed: int, max_steps: int, epsilon: float):
    """`[policy][episode]` Tracks of Atari policies: episode e reset with seed `seed + e` and
    exploration drawn from the same numpy stream for every policy."""
    teacher_q = jax.jit(policies[0].apply)
    out = []
    for p in policies:
        q_fn, tracks = jax.jit(p.apply), []
        env = make_atari_env(p.env_id)
        try:
            for e in range(episodes):
                rng = np.random.default_rng([seed, e])
                obs, _ = env.reset(seed=seed + e)
                rows, total = [], 0.0  # (screen, action, greedy, teacher greedy, score)
                for _ in range(max_steps):
                    q = np.asarray(q_fn(p.params, obs[None]))[0]
                    tq = np.asarray(teacher_q(policies[0].params, obs[None]))[0]
                    explore, random_action = rng.random() < epsilon, int(rng.integers(q.size))
                    action = random_action if explore else int(np.argmax(q))
                    screen = env.render()
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total += float(reward)
                    rows.append((screen, action, np.argmax(q), np.argmax(tq), total))
                    if terminated or truncated:
                        break
                tracks.append(Track(*(np.asarray(c) for c in zip(*rows, strict=True))))
        finally:
            env.close()
        out.append(tracks)
    return out


def record(
    policies: Sequence,
    episodes: int = 1,
    seed: int = 0,
    max_steps: int | None = None,
    epsilon: float = evaluate.EVAL_EPSILON,
) -> list[list[Track]]:
    """`[policy][episode]` Tracks of `policies` (one env; the first is the teacher) playing
    the same `episodes` starts, each cut at `max_steps` (None: the env's episode limit)."""
    from distill.config import ConfigError

    env_ids = {p.env_id for p in policies}
    if len(env_ids) != 1:
        raise ConfigError(f"the policies play different envs ({', '.join(sorted(env_ids))})")
    spec = policies[0].spec
    steps = spec.max_episode_steps if max_steps is None else min(max_steps, spec.max_episode_steps)
    if families.of(spec).in_graph:
        return record_minatar(policies, episodes, seed, steps, epsilon)
    return record_atari(policies, episodes, seed, steps, epsilon)


# ---------------------------------------------------------------------------- drawing


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def state_image(obs: np.ndarray, cell: int = MINATAR_CELL) -> np.ndarray:
    """A state as uint8 RGB `[h, w, 3]`: a MinAtar state `[H, W, C]` in the channels' colours
    (`plotting.minatar_image`), `cell` pixels a cell; an RGB screen `[h, w, 3]` as it is."""
    obs = np.asarray(obs)
    if obs.dtype == np.uint8 and obs.ndim == 3 and obs.shape[-1] == 3:
        return obs
    from distill.plotting import minatar_image

    image = (minatar_image(obs) * 255).round().astype(np.uint8)
    return np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)


def channel_colours(channels: int) -> np.ndarray:
    """uint8 `[channels, 3]`: the colour `state_image` gives each MinAtar channel."""
    return state_image(np.eye(channels, dtype=np.float32)[None], cell=1)[0]


def panel(
    image: np.ndarray,
    title: str,
    lines: Sequence[str],
    disagree: bool = False,
    border: int = 4,
):
    """One policy's frame (PIL RGB): title, the state framed (red where `disagree`), text lines."""
    from PIL import Image, ImageDraw

    font, line_h = _font(), 14
    h, w = image.shape[:2]
    width = max(w + 2 * border + 8, 150)
    canvas = Image.new("RGB", (width, line_h + h + 2 * border + 4 + line_h * len(lines)), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 1), title, fill=BLACK, font=font)
    x0, y0 = (width - w) // 2 - border, line_h
    draw.rectangle(
        [x0, y0, x0 + w + 2 * border - 1, y0 + h + 2 * border - 1], fill=RED if disagree else GREY
    )
    canvas.paste(Image.fromarray(image), (x0 + border, y0 + border))
    for i, text in enumerate(lines):
        colour = RED if disagree and text.startswith("teacher") else BLACK
        draw.text((4, y0 + h + 2 * border + 2 + i * line_h), text, fill=colour, font=font)
    return canvas


def legend(env_id: str, width: int):
    """A strip naming MinAtar's object channels in their colours (None for other envs)."""
    from PIL import Image, ImageDraw

    names = envs.MINATAR_CHANNELS.get(env_id)
    if not names:
        return None
    colours, font = channel_colours(len(names)), _font()
    items = [(n, tuple(int(v) for v in c)) for n, c in zip(names, colours, strict=True)]
    widths = [16 + int(font.getlength(n)) + 10 for n, _ in items]
    rows, x = [[]], 4
    for item, w in zip(items, widths, strict=True):
        if x + w > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((item, x))
        x += w
    strip = Image.new("RGB", (width, 16 * len(rows) + 4), WHITE)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        for (name, colour), x in row:
            y = 3 + 16 * r
            draw.rectangle([x, y, x + 10, y + 10], fill=colour, outline=GREY)
            draw.text((x + 14, y - 1), name, fill=BLACK, font=font)
    return strip


def compose(panels: Sequence, strip=None):
    """Panels side by side (PIL images), the legend strip under them."""
    from PIL import Image

    width = sum(p.width for p in panels)
    height = max(p.height for p in panels) + (strip.height if strip is not None else 0)
    frame = Image.new("RGB", (width, height), WHITE)
    x = 0
    for p in panels:
        frame.paste(p, (x, 0))
        x += p.width
    if strip is not None:
        frame.paste(strip, (0, height - strip.height))
    return frame


def frame_count(tracks: Sequence[Sequence[Track]]) -> int:
    """Frames of `render_frames(tracks)`: each episode lasts as long as its longest track."""
    return sum(max(t[e].steps for t in tracks) for e in range(len(tracks[0])))


def render_frames(tracks: Sequence[Sequence[Track]], names: Sequence[str], env_id: str) -> Iterator:
    """PIL frames of `[policy][episode]` tracks, one panel per policy; a policy whose episode
    ended holds its last state (marked 'episode over') until the longest one ends."""
    actions = envs.action_names(env_id)
    strip, first = None, True
    for e in range(len(tracks[0])):
        episode = [t[e] for t in tracks]
        for step in range(max(t.steps for t in episode)):
            panels = []
            for i, (name, t) in enumerate(zip(names, episode, strict=True)):
                s = min(step, t.steps - 1)
                over = step >= t.steps
                lines = [
                    f"ep {e + 1}  step {s + 1}  score {t.score[s]:g}",
                    "episode over" if over else f"action {actions[int(t.action[s])]}",
                ]
                disagree = bool(i > 0 and t.disagrees[s] and not over)
                if i > 0:
                    lines.append(f"teacher {actions[int(t.teacher_greedy[s])]}")
                panels.append(panel(state_image(t.obs[s]), name, lines, disagree))
            if first:
                strip, first = legend(env_id, sum(p.width for p in panels)), False
            yield compose(panels, strip)


# ---------------------------------------------------------------------------- writing


class NoEncoder(RuntimeError):
    """No MP4 encoder is installed."""


def write_gif(frames: Sequence, path: str | Path, fps: float) -> Path:
    frames = list(frames)
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / fps),
        loop=0,
        disposal=1,
    )
    return Path(path)


def write_mp4(frames: Sequence, path: str | Path, fps: float) -> Path:
    """H.264 through imageio-ffmpeg (`pip install 'distill[video]'`) where installed, else
    MPEG-4 part 2 through OpenCV's own FFmpeg; NoEncoder if neither can write."""
    arrays = [np.asarray(f) for f in frames]
    h, w = (x + x % 2 for x in arrays[0].shape[:2])  # H.264 in yuv420p wants even sizes
    arrays = [
        np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1]), (0, 0)), constant_values=255)
        for a in arrays
    ]
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        writer = imageio_ffmpeg.write_frames(
            str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2
        )
        writer.send(None)
        for a in arrays:
            writer.send(np.ascontiguousarray(a))
        writer.close()
        return Path(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    video = (
        None
        if cv2 is None
        else cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    )
    if video is None or not video.isOpened():
        raise NoEncoder(
            f"--out {path}: no MP4 encoder is installed (pip install 'distill[video]' for "
            "imageio-ffmpeg), or write a .gif"
        )
    for a in arrays:
        video.write(a[..., ::-1].copy())
    video.release()
    return Path(path)


def write(frames: Sequence, path: str | Path, fps: float = 15) -> Path:
    """Frames (PIL images) to a .gif or .mp4 file (its folder made if missing)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(frames, path, fps)
    if suffix == ".mp4":
        return write_mp4(frames, path, fps)
    raise ValueError(f"{path}: write a .gif or an .mp4")


def seed_policy(env_id: str, net: str, params: Any, index: int = 0, kind: str = "student"):
    """Seed `index` of students trained side by side (`params` with a leading seeds axis, as
    `experiments.distil_seeds` returns them) as a `Policy` that `record` and `watch` take."""
    from distill import checkpoint

    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[index], params)
    apply = families.build_network(env_id, net).apply
    manifest = {"kind": kind, "env_id": env_id, "net": net, "seed": index}
    num_actions = envs.spec(env_id).num_actions
    return checkpoint.Policy(env_id, net, num_actions, one, manifest, f"{net} seed {index}", apply)


def label(policy) -> str:
    """A panel's title: 'teacher', 'student net1', 'untrained net2'."""
    kind = policy.kind
    return kind if kind == policy.net else f"{kind} {policy.net}"


def watch(
    policies: Sequence,
    out: str | Path,
    episodes: int = 1,
    seed: int = 0,
    max_steps: int | None = None,
    epsilon: float = evaluate.EVAL_EPSILON,
    fps: float = 15,
    names: Sequence[str] | None = None,
) -> dict:
    """Record `policies` (the first is the teacher) and write the video to `out`; returns what
    was written: path, frames, and each policy's scores and disagreement rate."""
    tracks = record(policies, episodes, seed, max_steps, epsilon)
    names = list(names) if names is not None else [label(p) for p in policies]
    path = write(render_frames(tracks, names, policies[0].env_id), out, fps)
    return {
        "path": str(path),
        "frames": frame_count(tracks),
        "policies": [
            {
                "name": n,
                "scores": [float(t.score[-1]) for t in ts],
                "disagreement": float(np.mean(np.concatenate([t.disagrees for t in ts]))),
            }
            for n, ts in zip(names, tracks, strict=True)
        ],
    }


def inline(path: str | Path):
    """The GIF at `path` as a notebook output (IPython.display.Image), shown animated."""
    from IPython.display import Image

    return Image(data=Path(path).read_bytes(), format="gif")


# ---------------------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    """The options of `distill play`."""
    from distill import cliconf

    parser.add_argument("paths", nargs="+", metavar="PATH", help="the teacher, then students")
    parser.add_argument("--out", required=True, help="the video: FILE.gif or FILE.mp4")
    parser.add_argument("--episodes", type=cliconf.positive_int, default=1, help="default 1")
    parser.add_argument("--seed", type=cliconf.integer, default=0, help="default 0")
    parser.add_argument(
        "--max-steps", type=cliconf.positive_int, help="steps per episode at most (default: all)"
    )
    parser.add_argument(
        "--epsilon",
        type=cliconf.number,
        default=evaluate.EVAL_EPSILON,
        help=f"exploration, the same draws for every policy (default {evaluate.EVAL_EPSILON})",
    )
    parser.add_argument("--fps", type=cliconf.number, default=15, help="frames per second")


def command(args) -> int:
    """`distill play`: the policies side by side in one video; a line per policy."""
    from distill import checkpoint
    from distill.config import ConfigError

    if Path(args.out).suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {args.out}: write a .gif or an .mp4")
    if not 0 <= args.epsilon <= 1 or not args.fps > 0:
        raise ConfigError("--epsilon must lie in [0, 1] and --fps be positive")
    out = Path(args.out)
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise ConfigError(f"--out {args.out}: not a file name in a folder")
    policies = [checkpoint.load(p) for p in args.paths]
    try:
        done = watch(
            policies, args.out, args.episodes, args.seed, args.max_steps, args.epsilon, args.fps
        )
    except NoEncoder as e:
        raise ConfigError(str(e)) from None
    for i, p in enumerate(done["policies"]):
        differs = f"{p['disagreement']:.0%} of its states" if i else ""
        agree = f", greedy action differs from the teacher's on {differs}" if i else ""
        print(f"{p['name']}: scores {', '.join(f'{s:g}' for s in p['scores'])}{agree}")
    print(f"{done['frames']} frames in {done['path']}")
    return 0
