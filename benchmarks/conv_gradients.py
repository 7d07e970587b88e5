"""Why `networks.conv` has three forms: XLA CPU runs native convolution gradients fast at the
top level of a program and slowly inside loop bodies (`lax.scan`), where the im2col form
(patches @ kernel) is faster; under `jax.vmap` over students (per-student kernels, as the
experiments train seeds and losses side by side) the native forward becomes a grouped
convolution, slow too, where "matmul" (im2col forward and gradients) is one batched matmul.
Times one teacher-network gradient per form, at the top level, per iteration of a scan, and per
iteration of a scan of 9 MinAtar students vmapped, printed as ratios to the native top-level
time of one student measured in the same run. On a GPU the forms should be close; `conv_grad='auto'`
picks native there.

    python benchmarks/conv_gradients.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from common import median_time

from distill import envs, networks, xla

STEPS = 10
STUDENTS = 9


def gradient_times(env_id: str, batch: int, form: str) -> tuple[float, float, float]:
    """Seconds per gradient: at the top level, inside a scan, of 9 students inside a scan."""
    spec = envs.spec(env_id)
    net = networks.build("teacher", spec.obs_shape, spec.num_actions, conv_grad=form)
    params = networks.init_params(net, jax.random.PRNGKey(0), spec.obs_shape, spec.obs_dtype)
    obs = jnp.zeros((batch, *spec.obs_shape), spec.obs_dtype)
    grad = jax.grad(lambda p, o: jnp.mean(net.apply(p, o) ** 2))
    top = xla.jit(grad)

    def looped(p, o):
        def body(p, _):
            return jax.tree_util.tree_map(lambda a, g: a - 1e-6 * g, p, grad(p, o)), None

        return jax.lax.scan(body, p, None, length=STEPS)[0]

    # every student its own minibatch, as in the experiments (a shared one would let XLA stack
    # the students' kernels into one convolution)
    many = jax.tree_util.tree_map(lambda x: jnp.stack([x] * STUDENTS), (params, obs))
    one, looped_many = xla.jit(looped), xla.jit(jax.vmap(looped))
    t_top = median_time(lambda: jax.block_until_ready(top(params, obs)), 5)
    t_loop = median_time(lambda: jax.block_until_ready(one(params, obs)), 3) / STEPS
    if spec.is_atari:  # Atari students train one at a time (host envs): no vmapped case
        return t_top, t_loop, float("nan")
    t_many = median_time(lambda: jax.block_until_ready(looped_many(*many)), 3) / STEPS
    return t_top, t_loop, t_many


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(
        f"{'network':<28} {'form':<7} {'top ms':>8} {'scan ms':>8} {'x9 scan':>8}  "
        "ratios to native top (x9: per student)"
    )
    for env_id, batch in (("Breakout-MinAtar", 64), ("ALE/Pong-v5", 32)):
        ref = None
        for form in ("native", "im2col", "matmul"):
            top, loop, many = gradient_times(env_id, batch, form)
            ref = ref or top
            print(
                f"{env_id + ' teacher b' + str(batch):<28} {form:<7} {top * 1e3:>8.2f} "
                f"{loop * 1e3:>8.2f} {many * 1e3:>8.2f}  {top / ref:.2f} / {loop / ref:.2f} / "
                f"{many / STUDENTS / ref:.2f}"
            )


if __name__ == "__main__":
    main()
