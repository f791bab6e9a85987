"""The scheduler's side of LoRA: adapters by name, which adapters the next forward may use, their
device slots, and loading / unloading at run time.

Admission (`begin` once per prefill plan, then `reserve` / `admitted` per candidate): the adapters of
the running batch and the chunked request are "in the batch"; a candidate whose adapter is not in it
needs room under `max_loras_per_batch` and a device slot, taken free or from the least recently used
adapter that no queued or running forward reads (AdapterPool.acquire). A candidate that gets
neither waits without blocking the others, but once one waits, later candidates may only use
adapters already in the batch (or the base model), so the waiting one gets the next free slot.

Unloading waits: the name stops accepting new requests at once, and the adapter is dropped (its
prefix-cache namespace freed) once no queued (grammar queue included), running or in-flight request
uses it.
"""
from __future__ import annotations

from jackfield.io_struct import FinishReason, LoadLoRAReq, LoRAUpdateOut, UnloadLoRAReq
from jackfield.lora.adapter import AdapterError


class AdapterScheduling:
    def __init__(self, sched, manager):
        self.sched, self.manager = sched, manager
        self.max_per_batch = manager.runtime.max_loras_per_batch
        self.unloading: dict[str, str] = {}  # adapter name -> request id of the pending unload
        self._in_batch: set[int] = set()
        self._keep: set[int] = set()
        self._blocked = False

    # ---- requests -------------------------------------------------------------------------------
    def resolve(self, req) -> FinishReason | None:
        """On arrival: attach the request's adapter, or the reason it cannot run."""
        if req.lora_name is None:
            return None
        adapter = self.manager.adapters.get(req.lora_name)
        if adapter is None or req.lora_name in self.unloading:
            return FinishReason("abort", message=f"unknown LoRA adapter '{req.lora_name}'")
        req.adapter = adapter
        return None

    def _uids(self, reqs) -> set[int]:
        return {r.adapter.uid for r in reqs if r is not None and r.adapter is not None}

    def _busy(self) -> set[int]:
        """Adapters a launched forward may still read (the in-flight job, requests leaving it)."""
        s = self.sched
        job = s.inflight[0] if s.inflight is not None else None
        return self._uids((job.extend_reqs + job.decode_reqs) if job else []) | self._uids(s.leaving)

    def begin(self) -> None:
        s = self.sched
        running = list(s.running.reqs) if s.running is not None else []
        self._in_batch = self._uids(running + [s.chunked_req])
        self._keep = self._in_batch | self._busy()
        self._blocked = False

    def reserve(self, req) -> bool:
        """Whether `req` may join the forward being planned; loads its adapter into a slot if needed."""
        if req.adapter is None or req.adapter.uid in self._in_batch:
            return True
        if self._blocked or len(self._in_batch) >= self.max_per_batch:
            self._blocked = True
            return False
        if self.manager.pool.acquire(req.adapter, self._keep) is None:
            self._blocked = True
            return False
        return True

    def admitted(self, req) -> None:
        if req.adapter is not None:
            self._in_batch.add(req.adapter.uid)
            self._keep.add(req.adapter.uid)

    def slots(self, reqs) -> tuple[int, ...]:
        """The device slot of each request's adapter (-1: base model), for the ForwardBatch."""
        pool, out = self.manager.pool, []
        for r in reqs:
            slot = -1 if r.adapter is None else pool.slot_of(r.adapter)
            if slot is None:
                raise RuntimeError(f"LoRA adapter '{r.adapter.name}' of request {r.rid} is not in a device slot")
            out.append(slot)
        return tuple(out)

    # ---- load / unload --------------------------------------------------------------------------
    def load(self, msg: LoadLoRAReq) -> LoRAUpdateOut:
        if msg.name in self.unloading:
            return self._reply(msg.request_id, 400, f"the LoRA adapter '{msg.name}' is being unloaded", "lora_name")
        try:
            self.manager.load(msg.name, msg.path)
        except AdapterError as exc:
            return self._reply(msg.request_id, exc.status, str(exc), exc.param)
        return self._reply(msg.request_id, 200, f"loaded LoRA adapter '{msg.name}'")

    def unload(self, msg: UnloadLoRAReq) -> list[LoRAUpdateOut]:
        if msg.name not in self.manager.adapters or msg.name in self.unloading:
            return [self._reply(msg.request_id, 404, f"unknown LoRA adapter '{msg.name}'", "lora_name")]
        self.unloading[msg.name] = msg.request_id
        return self.finish_unloads()

    def finish_unloads(self) -> list[LoRAUpdateOut]:
        """Unload every adapter whose unload was asked and that nothing uses any more."""
        if not self.unloading:
            return []
        s = self.sched
        compiling = [item[0] for item in s.grammars.queue]  # constrained requests waiting for their grammar
        in_use = (self._uids(s.waiting) | self._uids(s._holders()) | self._uids(s.building) | self._busy()
                  | self._uids(compiling))
        done = []
        for name, request_id in list(self.unloading.items()):
            adapter = self.manager.adapters[name]
            if adapter.uid in in_use:
                continue
            del self.unloading[name]
            self.manager.unload(name)
            s.tree_cache.drop_namespace(adapter.uid)
            done.append(self._reply(request_id, 200, f"unloaded LoRA adapter '{name}'"))
        return done

    def _reply(self, request_id: str, status: int, message: str, param: str | None = None) -> LoRAUpdateOut:
        adapters = [a for a in self.manager.describe() if a["name"] not in self.unloading]
        return LoRAUpdateOut(request_id, status == 200, status, message, param, adapters)
