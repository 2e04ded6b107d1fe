"""TokenCut maps against the definition computed the slow, obvious way with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from attgmae.maps import ncut, tokencut


def _object_keys(seed: int, batch: int = 3) -> torch.Tensor:
    """Patch keys [B, 196, 64]: a rectangle of 'object' patches sharing a direction, background
    patches sharing another, plus noise (like DINO keys on a photo)."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((batch, 196, 64)) * 0.9
    for b in range(batch):
        grid = np.zeros((14, 14), bool)
        r0, c0 = rng.integers(0, 7, 2)
        grid[r0 : r0 + rng.integers(3, 7), c0 : c0 + rng.integers(3, 7)] = True
        object_dir, background_dir = rng.standard_normal(64), rng.standard_normal(64)
        keys[b, grid.ravel()] += 1.2 * object_dir
        keys[b, ~grid.ravel()] += 0.8 * background_dir
    return torch.from_numpy(keys).float()


def _slow_tokencut(keys: np.ndarray, threshold=0.2, eps=1e-5):
    """The issue's definition, one image, straight from the text (scipy generalized eigh)."""
    features = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    similarity = features @ features.T
    affinity = np.where(similarity > threshold, 1.0, eps)
    degree = np.diag(affinity.sum(axis=1))
    values, vectors = scipy.linalg.eigh(degree - affinity, degree, subset_by_index=[1, 2])
    x = vectors[:, 0]
    bipartition = x > x.mean()
    seed = np.argmax(np.abs(x))
    if not bipartition[seed]:
        x, bipartition = -x, ~bipartition
    x_minmax = (x - x.min()) / (x.max() - x.min())
    labels, _ = ndimage.label(bipartition.reshape(14, 14))
    mask = labels == labels.reshape(-1)[seed]
    return {
        "fg-eigvec": (x_minmax * bipartition).reshape(14, 14),
        "eigvec": x_minmax.reshape(14, 14),
        "mask": mask.astype(float),
        "bipartition": bipartition,
        "eigengap": values[1] - values[0],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("map_kind", ["fg-eigvec", "eigvec", "mask"])
def test_fast_solver_matches_scipy_generalized(seed, map_kind):
    keys = _object_keys(seed)
    maps = tokencut.tokencut_maps(keys, map_kind=map_kind)
    assert maps.shape == (3, 14, 14) and maps.dtype == np.float32
    for b in range(3):
        slow = _slow_tokencut(keys[b].double().numpy())
        assert slow["eigengap"] > 1e-3  # a well-posed case: the eigenvector is unique
        np.testing.assert_allclose(maps[b], slow[map_kind], atol=1e-4)


@pytest.mark.parametrize("seed", [3, 4])
def test_bipartitions_equal_on_noisy_keys(seed):
    """Pure-noise keys (hard, unclustered graphs): bipartitions still equal scipy's."""
    rng = np.random.default_rng(seed)
    keys = torch.from_numpy(rng.standard_normal((4, 196, 32)) + 0.5).float()
    adjacency = tokencut.patch_adjacency(keys, 0.2).numpy()
    for b in range(4):
        slow = _slow_tokencut(keys[b].double().numpy())
        if slow["eigengap"] < 1e-6:
            continue  # degenerate eigenspace: any vector in it is a valid answer
        affinity = ncut.adjacency_to_affinity(adjacency[b], 1e-5)
        _, bipartition, _ = ncut.bipartition_with_sign_rule(ncut.second_eigvec_fast(affinity))
        np.testing.assert_array_equal(bipartition, slow["bipartition"])


def test_fast_eigvec_has_scipys_scaling():
    """x = D^-1/2 y has x^T D x = 1, the normalization of scipy's generalized solver."""
    adjacency = tokencut.patch_adjacency(_object_keys(5, 1), 0.2).numpy()[0]
    affinity = ncut.adjacency_to_affinity(adjacency, 1e-5)
    fast = ncut.second_eigvec_fast(affinity)
    slow = ncut.second_eigvec_reference(affinity)
    sign = np.sign(fast @ slow)
    np.testing.assert_allclose(fast, sign * slow, atol=1e-8)
    np.testing.assert_allclose(fast @ (affinity.sum(1) * fast), 1.0, atol=1e-10)


def test_sign_rule_independent_of_solver_sign():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(196)
    x_pos, part_pos, seed_pos = ncut.bipartition_with_sign_rule(x)
    x_neg, part_neg, seed_neg = ncut.bipartition_with_sign_rule(-x)
    np.testing.assert_array_equal(x_pos, x_neg)
    np.testing.assert_array_equal(part_pos, part_neg)
    assert seed_pos == seed_neg and part_pos[seed_pos]


def test_sign_rule_flips_when_seed_outside():
    x = np.array([0.1, 0.2, 0.15, -0.9])  # |x| largest at index 3, which is below the mean
    flipped, bipartition, seed = ncut.bipartition_with_sign_rule(x)
    assert seed == 3
    np.testing.assert_array_equal(flipped, -x)
    np.testing.assert_array_equal(bipartition, [False, False, False, True])


def test_fg_eigvec_is_zero_outside_bipartition_and_one_at_seed():
    keys = _object_keys(6, 2)
    fg = tokencut.tokencut_maps(keys, map_kind="fg-eigvec")
    full = tokencut.tokencut_maps(keys, map_kind="eigvec")
    for b in range(2):
        slow = _slow_tokencut(keys[b].double().numpy())
        inside = slow["bipartition"].reshape(14, 14)
        assert (fg[b][~inside] == 0).all()
        np.testing.assert_allclose(fg[b][inside], full[b][inside], atol=1e-6)
        assert fg[b].max() == pytest.approx(1.0)
        assert 0 < inside.sum() < 196


def test_mask_uses_4_connectivity():
    bipartition = np.zeros((14, 14), bool)
    bipartition[2:4, 2:4] = True  # the seed's block
    bipartition[4, 4] = True  # touches the block only diagonally: another 4-component
    bipartition[2, 4] = True  # touches it by an edge: same component
    component = ncut.seed_component(bipartition, seed=2 * 14 + 2)
    assert component[2, 4] and component[3, 3]
    assert not component[4, 4]
    assert component.sum() == 5


def test_process_pool_equals_in_process():
    keys = _object_keys(7, 6)
    try:
        pooled = tokencut.tokencut_maps(keys, map_kind="fg-eigvec", workers=2)
        with tokencut.TokenCutRunner(2, map_kind="mask") as runner:
            pending = runner.submit(keys)
            masks = pending.result()
    finally:
        tokencut.close_pools()
    np.testing.assert_array_equal(pooled, tokencut.tokencut_maps(keys, map_kind="fg-eigvec"))
    np.testing.assert_array_equal(masks, tokencut.tokencut_maps(keys, map_kind="mask"))


def test_reference_path_equals_fast_path():
    keys = _object_keys(8, 2)
    for kind in ("fg-eigvec", "mask"):
        np.testing.assert_allclose(tokencut.tokencut_maps(keys, map_kind=kind),
                                   tokencut.tokencut_maps_reference(keys, map_kind=kind),
                                   atol=1e-4)


def test_tau_and_eps_are_used():
    keys = _object_keys(9, 1)
    base = tokencut.tokencut_maps(keys, map_kind="eigvec")
    assert not np.allclose(base, tokencut.tokencut_maps(keys, threshold=0.5, map_kind="eigvec"))
    slow = _slow_tokencut(keys[0].double().numpy(), threshold=0.5, eps=1e-3)
    np.testing.assert_allclose(tokencut.tokencut_maps(keys, threshold=0.5, eps=1e-3)[0],
                               slow["fg-eigvec"], atol=1e-4)


def test_bad_parameters_raise():
    keys = _object_keys(0, 1)
    with pytest.raises(ValueError, match="map_kind"):
        tokencut.tokencut_maps(keys, map_kind="heatmap")
    with pytest.raises(ValueError, match="eps"):
        tokencut.tokencut_maps(keys, eps=0.0)


# ---- the device solver (torch.linalg.eigh, batched): the GPU path, run here on the CPU ----


def test_device_solver_agrees_with_scipy():
    """torch's batched eigh on the symmetric form (what a GPU runs) against scipy's fast solver
    and TokenCut's own generalized call: the same maps, to float64 round-off."""
    keys = _object_keys(10, 3)
    slow = [_slow_tokencut(k.double().numpy()) for k in keys]
    for map_kind in ("fg-eigvec", "eigvec", "mask"):
        on_device = tokencut.DeviceSolver(map_kind=map_kind).submit(keys).result()
        assert on_device.shape == (3, 14, 14) and on_device.dtype == np.float32
        np.testing.assert_allclose(on_device, tokencut.tokencut_maps(keys, map_kind=map_kind),
                                   atol=1e-5)
        for b in range(3):
            np.testing.assert_allclose(on_device[b], slow[b][map_kind], atol=1e-4)


def test_device_solver_bipartitions_equal_on_noisy_keys():
    rng = np.random.default_rng(3)
    keys = torch.from_numpy(rng.standard_normal((4, 196, 32)) + 0.5).float()
    vectors = tokencut.fiedler_vectors(tokencut.patch_adjacency(keys, 0.2), 1e-5).numpy()
    for b in range(4):
        slow = _slow_tokencut(keys[b].double().numpy())
        if slow["eigengap"] < 1e-6:
            continue  # degenerate eigenspace: any vector in it is a valid answer
        _, bipartition, _ = ncut.bipartition_with_sign_rule(vectors[b])
        np.testing.assert_array_equal(bipartition, slow["bipartition"])


def test_graphs_are_packed_where_the_keys_are_as_numpy_packs_them():
    rng = np.random.default_rng(5)
    for width in (196 * 196, 13):  # a multiple of 8, and one padded
        bits = rng.random((3, width)) > 0.5
        packed = tokencut.pack_bits(torch.from_numpy(bits))
        assert packed.dtype == torch.uint8
        np.testing.assert_array_equal(packed.numpy(), np.packbits(bits, axis=1))


def test_the_map_computer_puts_tokencut_on_the_device_when_asked():
    """MapComputer(device_pools=True) runs the device solver (no processes), and its maps equal
    the process pool's within round-off."""
    from attgmae.maps.compute import MapBatch, MapComputer

    keys = _object_keys(11, 3)
    params = {"tokencut": {"tau": 0.2, "eps": 1e-5, "map": "fg-eigvec"}}
    computer = MapComputer(params, models={}, amp=False, device_pools=True)
    assert isinstance(computer.pools["tokencut"], tokencut.DeviceSolver)
    batch = MapBatch(torch.zeros(3, 3, 224, 224), ["a", "b", "c"], None, {}, False, computer.pools)
    batch._forwards["dino"] = (None, keys)  # the shared DINO forward's keys
    pending = tokencut.batch_maps(batch, params["tokencut"])
    assert pending.done()
    np.testing.assert_allclose(pending.result(), tokencut.tokencut_maps(keys), atol=1e-5)
    computer.close()


def test_the_pool_gets_a_batch_once_its_graphs_have_reached_the_host(monkeypatch):
    """With a GPU the graphs' copy to the host is still in flight when ``submit`` returns: the
    batch goes to the pool at the next submit (or when its result is asked for), and nothing
    is lost or reordered."""
    landed = []

    class SlowCopy(tokencut.HostCopy):  # a copy that lands only when waited for
        def done(self):
            return False

        def numpy(self):
            landed.append(len(landed))
            return super().numpy()

    monkeypatch.setattr(tokencut, "HostCopy", SlowCopy)
    first, second = _object_keys(12, 2), _object_keys(13, 2)
    with tokencut.TokenCutRunner(1) as runner:
        pending_first = runner.submit(first)
        assert landed == [] and not pending_first.done()  # still in flight: not handed over
        pending_second = runner.submit(second)
        assert landed == [0]  # the first batch went to the pool when the second came
        maps = [pending_first.result(), pending_second.result()]
    np.testing.assert_array_equal(maps[0], tokencut.tokencut_maps(first))
    np.testing.assert_array_equal(maps[1], tokencut.tokencut_maps(second))
