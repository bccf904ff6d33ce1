"""Process-group set-up for models.train under torchrun (DDP), and its teardown."""
import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device):
    """device: the --device string. torchrun sets RANK, WORLD_SIZE and LOCAL_RANK: NCCL on CUDA (each process on
    the GPU of its LOCAL_RANK), gloo on CPU. Returns (rank, world_size, torch.device to run on); (0, 1, device)
    without torchrun or with one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, torch.device(device)
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(minutes=30))
    return rank, world_size, torch.device(device)


def shutdown_distributed(world_size):
    """Destroys the process group init_distributed made (for world_size > 1)."""
    if world_size > 1:
        dist.destroy_process_group()
