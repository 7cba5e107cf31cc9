"""Access to ../shared/golden (the reference's own outputs) for the tests.

The fixture is required: a missing fixture fails the golden tests instead of
skipping them.
"""

import gzip
import json
import os
import shutil

import numpy as np
import pytest

from misc.config import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.environ.get("STACKGAN_GOLDEN", os.path.join(ROOT, "..", "shared", "golden"))

# Our discriminator applies its three moving-average updates in this order
# (see StageIGAN.discriminator_logits); the fixture codes chains 0/1/2 as
# real/wrong/fake.
OUR_D_UPDATE_ORDER = (1, 0, 2)
EMA_RATE = np.float32(1.0 - 0.9)


def golden_path(*parts):
    path = os.path.join(GOLDEN_DIR, *parts)
    if not os.path.exists(path):
        pytest.fail(f"golden fixture missing: {path} (CI checks out ../shared beside the repo)")
    return path


def tiny_config():
    """The fixture's tiny config (golden README, section 3)."""
    c = default_config()
    c.Z_DIM = 10
    c.GAN.EMBEDDING_DIM = 16
    c.GAN.GF_DIM = 16
    c.GAN.DF_DIM = 8
    c.TRAIN.BATCH_SIZE = 4
    c.TRAIN.NUM_COPY = 1
    return c


TEXT_DIM = 32


def load_arrays(stage):
    with np.load(golden_path(stage, f"{stage}_tiny_golden.npz")) as data:
        return {k: data[k] for k in data.files}


def load_meta(stage):
    with open(golden_path(stage, f"{stage}_tiny_golden_meta.json")) as f:
        return json.load(f)


def _gunzip(src, dst_dir):
    dst = os.path.join(dst_dir, os.path.basename(src)[:-3])
    with gzip.open(src, "rb") as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    return dst


def unpack_checkpoint(stage, form, dst_dir):
    """Decompress the tiny reference checkpoint; return the path TF opens
    (V1: the file; V2: the prefix)."""
    name = {"stageI": "stageI_tiny_model_100.ckpt", "stageII": "stageII_tiny_model_200.ckpt"}[stage]
    os.makedirs(dst_dir, exist_ok=True)
    if form == "v1":
        return _gunzip(golden_path(stage, name + ".gz"), dst_dir)
    for suffix in (".index", ".data-00000-of-00001"):
        _gunzip(golden_path(stage, "v2", name + suffix + ".gz"), dst_dir)
    return os.path.join(dst_dir, name)


def manifest_rows(filename):
    """{name: (shape, kind)} of every manifest row; reads both layouts
    (name, shape, dtype, trainable, kind, index) and the demo's (name, shape, kind)."""
    rows = {}
    with open(golden_path(filename)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            kind = fields[4] if len(fields) == 6 else fields[2]
            rows[fields[0]] = (tuple(int(d) for d in fields[1].strip("[]").split(",") if d), kind)
    return rows


def read_manifest(filename, kinds=("model", "bn_moving_stat")):
    """{name: shape} of the manifest rows of the given kinds."""
    return {name: shape for name, (shape, kind) in manifest_rows(filename).items() if kind in kinds}


def replay_ema(value, schedule, stats):
    """Float32 replay of interleaved reference EMA chains on one variable.

    ``schedule``: event codes, 2k = chain k reads the variable, 2k+1 = chain k
    writes ``var - (read_k - stats[k]) * 0.1``.
    """
    var = np.asarray(value, np.float32).copy()
    reads = {}
    for event in schedule:
        chain, write = divmod(int(event), 2)
        if write:
            var = (var - (reads[chain] - np.asarray(stats[chain], np.float32)) * EMA_RATE).astype(np.float32)
        else:
            reads[chain] = var.copy()
    return var


def sequential_schedule(order):
    return [code for k in order for code in (2 * k, 2 * k + 1)]


def assert_close(name, ours, ref, atol=0.0, rtol=0.0):
    ours = np.asarray(ours, np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, np.float64)
    err = np.abs(ours - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (
        f"{name}: max |ours - ref| = {err.max():.3e} exceeds atol {atol:g} + rtol {rtol:g} "
        f"(at flat index {worst}: ours {ours.ravel()[worst]:.8g}, ref {ref.ravel()[worst]:.8g})")


def assert_adam_first_step(name, before, ours, ref, lr, gradient):
    """Compare weights after one Adam step from fresh slots.

    The first step is ``lr * g / (|g| + c)`` with ``c = eps / sqrt(1 - beta2)
    ~ 3.2e-7``: a full ``lr`` for ordinary gradients, but ill-conditioned
    where ``|g|`` is within a few multiples of ``c`` (float32 rounding of the
    gradient decides the step there).  Where our gradient is at least 10 c
    the weights must match to 1% of lr; everywhere the steps must be bounded
    by lr.  Returns the fraction of well-conditioned elements.
    """
    before, ours, ref = (np.asarray(a, np.float64) for a in (before, ours, ref))
    assert np.all(np.abs(ours - before) <= lr * (1 + 1e-3)), f"{name}: an Adam step exceeds lr"
    assert np.all(np.abs(ref - before) <= lr * (1 + 1e-3)), f"{name}: a reference step exceeds lr"
    well = np.abs(np.asarray(gradient)) >= ADAM_WELL_CONDITIONED
    assert_close(name + " (well-conditioned elements)", ours[well], ref[well], atol=0.01 * lr)
    return well.mean()


ADAM_WELL_CONDITIONED = 10 * 1e-8 / np.sqrt(1 - 0.999)


# -- helpers shared by the Stage-I and Stage-II golden tests ----------------

def reference_values(networks):
    """{reference name: numpy copy} of every variable of the networks."""
    return {n: v.numpy().copy() for net in networks for n, v in net.reference_variables().items()}


def bn_layer_names(networks):
    """{id(batch-norm layer): '<scope>/<bn scope>'} (the fixture's layer keys)."""
    from misc.layers import BatchNorm

    names = {}
    for network in networks:
        for layer in network._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, BatchNorm):
                names[id(layer)] = f"{network.scope}/{layer.scope}"
    return names


def label_statistics(records, names, d_call_labels):
    """{'<layer>/<k>': (mean, variance)} with the fixture's k: the call
    index for generator layers; for discriminator layers (scope d_net or
    hr_d_net) the construct (0 real, 1 wrong, 2 fake) of each call."""
    calls, out = {}, {}
    for layer, mean, variance in records:
        name = names[id(layer)]
        index = calls.get(name, 0)
        calls[name] = index + 1
        k = d_call_labels[index] if name.split("/", 1)[0] in ("d_net", "hr_d_net") else index
        out[f"{name}/{k}"] = (mean.numpy(), variance.numpy())
    return out


def stat_tolerance(variance):
    """rtol 1e-4 (golden README) plus an absolute floor of 1e-5 of the
    layer's activation scale: means of layers fed by normalised maps are
    exactly zero up to rounding (~1e-8), where relative error is meaningless."""
    scale = float(np.sqrt(np.mean(np.abs(variance))))
    return dict(rtol=1e-4, atol=1e-5 * scale)


def check_statistics(label, ours, arrays, prefix):
    """Every recorded batch statistic against ``<prefix><layer>/<k>/<stat>``."""
    keys = {k[len(prefix):].rsplit("/", 1)[0] for k in arrays if k.startswith(prefix)}
    assert set(ours) == keys, f"{label}: recorded {sorted(set(ours) ^ keys)}"
    for key, (mean, variance) in ours.items():
        tol = stat_tolerance(arrays[f"{prefix}{key}/variance"])
        assert_close(f"{prefix}{key}/mean", mean, arrays[f"{prefix}{key}/mean"], **tol)
        assert_close(f"{prefix}{key}/variance", variance, arrays[f"{prefix}{key}/variance"], **tol)


def bn_layers(values, scope):
    return [n[:-len("/mean")] for n in values if n.startswith(scope + "/") and n.endswith("/mean")]


def check_deterministic_moving_statistics(values, arrays, phase, scopes):
    """Moving statistics of layers updated once per run (or not at all)."""
    for scope in scopes:
        for layer in bn_layers(values, scope):
            tol = stat_tolerance(arrays[f"step/{phase}/bn/{layer}/variance"])
            for stat in ("mean", "variance"):
                assert_close(f"{phase} {layer}/{stat}", values[f"{layer}/{stat}"],
                             arrays[f"step/{phase}/bn/{layer}/{stat}"], **tol)


def check_discriminator_moving_statistics(before, after_d, d_stats, arrays, scope, after_g=None, g_stats=None):
    """D-update moving statistics, order-aware (golden README Q11): our EMA in
    our order on our statistics; the fixture as the EMA in its recorded
    schedule; ours vs the fixture up to the effect of the order.  With
    ``after_g``: the G update's single EMA step on the fake statistics.
    Returns how many layer-statistics had the fixture's order equal to ours."""
    same_order = 0
    for layer in bn_layers(before, scope):
        for index, stat in enumerate(("mean", "variance")):
            name = f"{layer}/{stat}"
            pre = before[name]
            ours_stats = [d_stats[f"{layer}/{k}"][index] for k in range(3)]
            ref_stats = [arrays[f"bnstat/{layer}/{k}/{stat}"] for k in range(3)]
            ref = arrays[f"step/after_dstep/bn/{name}"]
            schedule = arrays[f"step/dstep_bn_update_schedule/{layer}/{stat}"]
            tol = stat_tolerance(arrays[f"step/after_dstep/bn/{layer}/variance"])
            ours_order = sequential_schedule(OUR_D_UPDATE_ORDER)
            assert_close(f"our EMA {name}", after_d[name], replay_ema(pre, ours_order, ours_stats),
                         atol=1e-7, rtol=1e-6)
            assert_close(f"reference replay {name}", replay_ema(pre, schedule, ref_stats), ref, **tol)
            order_effect = np.abs(replay_ema(pre, ours_order, ref_stats) - replay_ema(pre, schedule, ref_stats))
            assert_close(f"after_dstep {name}", after_d[name], ref, atol=tol["atol"] + order_effect,
                         rtol=tol["rtol"])
            if tuple(arrays[f"step/dstep_bn_update_order/{layer}/{stat}"]) == OUR_D_UPDATE_ORDER:
                same_order += 1
            if after_g is not None:
                fake = g_stats[f"{layer}/2"][index]
                expected = replay_ema(after_d[name], [4, 5], [None, None, fake])
                assert_close(f"after_gstep {name}", after_g[name], expected, atol=1e-7, rtol=1e-6)
                ref_g = arrays[f"step/after_gstep/bn/{name}"]
                tol_g = stat_tolerance(arrays[f"step/after_gstep/bn/{layer}/variance"])
                assert_close(f"after_gstep vs reference {name}", after_g[name], ref_g,
                             atol=tol_g["atol"] + 0.9 * order_effect, rtol=tol_g["rtol"])
    return same_order


def check_adam_slots(arrays, phase, slots_by_name, atol=1e-5, rtol=1e-4):
    """The fixture's Adam slots after one step from zero, in gradient units
    (m = (1 - beta1) g, v = (1 - beta2) g^2), with the gradient tolerance."""
    one_minus_beta2 = float(np.float32(1) - np.float32(0.999))
    checked = 0
    for key, ref in arrays.items():
        if key.startswith(f"step/{phase}/") and key.endswith("/Adam"):
            name = key[len(f"step/{phase}/"):-len("/Adam")]
            m, v = slots_by_name[name]
            assert_close(key + " as gradient", 2.0 * m, 2.0 * ref, atol=atol, rtol=rtol)
            v_ref = arrays[key + "_1"]
            assert_close(key + "_1 as |gradient|", np.sqrt(v / one_minus_beta2),
                         np.sqrt(v_ref / one_minus_beta2), atol=atol, rtol=rtol)
            checked += 1
    assert checked == 2
