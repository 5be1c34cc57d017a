//! Networking of zones on the host side: the pure plans (`plan`), the
//! nf_tables ruleset encoder (`nft`) and the thin netlink layer that
//! applies both (`netlink`).
//!
//! The user contract is docs/networking.md.

pub mod netlink;
pub mod nft;
pub mod plan;
