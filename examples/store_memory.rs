//! How many bytes of RSS the store itself takes per instance: fills one `Store` with 1,000,000
//! instances in 100,000 services (10 each, IPv4 addresses, no metadata — the shape of the
//! memory target in BENCHMARKS.md) and prints the growth of the process's resident set.
//!
//! `cargo run --release --example store_memory [instances]`
//!
//! The instances are those of the store benches (`benches/common`), so the two measure the
//! same data.

#[path = "../benches/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as distrod

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    kib * 1024
}

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        None => 1_000_000,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("store_memory: the instance count must be a number, got {a:?}");
            std::process::exit(2)
        }),
    };
    let before = rss_bytes();
    let store = common::filled_store(n);
    let after = rss_bytes();
    println!(
        "{n} instances in {} services: {} bytes of RSS per instance ({} -> {} bytes)",
        n.div_ceil(common::PER_SERVICE),
        (after - before) / n.max(1),
        before,
        after
    );
    assert_eq!(store.len(), n as usize);
}
