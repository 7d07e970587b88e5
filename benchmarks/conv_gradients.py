"""Why `networks.conv_valid` has two gradient forms: XLA CPU runs native convolution gradients
fast at the top level of a program and slowly inside loop bodies (`lax.scan`), where the
im2col form (patches @ kernel) is faster. Times one teacher-network gradient per form, at the
top level and per iteration of a scan, printed as a ratio to the native top-level time measured
in the same run. On a GPU both forms should be close; `conv_grad='auto'` picks native there.

    python benchmarks/conv_gradients.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from common import median_time

from distill import envs, networks, xla

STEPS = 10


def gradient_times(env_id: str, batch: int, form: str) -> tuple[float, float]:
    """(seconds per gradient at the top level, seconds per gradient inside a scan)."""
    spec = envs.spec(env_id)
    net = networks.build("teacher", spec.obs_shape, spec.num_actions, conv_grad=form)
    params = networks.init_params(net, jax.random.PRNGKey(0), spec.obs_shape, spec.obs_dtype)
    obs = jnp.zeros((batch, *spec.obs_shape), spec.obs_dtype)
    grad = jax.grad(lambda p: jnp.mean(net.apply(p, obs) ** 2))
    top = xla.jit(grad)

    @xla.jit
    def looped(p):
        def body(p, _):
            return jax.tree_util.tree_map(lambda a, g: a - 1e-6 * g, p, grad(p)), None

        return jax.lax.scan(body, p, None, length=STEPS)[0]

    t_top = median_time(lambda: jax.block_until_ready(top(params)), 5)
    t_loop = median_time(lambda: jax.block_until_ready(looped(params)), 3) / STEPS
    return t_top, t_loop


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"{'network':<28} {'form':<7} {'top ms':>8} {'scan ms':>8}  ratios to native top")
    for env_id, batch in (("ALE/Pong-v5", 32), ("Breakout-MinAtar", 256)):
        ref = None
        for form in ("native", "im2col"):
            top, loop = gradient_times(env_id, batch, form)
            ref = ref or top
            print(
                f"{env_id + ' teacher b' + str(batch):<28} {form:<7} {top * 1e3:>8.2f} "
                f"{loop * 1e3:>8.2f}  {top / ref:.2f} / {loop / ref:.2f}"
            )


if __name__ == "__main__":
    main()
