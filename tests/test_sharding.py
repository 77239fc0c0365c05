"""Sharded sweeps on 4 host devices equal one device (run in a subprocess: XLA_FLAGS must be
set before JAX starts)."""

import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import linfeat as lf
    from linfeat import fine_tune_batch
    from linfeat._batched import batch_mesh
    assert len(jax.devices()) == 4
    keys = jax.random.split(jax.random.key(0), 10)
    probs = jax.vmap(lambda k: lf.make_problem(k, d=60, k=3, m=8, feature_error=0.5))(keys)
    v0s = jax.random.normal(jax.random.key(1), (10, 3))
    # without metrics (two compiles in all; metrics are per lane, as on one device)
    one = fine_tune_batch(probs, v0s, batch_size=None, with_metrics=False)
    four = fine_tune_batch(probs, v0s, devices=4, with_metrics=False)
    assert np.all(np.asarray(four.status) == 0)
    # a second call on the same shapes (compiled code, fresh transfers) gives the same lanes:
    # a host buffer updated while its transfer was in flight once left lanes unsolved here
    again = fine_tune_batch(probs, v0s, devices=4, with_metrics=False)
    np.testing.assert_array_equal(np.asarray(again.num_steps), np.asarray(four.num_steps))
    for name in ("v", "B", "v_final", "B_final", "t_final"):
        a, b = np.asarray(getattr(again, name)), np.asarray(getattr(four, name))
        np.testing.assert_allclose(a, b, atol=1e-12, err_msg=name)
    # Per-lane arithmetic is the same; only the shard shapes (10 lanes vs 3 per device, padded)
    # change BLAS blocking, so results agree to rounding, far inside the solver tolerance.
    for name in ("v", "B", "v_final", "B_final"):
        a, b = np.asarray(getattr(one, name)), np.asarray(getattr(four, name))
        assert a.shape == b.shape, name
        assert np.max(np.abs(a - b)) < 1e-10, (name, np.max(np.abs(a - b)))
    # Q's column signs are a gauge of the eigensolver: compare the projectors Q Q^T
    proj = lambda Q: np.einsum("bdr,ber->bde", Q, Q)
    np.testing.assert_allclose(proj(one.basis), proj(four.basis), atol=1e-12)
    mesh = batch_mesh(4)
    assert mesh.axis_names == ("batch",)
    print("OK")
    """
)


def test_four_devices_equal_one():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip())  # keeps conftest.py's compile flags
    proc = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout
