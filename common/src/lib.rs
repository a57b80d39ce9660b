//! Fixed-size records that the eBPF probes write into the ring buffer and the driver reads.
#![no_std]
