//! The connection layer: everything between a socket and the protocol code, one way for every
//! connection of the SDK, the client front end and the cluster.
//!
//! - [`transport`]: the seam — [`BoxStream`], [`Listener`], [`Dialer`]; tokio TCP in
//!   production, simulated or in-memory streams in tests; where TLS wraps the streams.
//! - [`tls`]: TLS as a layer of the seam (rustls) — a listener whose connections complete a
//!   server handshake, a dialer that completes a client one; mutual TLS for peers.
//! - [`accept`]: the one accept loop — a connection cap, backoff on accept errors, each
//!   connection served in a task of the node's tracker.
//! - [`writer`]: the one socket writer — gathers queued frames (and a connection's own output,
//!   such as pushes) into one write.
//! - [`mux`]: the request multiplexer of a connection that sends requests (the SDK's, the peer
//!   links) — ids, a bounded pending table, deadlines, streamed answers, fire-and-forget frames.
//! - [`streamed`]: the answering side of a streamed answer — `FLAG_MORE`, and a window that
//!   bounds how far the producer runs ahead of the socket.

pub mod accept;
pub mod mux;
pub mod streamed;
pub mod tls;
pub mod transport;
pub mod writer;

pub use accept::accept_loop;
pub use mux::{Mux, MuxConfig, MuxError, StreamedAnswer};
pub use streamed::{StreamClosed, StreamSender};
pub use tls::{ClientTls, NodeTls, TlsError};
pub use transport::{
    BoxStream, Dialer, Listener, Stream, StreamReader, StreamWriter, Tcp, split, tcp,
};
pub use writer::{Extra, NoExtra, WriterConfig};
