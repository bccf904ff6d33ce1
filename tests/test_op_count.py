"""benchmarks.op_count: what it counts as an operation, a view and a sync (the training-step budgets rely on it)."""
import torch

from benchmarks.op_count import count_host_cost


def test_ops_views_and_syncs_are_told_apart():
    a, b = torch.randn(3), torch.randn(3)

    def fn():
        c = a + b                       # op
        c.view(3, 1)                    # view
        (a * b).sum().item()            # mul, sum, _local_scalar_dense (ops); the item() is a sync
        a.cpu()                         # a host transfer on a GPU: a sync
        a.tolist()                      # the same

    cost = count_host_cost(fn)
    assert cost.by_op == {"add": 1, "mul": 1, "sum": 1, "_local_scalar_dense": 1}
    assert (cost.ops, cost.views, cost.syncs) == (4, 1, 3)
    assert cost.sync_sites == {"aten._local_scalar_dense": 1, "Tensor.cpu": 1, "Tensor.tolist": 1}


def test_moving_to_the_same_device_is_not_a_sync():
    a = torch.randn(3)
    cost = count_host_cost(lambda: (a.to("cpu"), a.to(torch.float64), bool(a.sum() > 0)))
    assert cost.syncs == 1 and cost.sync_sites == {"aten._local_scalar_dense": 1}   # bool() reads the value
