"""EasyLM's LLaMA train step, re-expressed in plain JAX, compiled (never run) to read XLA's memory.

What it mirrors: EasyLM commit fe5b2c354e25d697fce7cd225e23bbbe72570da3, as `python -m
EasyLM.models.llama.llama_train` runs it under the flags `trainers.tpu.flags.render` writes:
- the model (llama_model.py): token embedding cast to the compute dtype, then `num_hidden_layers`
  blocks, each wrapped in `jax.checkpoint` with the `nothing_saveable` policy when
  `--llama.remat_policy` is set (flax's nn.remat, prevent_cse on); RMSNorm computed in fp32;
  q/k/v/o and the SwiGLU MLP as dense layers whose fp32 kernels are cast to the compute dtype; k and v
  repeated to every query head (GQA expanded before attention); RoPE in complex64; attention
  *not* fused: the causal mask as a bias in the compute dtype, fp32 scores (q and k promoted to fp32)
  and fp32 softmax, batch x heads x seq x seq, then an fp32 product with v; lm_head (param_dtype)
  giving logits in the compute dtype, cast to fp32 for log-softmax cross-entropy and accuracy;
- the sharding: mesh (dp, fsdp, mp) from `--mesh_dim`, EasyLM's partition rules for every parameter
  and for every optimizer-state leaf that mirrors one (scalars replicated), its sharding constraints
  on q/k/v, the attention weights, the MLP output and the batch, the batch passed in replicated, and
  the train state and rng donated;
- the optimizer (optimizers.py with optax 0.2.2): clip_by_global_norm then AdamW (mu in bf16 with
  `bf16_momentum`, nu in the params' dtype), decayed weights, warmup-cosine learning rate, wrapped
  in optax.MultiSteps when `--optimizer.accumulate_gradient_steps` > 1 (0.2.2's MultiSteps runs the
  inner update at every micro-step and keeps it with a `where`), then flax's TrainState update;
- the metrics the train step returns (loss, accuracy, learning rate, gradient and parameter norms).

Why not EasyLM itself: EasyLM cannot run in CI (it is not on PyPI, and its code is not ours to
commit), and its pinned stack (jax 0.4.28) reports zeros from a CPU compile's memory_analysis(),
while EasyLM fails to import on the jax releases that report real figures. So this file rebuilds the
same computation on current JAX without flax or optax: same shapes, dtypes, casts, shardings,
rematerialisation and optimizer state, so that XLA sees the same program. What it leaves out has no
memory of its own here: dropout (EasyLM's rates are 0, and flax skips a rate-0 dropout), the
forgetful causal mask (off), the KV cache (decoding only).

One difference, and why: EasyLM runs its blocks in a Python loop (unrolled); the mirror scans them
(lax.scan over weights stacked layers-first, sharded as the per-layer ones: the same bytes per
device). XLA's CPU pipeline expands jax.checkpoint's optimization barriers before CSE and
scheduling, so on CPU an unrolled remat is undone: unrolled, the TinyLlama step (4 rows of 2048 a
device) grew by 5.5 GiB per layer with remat as without it; scanned with remat, by 0.07 GiB. Under
scan the recompute lives inside the backward loop and cannot merge with the forward, which is what
the barriers achieve on a TPU; it also compiles in seconds (`"scan": False` in the settings
compiles the unrolled form). What scanning adds on CPU: XLA converts the stacked saved block inputs
to fp32 once for the whole backward loop, where an unrolled program converts one block's at a time.

Run as a script, in a process whose XLA_FLAGS simulates the TPU's devices on the CPU
(--xla_force_host_platform_device_count=N, set before JAX starts): it reads EasyLM's rendered flags
as JSON on stdin ({"flags": [...], "parts": ["step", "backward"]}: the whole step, and its
forward and backward alone; "state" lists the train state's arrays instead, "run" runs one step on
the arrays of settings["arrays"]), lowers each on abstract arrays (jax.ShapeDtypeStruct: nothing is allocated),
compiles it and prints XLA's per-device memory analysis of each as JSON.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time

import numpy as np


def easylm_settings(flags: list[str]) -> dict:
    """What the step's memory depends on, read from EasyLM's rendered `--a.b=value` flags."""
    f = dict(a[2:].split("=", 1) for a in flags)
    llama = {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith("llama.")}
    return {
        "mesh": tuple(int(x) for x in f["mesh_dim"].split(",")),
        "dtype": f["dtype"],
        "param_dtype": f["param_dtype"],
        "batch": int(f["train_dataset.json_dataset.batch_size"]),
        "seq": int(f["train_dataset.json_dataset.seq_length"]),
        "accumulate": int(f["optimizer.accumulate_gradient_steps"]),
        "bf16_momentum": f["optimizer.adamw_optimizer.bf16_momentum"] == "True",
        "remat": llama.get("remat_policy", "") != "",
        "clip": float(f["optimizer.adamw_optimizer.clip_gradient"]),
        "lr": float(f["optimizer.adamw_optimizer.lr"]),
        "warmup": int(f["optimizer.adamw_optimizer.lr_warmup_steps"]),
        "decay_steps": int(f["optimizer.adamw_optimizer.lr_decay_steps"]),
        "end_lr": float(f["optimizer.adamw_optimizer.end_lr"]),
        "b1": float(f["optimizer.adamw_optimizer.b1"]),
        "b2": float(f["optimizer.adamw_optimizer.b2"]),
        "weight_decay": float(f["optimizer.adamw_optimizer.weight_decay"]),
        "vocab": int(llama["vocab_size"]),
        "hidden": int(llama["hidden_size"]),
        "intermediate": int(llama["intermediate_size"]),
        "layers": int(llama["num_hidden_layers"]),
        "heads": int(llama["num_attention_heads"]),
        "kv_heads": int(llama["num_key_value_heads"]),
        "max_pos": int(llama["max_position_embeddings"]),
        "eps": float(llama["rms_norm_eps"]),
        "rope_theta": float(llama["rope_theta"]),
    }


# EasyLM's partition rules, by the module a parameter belongs to: (first axis, second axis) of its
# kernel. Vectors (the norms) are replicated, as is every scalar.
_AXES = {"wte": ("mp", "fsdp"), "wq": ("fsdp", "mp"), "wk": ("fsdp", "mp"), "wv": ("fsdp", "mp"),
         "wo": ("mp", "fsdp"), "w1": ("fsdp", "mp"), "w2": ("mp", "fsdp"), "w3": ("fsdp", "mp"),
         "lm_head": ("fsdp", "mp")}


def param_shapes(c: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every parameter as EasyLM names it (its flax path) -> (shape, dtype). Only lm_head takes
    `--param_dtype`: EasyLM builds the transformer without passing it on, so the rest is fp32."""
    h, hd = c["hidden"], c["hidden"] // c["heads"]
    kv = c["kv_heads"] * hd
    out = {"transformer/wte/embedding": ((c["vocab"], h), "fp32")}
    block = {"attention/wq/kernel": (h, h), "attention/wk/kernel": (h, kv), "attention/wv/kernel": (h, kv),
             "attention/wo/kernel": (h, h), "feed_forward/w1/kernel": (h, c["intermediate"]),
             "feed_forward/w2/kernel": (c["intermediate"], h), "feed_forward/w3/kernel": (h, c["intermediate"]),
             "attention_norm/kernel": (h,), "ffn_norm/kernel": (h,)}
    if c.get("scan", True):  # one array per kernel, layers first (see build())
        out.update({f"transformer/h/{k}": ((c["layers"], *s), "fp32") for k, s in block.items()})
    else:
        out.update({f"transformer/h/{i}/{k}": (s, "fp32") for i in range(c["layers"]) for k, s in block.items()})
    out["transformer/ln_f/kernel"] = ((h,), "fp32")
    out["lm_head/kernel"] = ((h, c["vocab"]), c["param_dtype"])
    return out


def partition(path: str, shape: tuple[int, ...], stacked: bool = False):
    """EasyLM's spec for a parameter; a stacked one (layers first) keeps its layer axis whole."""
    from jax.sharding import PartitionSpec as P

    lead = (None,) if stacked else ()
    if len(shape) - len(lead) < 2:
        return P()
    module = re.findall(r"(wte|wq|wk|wv|wo|w1|w2|w3|lm_head)/", path + "/")
    return P(*lead, *_AXES[module[-1]]) if module else P()


def build(c: dict):
    """(step function, abstract arguments, in/out shardings, donated argnums) for settings `c`."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    dt = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
    dtype = dt[c["dtype"]]
    acc_dtype = jnp.promote_types(dtype, jnp.float32)  # where EasyLM promotes: norms, scores, loss
    mesh_shape = c["mesh"]
    devices = np.array(jax.devices()[: math.prod(mesh_shape)]).reshape(mesh_shape)
    mesh = Mesh(devices, ("dp", "fsdp", "mp"))
    B, S, H = c["batch"], c["seq"], c["hidden"]
    heads, kvh = c["heads"], c["kv_heads"]
    hd = H // heads
    scan = c.get("scan", True)

    def constrain(x, *spec):
        return lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))

    def dense(x, kernel):  # flax nn.Dense(dtype=dtype): input and kernel cast to the compute dtype
        x, k = x.astype(dtype), kernel.astype(dtype)
        return lax.dot_general(x, k, (((x.ndim - 1,), (0,)), ((), ())))

    def rms_norm(x, w):
        x = x.astype(acc_dtype)
        y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + c["eps"])
        return y.astype(dtype) * w.astype(dtype)

    # RoPE's table is a compile-time constant in EasyLM too.
    inv = 1.0 / (c["rope_theta"] ** (np.arange(0, hd, 2)[: hd // 2].astype(np.float32) / hd))
    angles = np.outer(np.arange(c["max_pos"]), inv).astype(np.float32)
    freqs_cis = (np.cos(angles) + 1j * np.sin(angles)).astype(np.complex64)

    def rotary(xq, xk, positions):
        f = jnp.take(jnp.asarray(freqs_cis), positions, axis=0)[:, :, None, :]

        def rot(x):
            pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
            z = lax.complex(pairs[..., 0], pairs[..., 1]) * f
            return jnp.stack((jnp.real(z), jnp.imag(z)), axis=-1).reshape(x.shape).astype(x.dtype)

        return rot(xq), rot(xk)

    def block(p, x, bias, positions):
        a = p["attention"]
        y = rms_norm(x, p["attention_norm"]["kernel"])
        xq = constrain(dense(y, a["wq"]["kernel"]), ("dp", "fsdp"), None, "mp")
        xk = constrain(dense(y, a["wk"]["kernel"]), ("dp", "fsdp"), None, "mp")
        xv = constrain(dense(y, a["wv"]["kernel"]), ("dp", "fsdp"), None, "mp")
        xq = xq.reshape(B, S, heads, hd)
        # k and v repeated to every query head before attention (EasyLM's einops.repeat)
        xk = jnp.repeat(xk.reshape(B, S, kvh, hd), heads // kvh, axis=2)
        xv = jnp.repeat(xv.reshape(B, S, kvh, hd), heads // kvh, axis=2)
        xq, xk = rotary(xq, xk, positions)
        # flax's dot_product_attention_weights with dtype fp32: q, k promoted, q scaled, fp32 softmax
        q, k = xq.astype(acc_dtype), xk.astype(acc_dtype)
        q = q / jnp.sqrt(hd).astype(acc_dtype)
        w = jnp.einsum("...qhd,...khd->...hqk", q, k) + bias
        w = jax.nn.softmax(w).astype(acc_dtype)
        w = constrain(w, ("dp", "fsdp"), "mp", None, None)
        o = jnp.einsum("...hqk,...khd->...qhd", w, xv).reshape(B, S, H)
        x = x + dense(o, a["wo"]["kernel"])
        m = p["feed_forward"]
        y = rms_norm(x, p["ffn_norm"]["kernel"])
        ff = dense(jax.nn.silu(dense(y, m["w1"]["kernel"])) * dense(y, m["w3"]["kernel"]), m["w2"]["kernel"])
        return x + constrain(ff, ("dp", "fsdp"), None, "mp")

    if c["remat"]:  # flax nn.remat: jax.checkpoint with prevent_cse, the block's params as inputs
        block = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)

    def logits_of(params, tokens):
        t = params["transformer"]
        x = jnp.take(t["wte"]["embedding"].astype(dtype), tokens, axis=0)
        mask = jnp.ones((B, S), jnp.int32)  # EasyLM passes no attention mask: all ones
        positions = jnp.broadcast_to(jnp.clip(jnp.cumsum(mask, axis=-1) - 1, 0), (B, S))
        causal = jnp.tril(jnp.ones((S, S), bool))[None, None]
        keep = jnp.logical_and(jnp.broadcast_to(mask[:, None, None, :].astype(bool), (B, 1, S, S)), causal)
        bias = lax.select(keep, jnp.zeros(keep.shape, dtype), jnp.full(keep.shape, jnp.finfo(dtype).min, dtype))
        if scan:
            x, _ = lax.scan(lambda x, p: (block(p, x, bias, positions), None), x, t["h"])
        else:
            for i in range(c["layers"]):
                x = block(t["h"][str(i)], x, bias, positions)
        x = rms_norm(x, t["ln_f"]["kernel"])
        return dense(x, params["lm_head"]["kernel"])

    def loss_and_accuracy(params, batch):
        logits = logits_of(params, batch["input_tokens"]).astype(jnp.float32)
        tokens, valid = batch["target_tokens"], batch["loss_masks"].astype(jnp.float32)
        length = jnp.maximum(jnp.sum(valid, axis=-1), 1e-10)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[..., None], axis=-1)[..., 0]
        logp = jnp.where(valid > 0.0, logp, 0.0)
        loss = -jnp.mean(jnp.sum(logp, axis=-1) / length)
        correct = jnp.where(valid > 0.0, jnp.argmax(logits, axis=-1) == tokens, False)
        return loss, jnp.mean(jnp.sum(correct, axis=-1) / length)

    def global_norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))

    def schedule(count):  # optax.warmup_cosine_decay_schedule(0, lr, warmup, decay_steps, end_lr)
        warm = c["lr"] * count / max(c["warmup"], 1)
        frac = jnp.clip((count - c["warmup"]) / max(c["decay_steps"] - c["warmup"], 1), 0.0, 1.0)
        cos = c["end_lr"] + (c["lr"] - c["end_lr"]) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(count < c["warmup"], warm, cos)

    mu_dtype = jnp.bfloat16 if c["bf16_momentum"] else None

    def adamw(grads, st, params):
        """optax 0.2.2: chain(clip_by_global_norm, chain(scale_by_adam, add_decayed_weights,
        scale_by_learning_rate)) -> (updates, new state)."""
        norm = global_norm(grads)
        grads = jax.tree_util.tree_map(lambda g: jnp.where(norm < c["clip"], g, g / norm.astype(g.dtype) * c["clip"]), grads)
        mu = jax.tree_util.tree_map(lambda g, m: (1 - c["b1"]) * g + c["b1"] * m, grads, st["mu"])
        nu = jax.tree_util.tree_map(lambda g, v: (1 - c["b2"]) * (g * g) + c["b2"] * v, grads, st["nu"])
        count = st["count"] + 1
        fc = count.astype(jnp.float32)
        upd = jax.tree_util.tree_map(
            lambda m, v: (m / (1 - c["b1"] ** fc)).astype(m.dtype) / (jnp.sqrt((v / (1 - c["b2"] ** fc)).astype(v.dtype)) + 1e-8),
            mu, nu)
        if mu_dtype is not None:
            mu = jax.tree_util.tree_map(lambda m: m.astype(mu_dtype), mu)
        upd = jax.tree_util.tree_map(lambda u, p: u + c["weight_decay"] * p, upd, params)
        lr = -schedule(st["lr_count"])
        upd = jax.tree_util.tree_map(lambda u: jnp.array(lr, dtype=u.dtype) * u, upd)
        return upd, {"count": count, "mu": mu, "nu": nu, "lr_count": st["lr_count"] + 1}

    k_steps = c["accumulate"]

    def optimizer_update(grads, opt, params):
        if k_steps == 1:
            return adamw(grads, opt, params)
        # optax 0.2.2 MultiSteps: a running mean of the micro-batch gradients; the inner update runs
        # every time and is kept (with the new inner state) only at the k-th micro-step.
        acc = jax.tree_util.tree_map(lambda g, a: a + (g - a) / (opt["mini_step"] + 1), grads, opt["acc_grads"])
        upd, inner = adamw(acc, opt["inner"], params)
        emit = opt["mini_step"] == k_steps - 1
        new = {"mini_step": (opt["mini_step"] + 1) % k_steps,
               "gradient_step": emit * (opt["gradient_step"] + 1) + (1 - emit) * opt["gradient_step"],
               "inner": jax.tree_util.tree_map(lambda s, n: jnp.where(emit, n, s), opt["inner"], inner),
               "acc_grads": jax.tree_util.tree_map(lambda a: (1 - emit) * a, acc)}
        return jax.tree_util.tree_map(lambda u: emit * u, upd), new

    def train_step(state, rng, batch):
        rng, _ = jax.random.split(rng)
        batch = {k: constrain(v, ("dp", "fsdp")) for k, v in batch.items()}
        (loss, accuracy), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(state["params"], batch)
        updates, opt = optimizer_update(grads, state["opt_state"], state["params"])
        params = jax.tree_util.tree_map(lambda p, u: (p + u).astype(p.dtype), state["params"], updates)
        metrics = {"loss": loss, "accuracy": accuracy, "learning_rate": schedule(state["step"]),
                   "gradient_norm": global_norm(grads), "param_norm": global_norm(params)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt}, rng, metrics

    # The train state as abstract arrays, nested as EasyLM's param paths are.
    def nest(flat: dict) -> dict:
        out: dict = {}
        for path, leaf in flat.items():
            d = out
            *parents, last = path.split("/")
            for k in parents:
                d = d.setdefault(k, {})
            d[last] = leaf
        return out

    shapes = param_shapes(c)

    def tree(dtype_of):
        return nest({p: jax.ShapeDtypeStruct(s, dt[dtype_of(d)], sharding=NamedSharding(mesh, partition(p, s, scan and p.startswith("transformer/h/"))))
                     for p, (s, d) in shapes.items()})

    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    params = tree(lambda d: d)
    inner = {"count": scalar, "mu": tree(lambda d: "bf16" if c["bf16_momentum"] else d),
             "nu": tree(lambda d: d), "lr_count": scalar}
    opt = inner if k_steps == 1 else {"mini_step": scalar, "gradient_step": scalar, "inner": inner,
                                      "acc_grads": tree(lambda d: d)}
    state = {"step": scalar, "params": params, "opt_state": opt}
    rep = NamedSharding(mesh, P())
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    batch = {"input_tokens": jax.ShapeDtypeStruct((B, S), jnp.int32, sharding=rep),
             "target_tokens": jax.ShapeDtypeStruct((B, S), jnp.int32, sharding=rep),
             "loss_masks": jax.ShapeDtypeStruct((B, S), jnp.float32, sharding=rep)}
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    if c.get("part") == "backward":
        # The step's forward and backward alone (its value_and_grad): params in, gradients out.
        def backward(params, batch):
            batch = {k: constrain(v, ("dp", "fsdp")) for k, v in batch.items()}
            return jax.grad(lambda p: loss_and_accuracy(p, batch)[0])(params)

        shardings = state_shardings["params"]
        return jax.jit(backward, in_shardings=(shardings, rep), out_shardings=shardings), (params, batch)
    step = jax.jit(train_step, in_shardings=(state_shardings, rep, rep), out_shardings=(state_shardings, rep, rep),
                   donate_argnums=(0, 1))
    return step, (state, rng, batch)


def state_leaves(c: dict) -> list[dict]:
    """The train state's arrays as the step takes them: path, shape, dtype, partition spec."""
    import jax

    _, (state, _, _) = build(c)
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        out.append({"path": "/".join(str(k.key) for k in path), "shape": list(leaf.shape),
                    "dtype": str(leaf.dtype), "spec": [a for a in leaf.sharding.spec]})
    return out


def run_step(c: dict, arrays: str) -> dict:
    """One real step from the params and batch in the .npz `arrays` (zero optimizer state): its
    metrics, to hold the mirror's arithmetic to EasyLM's on a small model."""
    import jax
    import jax.numpy as jnp

    step, (state, rng, batch) = build(c)
    data = np.load(arrays)

    def concrete(path, leaf):
        name = "/".join(str(k.key) for k in path)
        value = data[name] if name in data else np.zeros(leaf.shape, leaf.dtype)
        return jax.device_put(jnp.asarray(value, leaf.dtype), leaf.sharding)

    state, batch = (jax.tree_util.tree_map_with_path(concrete, t) for t in (state, {"batch": batch}))
    _, _, metrics = step(state, jnp.zeros(rng.shape, rng.dtype), batch["batch"])
    return {k: float(v) for k, v in metrics.items()}


def analyse(c: dict) -> dict:
    import jax

    if c["part"] == "state":
        return {"leaves": state_leaves(c)}
    if c["part"] == "run":
        return run_step(c, c["arrays"])
    step, args = build(c)
    t0 = time.perf_counter()
    lowered = step.lower(*args)
    t1 = time.perf_counter()
    m = lowered.compile().memory_analysis()
    t2 = time.perf_counter()
    parts = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
             "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
    # One device's peak: its inputs and outputs live at once, less what the donated train state
    # lets XLA write in place, plus the scratch of the step itself.
    total = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    settings = {k: c[k] for k in ("mesh", "batch", "seq", "accumulate", "remat", "bf16_momentum", "dtype", "layers", "part")}
    return {"per_device": total, **parts, "settings": settings, "devices": jax.device_count(), "jax": jax.__version__,
            "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1)}


if __name__ == "__main__":
    job = json.load(sys.stdin)  # {"flags": EasyLM's argv, "parts": ["step", "backward"]}
    settings = {**easylm_settings(job["flags"]), **job.get("settings", {})}
    print(json.dumps({part: analyse({**settings, "part": part}) for part in job.get("parts", ["step"])}))
