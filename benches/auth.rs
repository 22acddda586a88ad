//! Tokens: what presenting a token costs a node (once per connection: a SHA-256 and a
//! constant-time comparison with every entry, so it grows with the file), and what a Nacos
//! login's password check costs (argon2id: slow on purpose). The per-request cost of rights is
//! measured end to end by `distro-bench --spawn-tokens` (BENCHMARKS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use distro::auth::file::{TOKEN_ENTRIES_MAX, mint_token, token_entry, user_entry};
use distro::auth::{TokenSet, Tokens};
use std::hint::black_box;

/// A token set of `n` token entries; answers it and one of its tokens (the last entry's: the
/// comparison never stops early anyway).
fn tokens(n: usize) -> (Tokens, String) {
    let mut text = String::new();
    let mut last = String::new();
    for i in 0..n {
        last = mint_token();
        text += &token_entry(&format!("t{i}"), &last, &["*".into()], &[]).unwrap();
    }
    (
        Tokens::with_set(TokenSet::parse(&text, "bench").unwrap()),
        last,
    )
}

fn present(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth/present");
    for n in [1, 64, TOKEN_ENTRIES_MAX] {
        let (set, token) = tokens(n);
        let wrong = mint_token();
        g.bench_function(format!("known_of_{n}"), |b| {
            b.iter(|| black_box(set.authenticate(black_box(&token)).is_some()))
        });
        g.bench_function(format!("unknown_of_{n}"), |b| {
            b.iter(|| black_box(set.authenticate(black_box(&wrong)).is_some()))
        });
    }
    g.finish();
}

fn login(c: &mut Criterion) {
    let entry = user_entry("nacos", "correct horse", &["public".into()], &[]).unwrap();
    let set = Tokens::with_set(TokenSet::parse(&entry, "bench").unwrap());
    let mut g = c.benchmark_group("auth/login");
    g.sample_size(10);
    g.bench_function("argon2id", |b| {
        b.iter(|| black_box(set.login("nacos", black_box("correct horse")).is_some()))
    });
    g.finish();
}

criterion_group!(benches, present, login);
criterion_main!(benches);
