"""One training on several devices (`train.devices=N`): the process group, each rank's share of the work, and
the few collectives that make N ranks compute what one process computes on the whole batch.

The maths is the single process's, split (so `train.devices` is a "where", not a "what": a run may resume
under another device count, and a trial's identity ignores it):
- the global batch `data.batch_size` is split into N equal shards (`shard`), cut from the same seeded batch;
- gradients are averaged by DistributedDataParallel (every loss is a mean over equal shards, so the average of
  the ranks' gradients is the whole batch's gradient);
- BatchNorm normalises with the whole batch's statistics (`sync_batchnorm`): the discriminator's BN, the
  SRResNet option's and the ResNet-50 of the published-code DP loss (train mode). BasicSR's DDP keeps
  per-rank BN; we do not, because D's outputs (and so every adversarial gradient) would then depend on N.
  `nn.SyncBatchNorm` refuses CPU tensors, hence `GlobalBatchNorm2d`: the same statistics through one
  differentiable all-reduce, on any device (gloo in the tests, NCCL on GPUs);
- batch means inside the losses (RaGAN's mean D outputs, eq. 3; the DP weight zeta's l_VGG and l_RES, eq. 9)
  are global means (`global_mean`): zeta is computed from the global batch's losses, never per rank.

Ranks are started by existing launchers only: locally by torch.distributed.run's elastic agent (`launch`), on
SLURM by submitit's tasks (their environment exported by `submitit.helpers.TorchDistributedEnvironment`);
`init` joins the group they describe (env:// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
"""

from __future__ import annotations

import datetime
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from trainer.errors import UserError

# Ranks other than 0 wait at `barrier` while rank 0 validates or waits for the pre-training cache's lock:
# minutes to hours. That wait is on a gloo group of its own with this timeout; a dead rank still ends it at
# once (its sockets close), and the launcher (elastic agent, srun) ends the others.
WAIT_TIMEOUT = datetime.timedelta(days=7)

# torch.distributed.nn.functional.all_reduce is the differentiable all-reduce this module needs; its suggested
# replacement lives in a private module (torch.distributed._functional_collectives).
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


@dataclass(frozen=True)
class World:
    """This process's place in the training: rank `rank` of `size` (1: no group), on device `device`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    stats: Any = None  # process group of the collectives inside a step (BN statistics, loss means)
    control: Any = None  # gloo group with WAIT_TIMEOUT: stop flags, waits for rank 0

    @property
    def main(self) -> bool:
        return self.rank == 0


_world = World()


def world() -> World:
    return _world


def launched() -> bool:
    """True inside a process started by a launcher as one rank of several (env:// variables set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(devices: int, device_type: str) -> World:
    """Join the process group the launcher described (NCCL on CUDA, gloo on the CPU) and make the groups
    `World` names; a no-op returning the single-process `World` outside a launch."""
    global _world
    if not launched():
        return _world
    size = int(os.environ["WORLD_SIZE"])
    if size != devices:
        raise UserError(
            f"train.devices={devices}, but the launcher started {size} ranks; launch {devices} or set train.devices={size}"
        )
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    stats = dist.new_group()  # apart from DDP's group, so the two never interleave their collectives
    control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    _world = World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")), stats, control)
    return _world


def close() -> None:
    """Leave the process group (end of a rank's training)."""
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def rank_device(device: torch.device) -> torch.device:
    """The rank's own GPU (cuda:LOCAL_RANK) when training on CUDA; the CPU stays the CPU."""
    return torch.device("cuda", _world.local_rank) if device.type == "cuda" and _world.size > 1 else device


def shard(batch_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's samples in a global batch of `batch_size`."""
    per = batch_size // _world.size
    return _world.rank * per, (_world.rank + 1) * per


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the whole global batch (every rank's `x` has the same shape); differentiable:
    its backward sums the gradient over ranks, which with DDP's averaging gives the single-process gradient."""
    m = x.mean()
    if _world.size == 1:
        return m
    return dist_nn.all_reduce(m, group=_world.stats) / _world.size


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """`x` averaged over ranks, out of autograd (loss logging, zeta's ratio)."""
    if _world.size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, group=_world.stats)
    return x / _world.size


def min_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if _world.size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MIN, group=_world.stats)
    return x


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (a CPU collective on the gloo group: no device sync), so every
    rank stops at the same iteration when SIGTERM reaches them at different ones."""
    if _world.size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_world.control)
    return bool(t.item())


def barrier() -> None:
    """Every rank waits here (on the gloo group, WAIT_TIMEOUT) until all arrive: after rank-0-only work."""
    if _world.size > 1:
        dist.barrier(group=_world.control)


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a small picklable value)."""
    if _world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_world.control)
    return box[0]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are the whole global batch's: per-channel sums and sums of
    squares all-reduced once (differentiably) over ranks. Same parameters, buffers and eval behaviour as
    BatchNorm2d, so checkpoints are interchangeable with single-process ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world.size == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])
        total = dist_nn.all_reduce(local, group=_world.stats)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        tracked, momentum = self.num_batches_tracked, self.momentum
        if (
            self.track_running_stats
            and tracked is not None
            and momentum is not None
            and self.running_mean is not None
            and self.running_var is not None
        ):
            with torch.no_grad():
                tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(net: nn.Module) -> nn.Module:
    """`net` with every BatchNorm2d replaced by a GlobalBatchNorm2d holding the same parameters and buffers
    (in place; a no-op on one rank)."""
    if _world.size == 1:
        return net
    for name, child in net.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            bn.load_state_dict(child.state_dict())
            bn.train(child.training).requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(net, name, bn.to(next(iter(child.state_dict().values())).device))
        else:
            sync_batchnorm(child)
    return net


def data_parallel(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` under DistributedDataParallel (gradients averaged over ranks in backward); `net` itself on one
    rank. Buffers are not broadcast at each forward: GlobalBatchNorm2d keeps them equal on every rank."""
    if _world.size == 1:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids, forward_sync_buffers=False)


def launch(entry: Callable[..., Any], args: list[Any], nprocs: int) -> Any:
    """Run `entry(*args)` as `nprocs` ranks on this machine under torch.distributed.run's elastic agent (the
    machinery of `torchrun --standalone`: c10d rendezvous on a free local port, no restarts: a failed rank
    fails the launch) and return rank 0's return value. Raises ChildFailedError when a rank fails and
    SignalException when this process is signalled (the agent has then passed the signal to the ranks)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    return elastic_launch(config, entry)(*args)[0]
