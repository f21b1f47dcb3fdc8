"""synth's own metrics: the model workers, the model's pace, and what first audio costs a caller.

Streams do not hold a worker; each model call (one chunk of one stream, or on CUDA a batch of
several streams' chunks) does, while it runs (engine/scheduler.py). So "active" streams are those
whose chunk the model is speaking now, at most the capacity (workers x streams per batch), and
"queued" streams those whose next chunk waits for a worker; a stream waiting for its caller to
take audio it already has is neither. Saturation reads as
`kokoropay_synth_busy_workers / kokoropay_synth_workers` (the workers' busy share) with
`kokoropay_synth_queued_streams` waiting behind: a busy worker may be running a small batch, so
the streams' share of the capacity would understate it. The model's pace reads as seconds per
call and audio seconds per model second. Recorded by the engine and the servicer, never with a
label from a request: no text, voice or caller. Light to import: no torch here; the backend
hands in how to read the device's memory.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

ACTIVE_STREAMS = Gauge(
    "kokoropay_synth_active_streams",
    "Syntheses whose chunk the model is speaking now, at most the capacity (a call whose stream"
    " was cancelled included, until it ends).",
)
QUEUED_STREAMS = Gauge(
    "kokoropay_synth_queued_streams",
    "Syntheses whose next chunk is waiting for a model worker.",
)
STREAM_CAPACITY = Gauge(
    "kokoropay_synth_stream_capacity",
    "Syntheses whose chunks may be spoken at once: the model workers (max_concurrent), times"
    " the streams per batch where calls are batched (batch_max_streams).",
)
WORKERS = Gauge(
    "kokoropay_synth_workers",
    "Model workers (max_concurrent): model calls, each one chunk or a batch, that may run at once.",
)
BUSY_WORKERS = Gauge(
    "kokoropay_synth_busy_workers",
    "Model workers running a call now (one chunk, or a batch of several streams' chunks).",
)
AUDIO_SECONDS = Counter(
    "kokoropay_synth_audio_seconds",
    "Seconds of audio the model generated for callers (streams cancelled later included;"
    " the warm-up not).",
)
REAL_TIME_FACTOR = Histogram(
    "kokoropay_synth_real_time_factor",
    "Per model call: seconds of audio made per second of model time (above 1 is faster than"
    " real time).",
    buckets=(0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0),
)
FIRST_CHUNK_SECONDS = Histogram(
    "kokoropay_synth_first_chunk_seconds",
    "From a Synthesize call's start (validated) to its first audio message: planning the first"
    " chunk, the wait for a model worker (behind the calls already running), the first model"
    " call and its encoding.",
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
MODEL_CALL_SECONDS = Histogram(
    "kokoropay_synth_model_call_seconds",
    "One model call: a chunk's phonemes to audio.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_SIZE = Histogram(
    "kokoropay_synth_batch_size",
    "Chunks per model call (1 until calls are batched).",
    buckets=(1, 2, 4, 8, 16, 32),
)
DEVICE_MEMORY_BYTES = Gauge(
    "kokoropay_synth_device_memory_bytes",
    "The CUDA device's memory as torch holds it: allocated (tensors) and reserved (its cache)."
    " Absent on a CPU.",
    ["kind"],
)


def record_model_call(audio_seconds: float, model_seconds: float, batch_size: int = 1) -> None:
    """One call of the model: its time, what it spoke, and the pace of the two."""
    MODEL_CALL_SECONDS.observe(model_seconds)
    BATCH_SIZE.observe(batch_size)
    AUDIO_SECONDS.inc(audio_seconds)
    if model_seconds > 0 and audio_seconds > 0:
        REAL_TIME_FACTOR.observe(audio_seconds / model_seconds)


def watch_device_memory(allocated: Callable[[], float], reserved: Callable[[], float]) -> None:
    """Read the device's memory at each scrape (CUDA only: the backend calls this)."""
    DEVICE_MEMORY_BYTES.labels("allocated").set_function(allocated)
    DEVICE_MEMORY_BYTES.labels("reserved").set_function(reserved)
