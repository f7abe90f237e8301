"""Ray Train's torch backend, without torch in the processes that hold no tensor.

Ray's TorchConfig lives in a module that imports torch at its top, so a TorchTrainer loads torch
into the driver that builds it and into the Train controller that unpickles its config: about
0.33 GiB of PSS apiece (measured under bench_train), where neither ever touches a tensor.
`TorchBackendConfig` is TorchConfig's stand-in that imports nothing heavy: with two or more workers
it hands the process group to Ray's own torch backend (imported then, in the controller only), and
a lone worker gets none, as it needs none (core/training/loop.py skips its collectives at world 1).

`data_parallel_trainer` is what the training stage and bench_train build a run with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ray.train.backend import Backend, BackendConfig


@dataclass
class TorchBackendConfig(BackendConfig):
    """`backend`: torch.distributed's backend; None picks nccl with GPUs, gloo without (as TorchTrainer)."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return ProcessGroupWhenDistributed

    @property
    def train_func_context(self):
        return CudaDeviceOfWorker

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework  # what the dashboard labels the run with

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}

    def ray_torch_config(self):
        from ray.train.torch import TorchConfig

        return TorchConfig(backend=self.backend, init_method="env", timeout_s=self.timeout_s)


class ProcessGroupWhenDistributed(Backend):
    """Ray's torch backend for a worker group of two or more; nothing for one."""

    share_cuda_visible_devices = True

    @staticmethod
    def _distributed(worker_group) -> bool:
        return len(worker_group) > 1

    @staticmethod
    def _ray_backend():
        from ray.train.torch.config import _TorchBackend

        return _TorchBackend()

    def on_start(self, worker_group, backend_config: TorchBackendConfig):
        if self._distributed(worker_group):
            self._ray_backend().on_start(worker_group, backend_config.ray_torch_config())

    def on_training_start(self, worker_group, backend_config: TorchBackendConfig):
        if self._distributed(worker_group):
            self._ray_backend().on_training_start(worker_group, backend_config.ray_torch_config())

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig):
        if self._distributed(worker_group):
            self._ray_backend().on_shutdown(worker_group, backend_config.ray_torch_config())


class CudaDeviceOfWorker:
    """Around the training function, in the worker: its GPU becomes torch's current device (as
    TorchConfig's context does), so a bare `.cuda()` lands on the GPU Ray gave this worker."""

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            import ray.train.torch

            device = ray.train.torch.get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc) -> bool:
        return False


def data_parallel_trainer(train_loop_per_worker: Callable[[dict], Any], **trainer_kwargs):
    """A Ray Train run of `train_loop_per_worker` with torch's backend: TorchTrainer's run, with
    torch loaded only in the workers (see the module's doc)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer(train_loop_per_worker, backend_config=TorchBackendConfig(), **trainer_kwargs)
