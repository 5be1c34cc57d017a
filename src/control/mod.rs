//! The control socket: protocol codec and client. The
//! server side lives in the agent's event loop (`agent::control`).

pub mod client;
pub mod event;
pub mod proto;
pub mod terminal;
