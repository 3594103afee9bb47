"""One tensor-parallel rank of the Megatron audit (run as a script by ``_megatron.py``).

``python _megatron_worker.py RANK WORLD INIT_FILE``: joins a gloo process group
through a *file* store (no TCPStore, which would listen on every interface) with
``GLOO_SOCKET_IFNAME=lo`` set by the parent, initialises Megatron's model-parallel
state with ``tensor_model_parallel_size=WORLD``, prints one JSON line
``{"ready": ...}`` and then serves commands, one JSON line each on stdin:

* ``{"cmd": "run", "in": PATH, "out": PATH}``: load this rank's shard ``x{RANK}``,
  the targets ``y``, ``label_smoothing``, ``impl`` ("plain" or "fused") and
  ``dtype`` from the ``.npz`` at ``in``; run the loss on a leaf tensor that
  requires grad, backward with ``grad_output = 1`` (the gradient of the sum of
  the per-token losses), and save ``loss``, ``grad``, ``x_after`` (the input
  tensor after the call) and ``error`` to ``out`` (rank suffix added);
* ``{"cmd": "quit"}``.

It answers each command with one JSON line.  Only this file's imports are
loaded (not ``ce_reference``), to keep the start-up short.
"""

import json
import os
import sys
import traceback

import numpy as np
import torch
import torch.distributed as dist


def main():
    rank, world, init_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state, tensor_parallel
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    assert parallel_state.get_tensor_model_parallel_rank() == rank
    assert parallel_state.get_tensor_model_parallel_world_size() == world
    print(json.dumps({"ready": True, "rank": rank, "world": world,
                      "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        with np.load(msg["in"]) as z:
            d = {k: z[k] for k in z.files}
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[str(d["dtype"])]
        x = torch.from_numpy(np.ascontiguousarray(d[f"x{rank}"])).to(dtype).requires_grad_(True)
        y = torch.from_numpy(d["y"].astype(np.int64))
        ls = float(d["label_smoothing"])
        impl = str(d["impl"])
        out = {"loss": np.zeros(0), "grad": np.zeros(0), "x_after": np.zeros(0), "error": ""}
        try:
            if impl == "fused":
                from megatron.core.fusions.fused_cross_entropy import (
                    fused_vocab_parallel_cross_entropy)
                loss = fused_vocab_parallel_cross_entropy(
                    x, y, parallel_state.get_tensor_model_parallel_group())
            else:
                loss = tensor_parallel.vocab_parallel_cross_entropy(x, y, label_smoothing=ls)
            out["x_after"] = x.detach().float().numpy().copy()
            out["loss"] = loss.detach().float().numpy().copy()
            out["loss_dtype"] = np.array(str(loss.dtype))
            loss.backward(torch.ones_like(loss))
            out["grad"] = x.grad.float().numpy().copy()
            out["grad_dtype"] = np.array(str(x.grad.dtype))
        except BaseException as exc:  # noqa: BLE001 -- reported to the audit
            out["error"] = np.array(f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                                    if str(exc) else type(exc).__name__)
            out["trace"] = np.array(traceback.format_exc(limit=4))
        np.savez(f"{msg['out']}.{rank}.npz", **out)
        print(json.dumps({"done": True}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    main()
