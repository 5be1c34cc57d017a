//! Networking of zones on the host side: the pure plans (`plan`), the
//! nf_tables ruleset encoder (`nft`) and the thin netlink layer that
//! applies both (`netlink`), what the agent keeps of it (`host`), and
//! DHCP: a client for host NICs, a server for guests (`dhcp`).
//!
//! The user contract is docs/networking.md.

pub mod dhcp;
pub mod host;
pub mod netlink;
pub mod nft;
pub mod plan;
