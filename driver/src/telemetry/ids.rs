//! Trace and span ids derived from Nomad's task id, so that any plugin process (a restarted one
//! included) gives a task run the same trace, and an operator can compute it from the task:
//! FNV-1a 128 of a domain-separated string. Not a security boundary: ids only need to be stable
//! and well spread.

use opentelemetry::trace::{SpanId, TraceId};

const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

fn fnv128(parts: &[&[u8]]) -> u128 {
    let mut h = FNV128_OFFSET;
    for part in parts {
        for b in *part {
            h ^= u128::from(*b);
            h = h.wrapping_mul(FNV128_PRIME);
        }
        // A separator no part can contain ambiguously.
        h ^= 0xff;
        h = h.wrapping_mul(FNV128_PRIME);
    }
    h
}

fn span(parts: &[&[u8]]) -> SpanId {
    let h = fnv128(parts);
    let v = (h as u64) ^ ((h >> 64) as u64);
    SpanId::from(if v == 0 { 1 } else { v })
}

/// The trace of one task run.
#[must_use]
pub fn trace_id(task_id: &str) -> TraceId {
    let h = fnv128(&[b"bpfexec/trace", task_id.as_bytes()]);
    TraceId::from(if h == 0 { 1 } else { h })
}

/// The root span (the task run).
#[must_use]
pub fn root_span(task_id: &str) -> SpanId {
    span(&[b"bpfexec/task", task_id.as_bytes()])
}

/// The span of StartTask's work.
#[must_use]
pub fn start_span(task_id: &str) -> SpanId {
    span(&[b"bpfexec/start", task_id.as_bytes()])
}

/// The span of a process of the task: `generation` counts earlier processes of the same task
/// with the same pid (pid reuse), 0 for the first.
#[must_use]
pub fn process_span(task_id: &str, pid: u32, generation: u32) -> SpanId {
    span(&[
        b"bpfexec/process",
        task_id.as_bytes(),
        &pid.to_le_bytes(),
        &generation.to_le_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_valid() {
        let t = "0c8d5e2a-1b2c-3d4e-5f60-718293a4b5c6/web/8f3a2b1c";
        assert_eq!(trace_id(t), trace_id(t));
        assert_ne!(trace_id(t), trace_id("other/web/1"));
        assert_ne!(trace_id(t), TraceId::INVALID);
        assert_eq!(trace_id(t).to_string().len(), 32);
        let spans = [
            root_span(t),
            start_span(t),
            process_span(t, 100, 0),
            process_span(t, 100, 1),
            process_span(t, 101, 0),
        ];
        for (i, a) in spans.iter().enumerate() {
            assert_ne!(*a, SpanId::INVALID);
            for b in &spans[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
