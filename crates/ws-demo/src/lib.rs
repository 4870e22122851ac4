//! `ws-demo`: the demo workload the adapter is shown with: a WebSocket service that exports its exact live
//! connection count and sheds connections when asked ([`server`], the wire format of the shed
//! contract in [`shed`]) and a load generator whose clients reconnect like real ones when a server
//! closes them ([`load`]). Both run from the `ws-demo` binary. [`local`] is
//! `ws-demo demo` (what `make demo` runs), which puts them, the adapter (in process, through its
//! library) and the HPA formula ([`hpa`]) together. This crate depends on the adapter; the adapter
//! never depends on it.
//!
//! Both sides keep per-connection memory small so that one process holds 10,000 connections:
//! the buffer sizes below replace tungstenite's defaults (128 KiB read buffer, 128 KiB write
//! target, unlimited write buffer, 64 MiB messages, 16 MiB frames).
//!
//! Measured (release build, 10,000 idle `/ws/echo` connections from one `ws-demo load`, pings
//! every second): the server's VmRSS grows by 3.5 KiB per connection with these sizes, against
//! 135 KiB with tungstenite's defaults. Reproduce with
//! `cargo test --release --test demo_server -- --ignored --nocapture memory`.

pub mod hpa;
pub mod load;
pub mod local;
pub mod server;
pub mod shed;

/// Read buffer of each WebSocket, allocated (and zero-filled) eagerly by tungstenite. Larger
/// frames still get through: the buffer grows for one frame, up to [`MAX_FRAME_SIZE`].
/// Unit: bytes.
pub const READ_BUFFER_SIZE: usize = 1024;

/// Frames are written to the socket as soon as they are queued (no coalescing buffer), so an
/// idle connection holds no write buffer. Unit: bytes.
pub const WRITE_BUFFER_SIZE: usize = 0;

/// Largest amount of outgoing data queued for a peer that does not read; past it a send fails
/// instead of buffering without bound. Unit: bytes.
pub const MAX_WRITE_BUFFER_SIZE: usize = 64 * 1024;

/// Largest incoming message (chat and echo lines are small). Unit: bytes.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Largest incoming frame. Unit: bytes.
pub const MAX_FRAME_SIZE: usize = 16 * 1024;

/// The tungstenite configuration with the sizes above, for clients (the server applies the same
/// sizes through axum's `WebSocketUpgrade`).
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(MAX_WRITE_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_FRAME_SIZE))
}
