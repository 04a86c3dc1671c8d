"""What a hardware profile runs: ONNX Runtime sessions with the profile's options, one graph call
per timed quantity, and whole replies (`Reply`). `nas.latency` times these; `nas.memory` runs
them once in a child process to read its peak memory.

A candidate's `Workload` on one profile holds its two sessions and, by metric suffix
(`nas.hardware`'s convention), a zero-argument call per block-timed quantity: ``prefill_ms``
(one ``batch x prompt_len`` forward), ``decode_ms`` (one new token after ``past_len`` cached
ones) and ``decode_ms@<c>`` (after ``c``; a sliding window caches at most its window), plus the
reply when the profile has ``new_tokens``.

A reply is what a deployment runs: the prompt through the prefill graph (time to first token
ends once the first new token is known, the argmax of the last position's logits), then
``new_tokens - 1`` steps of the decode graph, each feeding the previous step's ``present.*``
back as ``past.*`` (the cache grows, a window slides, linear attention's state stays one size:
whatever the graphs return), ``position_ids`` advancing, the next ids the argmax of the logits.
No numpy copy of a cache is ever made: the presents stay `OrtValue`s bound straight back as the
next inputs, logits are written into preallocated numpy buffers, and ids/positions are numpy
buffers updated in place that ONNX Runtime reads without a copy. So a reply's time is the
graphs' plus a few microseconds of binding per step, as in any deployment loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.hardware import HardwareProfile
from nas.onnx_io import graph_metadata, session_feeds

if TYPE_CHECKING:
    import onnxruntime

GRAPH_OPTIMIZATION_LEVELS: dict[str, str] = {  # profile value -> ort.GraphOptimizationLevel
    "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES: dict[str, str] = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
SPINNING_KEY = "session.intra_op.allow_spinning"


def session_options(profile: HardwareProfile, cores: Sequence[int] | None = None
                    ) -> onnxruntime.SessionOptions:
    """The profile's session options; with ``cores``, pool thread i runs on ``cores[i+1]``.

    At the profile defaults these are exactly the options every measurement used before they
    became profile data (all optimisations, sequential, spinning at ONNX Runtime's default), so
    old profiles keep their hash and their timings. ``inter_op_num_threads`` is 1 in sequential
    mode (no inter-op pool). Parallel mode runs independent nodes on an inter-op pool, which
    ONNX Runtime does not create for one thread (it then silently runs sequentially), so it needs
    ``intra_op_threads >= 2`` (a `ConfigError` otherwise) and gets an inter-op pool of the same
    size on the same cores: the profile's thread budget, not extra cores it does not name.

    ONNX Runtime pins only its pool threads (the caller's thread is the first of the
    ``intra_op_threads``; the timing code pins that one to ``cores[0]``), so each of our
    threads gets a core of its own and none migrates mid-run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    parallel = profile.execution_mode == "parallel"  # needs >= 2 threads (`nas.hardware`)
    options.intra_op_num_threads = profile.intra_op_threads
    options.inter_op_num_threads = profile.intra_op_threads if parallel else 1
    options.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[profile.execution_mode])
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION_LEVELS[profile.graph_optimization])
    options.log_severity_level = 3
    if profile.allow_spinning is not None:
        options.add_session_config_entry(SPINNING_KEY, "1" if profile.allow_spinning else "0")
    if cores and profile.intra_op_threads > 1:
        # Processor ids in this string start at 1.
        workers = cores[1:profile.intra_op_threads]
        affinities = ";".join(str(c + 1) for c in workers)
        options.add_session_config_entry("session.intra_op_thread_affinities", affinities)
        if parallel:
            options.add_session_config_entry("session.inter_op_thread_affinities", affinities)
    return options


def make_session(model: str | bytes | Path, profile: HardwareProfile,
                 cores: Sequence[int] | None = None) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    model = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(model, session_options(profile, cores), providers=[profile.provider])


def runner(session: onnxruntime.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """A zero-argument call that runs the graph once.

    IO binding copies the inputs into ONNX Runtime once, so the timed call is the graph
    run plus output allocation, not numpy conversion in Python.
    """
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")

    def run() -> None:
        session.run_with_iobinding(binding)

    return run


class Reply:
    """One reply of ``new_tokens`` tokens to a ``batch x prompt_len`` prompt (module docstring).

    The prompt is the same every time (seeded ids), so every reply runs the same graphs on the
    same shapes; `tokens` are the ids the last reply generated (for checking the loop).
    """

    def __init__(self, prefill: onnxruntime.InferenceSession, decode: onnxruntime.InferenceSession,
                 batch: int, prompt_len: int, new_tokens: int, seed: int = 0) -> None:
        import onnxruntime as ort

        self._prefill, self._decode = prefill, decode
        self.prompt_len, self.new_tokens = prompt_len, new_tokens
        vocab = _vocab_size(prefill)
        self._presents = [o.name for o in prefill.get_outputs() if o.name.startswith("present.")]
        self._pasts = ["past." + name[len("present."):] for name in self._presents]
        self._prompt = session_feeds(prefill, batch, prompt_len, 0, seed)["input_ids"]
        self._prefill_logits = np.empty((batch, prompt_len, vocab), dtype=np.float32)
        self._decode_logits = np.empty((batch, 1, vocab), dtype=np.float32)
        self._ids = np.zeros((batch, 1), dtype=np.int64)
        self._positions = np.zeros((batch, 1), dtype=np.int64)
        self._prefill_binding = prefill.io_binding()
        self._prefill_binding.bind_cpu_input("input_ids", self._prompt)
        self._decode_binding = decode.io_binding()
        # On the CPU an OrtValue made from numpy reads the array's memory: updated in place.
        self._ids_value = ort.OrtValue.ortvalue_from_numpy(self._ids)
        self._positions_value = ort.OrtValue.ortvalue_from_numpy(self._positions)
        self._decode_binding.bind_ortvalue_input("input_ids", self._ids_value)
        self._decode_binding.bind_ortvalue_input("position_ids", self._positions_value)
        self.tokens = np.zeros((batch, new_tokens), dtype=np.int64)

    @staticmethod
    def _bind_outputs(binding: Any, logits: np.ndarray, presents: list[str]) -> None:
        """Outputs are bound again before every run: a bound output keeps the buffer of the
        last run, which ONNX Runtime would reuse (a grown cache then fails, and a fixed-size
        one, a window or linear attention's state, would be written over the past it reads)."""
        binding.clear_binding_outputs()
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name in presents:
            binding.bind_output(name, "cpu")

    def run(self, clock: Callable[[], int]) -> tuple[int, int]:
        """One reply; returns (time to first token, whole reply) in ``clock``'s units."""
        start = clock()
        self._bind_outputs(self._prefill_binding, self._prefill_logits, self._presents)
        self._prefill.run_with_iobinding(self._prefill_binding)
        cache = self._prefill_binding.get_outputs()[1:]  # logits first, as bound
        np.argmax(self._prefill_logits[:, -1, :], axis=-1, out=self.tokens[:, 0])
        first = clock() - start
        binding = self._decode_binding
        for step in range(1, self.new_tokens):
            self._ids[:, 0] = self.tokens[:, step - 1]
            self._positions.fill(self.prompt_len + step - 1)
            for name, value in zip(self._pasts, cache):
                binding.bind_ortvalue_input(name, value)
            self._bind_outputs(binding, self._decode_logits, self._presents)
            self._decode.run_with_iobinding(binding)
            cache = binding.get_outputs()[1:]
            np.argmax(self._decode_logits[:, 0, :], axis=-1, out=self.tokens[:, step])
        return first, clock() - start


def _vocab_size(session: onnxruntime.InferenceSession) -> int:
    dim = session.get_outputs()[0].shape[-1]
    if isinstance(dim, int):
        return dim
    return int((graph_metadata(session)["architecture"] or {})["vocab_size"])


@dataclass
class Workload:
    """A candidate's sessions on one profile and a call per timed quantity (module docstring)."""

    prefill: onnxruntime.InferenceSession
    decode: onnxruntime.InferenceSession
    blocks: dict[str, Callable[[], None]]  # metric suffix -> one graph run
    reply: Reply | None

    @property
    def architecture(self) -> dict[str, Any] | None:
        """The architecture the graphs were exported from (their ONNX metadata), if recorded."""
        return graph_metadata(self.prefill)["architecture"]


def contexts(profile: HardwareProfile) -> dict[str, int]:
    """Suffix -> cached tokens of every decode the profile times (``decode_ms`` at ``past_len``)."""
    return {"decode_ms": profile.past_len, **{f"decode_ms@{c}": c for c in profile.decode_contexts}}


def open_workload(prefill: Path, decode: Path, profile: HardwareProfile,
                  cores: Sequence[int] | None = None, *, seed: int = 0) -> Workload:
    """Sessions for both graphs and every quantity ``profile`` times, inputs bound once."""
    pre = make_session(prefill, profile, cores)
    dec = make_session(decode, profile, cores)
    blocks = {"prefill_ms": runner(pre, session_feeds(pre, profile.batch, profile.prompt_len, 0, seed))}
    for suffix, past in contexts(profile).items():
        blocks[suffix] = runner(dec, session_feeds(dec, profile.batch, 1, past, seed))
    reply = (Reply(pre, dec, profile.batch, profile.prompt_len, profile.new_tokens, seed)
             if profile.new_tokens is not None else None)
    return Workload(pre, dec, blocks, reply)
