"""Count what a piece of eager PyTorch code costs the host: aten operations (each one a kernel launch or more on a
GPU; views, which launch nothing, are counted apart) and host syncs (device values read on the host). Both are
device-independent, so they can be counted on a CPU for the GPU's sake.

    counts = count_host_cost(lambda: train_step())
    counts.ops, counts.views, counts.syncs, counts.top(10)

Syncs counted: `aten._local_scalar_dense` (`.item()`, `bool(t)`, `int(t)`, `.tolist()` of a 0-d tensor), the
data-dependent-size ops that read a count back on CUDA (`nonzero`, `masked_select`, `unique`, ...), and device ->
host transfers asked for through `Tensor.cpu()`, `.numpy()` and `.tolist()` (on a CPU tensor these are no-ops that
dispatch nothing, so a TorchFunctionMode catches them where the dispatch mode cannot), and `.to("cpu")` of a tensor
that is not on the CPU (on a CPU run, `.to(device)` cannot be told from a host transfer and is not counted).

    python -m benchmarks.op_count                 # one SAM-DETR training step on CPU: ops, views, syncs, top ops
"""
import collections
import dataclasses

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2",
            "unique_consecutive", "unique_dim", "repeat_interleave", "bincount", "histc"}
HOST_TRANSFER_METHODS = {"cpu", "numpy", "tolist", "item"}


@dataclasses.dataclass
class HostCost:
    ops: int = 0                         # aten operations that are not views
    views: int = 0
    syncs: int = 0                       # sync-ing aten ops + explicit device -> host transfers
    by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    sync_sites: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_module: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # see count_host_cost

    def top(self, n=10):
        return self.by_op.most_common(n)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, cost, module_stack=None):
        super().__init__()
        self.cost, self.module_stack = cost, module_stack

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.is_view:
            self.cost.views += 1
        else:
            self.cost.ops += 1
            self.cost.by_op[name] += 1
            if self.module_stack is not None:
                self.cost.by_module[self.module_stack[-1] if self.module_stack else "<outside modules>"] += 1
        if name in SYNC_OPS:
            self.cost.syncs += 1
            self.cost.sync_sites[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


def _is_host_transfer(func, args, kwargs):
    name = getattr(func, "__name__", "")
    if name in HOST_TRANSFER_METHODS and name != "item":  # item() dispatches _local_scalar_dense: counted there
        return True
    if name == "to" and args[0].device.type != "cpu":  # on a CPU, .to(device) moves nothing: not counted
        device = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
        return device is not None and torch.device(device).type == "cpu"
    return False


class _TransferCounter(TorchFunctionMode):
    def __init__(self, cost):
        super().__init__()
        self.cost = cost

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and _is_host_transfer(func, args, kwargs):
            self.cost.syncs += 1
            self.cost.sync_sites[f"Tensor.{func.__name__}"] += 1
        return func(*args, **kwargs)


def count_host_cost(fn, modules=None):
    """Runs fn() once and returns its HostCost (and nothing of fn's result: call it again for that).
    modules: {prefix: nn.Module} whose submodules' forward calls the non-view ops are attributed to, in
    cost.by_module by qualified name (the innermost module running; backward and code outside them:
    "<outside modules>")."""
    cost = HostCost()
    stack, handles = (None, []) if modules is None else _module_stack(modules)
    try:
        with _TransferCounter(cost), _DispatchCounter(cost, stack):
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return cost


def _module_stack(modules):
    """A stack of the qualified names of the modules running, kept by forward pre-/post-hooks on all of them."""
    stack, handles = [], []
    for prefix, root in modules.items():
        for name, module in root.named_modules():
            qualified = f"{prefix}.{name}" if name else prefix
            handles.append(module.register_forward_pre_hook(lambda m, a, q=qualified: stack.append(q)))
            handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))
    return stack, handles


def _sam_detr_step_cost(batch=2, size=128, num_queries=300, aligner_implementation="fused", by_module=False):
    """One training step (forward, loss, backward, clipping, fused AdamW) of the default SAM-DETR R50 on CPU
    (by_module: with cost.by_module)."""
    import warnings

    import models
    from benchmarks.bench_model import make_batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone
        model, criterion, _ = models.build(models.DetectorConfig(num_queries=num_queries,
                                                                  aligner_implementation=aligner_implementation))
    images, mask, targets = make_batch(batch, size, size, 91, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step():
        losses = criterion(model(images, mask), targets)
        loss = sum(criterion.weight_dict[k] * losses[k] for k in criterion.weight_dict)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    step()  # warm-up: lazy initialisation (optimizer state) is not the steady state
    return count_host_cost(step, {"model": model, "criterion": criterion} if by_module else None)


if __name__ == "__main__":
    import sys
    implementation = next((a for a in sys.argv[1:] if not a.startswith("--")), "fused")   # or "reference"
    cost = _sam_detr_step_cost(aligner_implementation=implementation, by_module="--by-module" in sys.argv)
    print(f"SAM-DETR R50 training step (B2 128x128, CPU, {implementation} aligner): {cost.ops} aten ops "
          f"(+{cost.views} views), {cost.syncs} syncs")
    print("sync sites:", dict(cost.sync_sites))
    print("top ops:", cost.top(15))
    if cost.by_module:
        print("top modules:", cost.by_module.most_common(40))
