//! What the fuzz targets (`fuzz_targets/*.rs`) share.
//!
//! - [`Input`]: a reader over the fuzzer's bytes that never fails (it reads zeros past the end),
//!   so every byte string is a valid input and mutations stay meaningful.
//! - [`generate`]: turns bytes into names, keys, instances, sync records and client messages.
//!   Names come mostly from small pools, so that the operations of one input hit the same
//!   instances (a register, then a beat and a deregister of that very key); one byte in sixteen
//!   picks a name made of raw input bytes instead.
//! - [`session_input`] and [`store_input`]: the input layouts of the `client_session` and
//!   `store_batches` targets, with encoders, so that the seed corpus (`gen_corpus`) is written
//!   in the very layout the targets read.
//! - [`harness`]: reading and checking a node's answers, comparing stores, an in-memory
//!   listener — what the two session targets share.
//! - [`runtime`]: the one paused current-thread tokio runtime per fuzzing process.

use distro::wire::Opcode;

pub mod generate;
pub mod harness;
pub mod session_input;
pub mod store_input;

/// A cursor over the fuzzer's bytes. Past the end every read yields zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        ((self.u32() as u64) << 32) | self.u32() as u64
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// One of `items`, chosen by the next byte.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.u8() as usize % items.len()]
    }
}

/// The wall-clock reading (ms) the nodes of the session targets start at: fixed, so that an
/// input replays with the same versions.
pub const WALL_START_MS: u64 = 1_700_000_000_000;

/// Every opcode the node knows, client and cluster ones, in byte order.
pub fn all_opcodes() -> Vec<Opcode> {
    (0..=u8::MAX)
        .filter_map(|b| Opcode::from_u8(b).ok())
        .collect()
}

/// The opcode a target's selector byte stands for: the opcode with that value if there is one
/// (so seeds read naturally: opcode byte, then body), otherwise one picked by the byte.
pub fn opcode_of(byte: u8) -> Opcode {
    Opcode::from_u8(byte).unwrap_or_else(|_| {
        let all = all_opcodes();
        all[byte as usize % all.len()]
    })
}

pub mod runtime {
    use std::sync::OnceLock;

    use tokio::runtime::Runtime;

    /// The process's runtime: current-thread (deterministic) with tokio's clock paused, so that
    /// timers fire as soon as every task waits, a deadlock shows up at once as a timeout, and a
    /// target can move the clock on with `tokio::time::advance`. Created once: a fuzzing
    /// process runs millions of inputs. Also fixes the hash seed of the node's maps, so that an
    /// input replays the same way.
    pub fn get() -> &'static Runtime {
        static RT: OnceLock<Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            distro::hash::set_seed(0x5eed);
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("tokio runtime")
        })
    }
}
