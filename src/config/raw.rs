//! The config file as written: one serde struct per section, before any
//! meaning is given to the values.
//!
//! Every field is optional here (required keys are checked in
//! `validate`, where the message can say what to do) and carries its span,
//! so every later diagnostic can point at the value it is about. Enumerated
//! settings stay strings for the same reason: `validate` reports a bad one
//! with the list of allowed values. Unknown keys are found first, all of
//! them, by `document::check_keys` using the field lists these derives
//! produce; `deny_unknown_fields` is a backstop where a table is read into
//! one struct.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

pub use super::ready::{RawHealth, RawReady, RawWatchdog};

/// `[host]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub hostname: Option<Spanned<String>>,
    pub modules: Option<Vec<Spanned<String>>>,
    pub sysctl: Option<BTreeMap<String, Spanned<String>>>,
    pub log_level: Option<Spanned<String>>,
    pub syslog: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub ctrl_alt_del: Option<Spanned<String>>,
    pub rescue_shell: Option<Spanned<String>>,
    pub exit_with: Option<Spanned<String>>,
    pub watchdog: Option<Spanned<RawWatchdog>>,
    pub mounts: Option<Vec<Spanned<RawHostMount>>>,
}

/// One `[[host.mounts]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostMount {
    pub source: Option<Spanned<String>>,
    pub target: Option<Spanned<String>>,
    pub fs: Option<Spanned<String>>,
    pub options: Option<Vec<Spanned<String>>>,
    pub wait: Option<Spanned<String>>,
    pub required: Option<Spanned<bool>>,
}

// The keys `[defaults]` shares with units (`RawCommon`, `RawZoneShared`,
// `RawGuestShared`) are declared with the unit they belong to, in
// `super` (see `shared.rs`).
pub(crate) use super::{RawCommon, RawGuestShared, RawZoneShared};

/// `[defaults]`: the keys that make sense for several units, read from
/// one table into the three shared structs.
#[derive(Debug, Default)]
pub struct RawDefaults {
    pub common: RawCommon,
    pub zone: RawZoneShared,
    pub guest: RawGuestShared,
}

/// The keys only a `[zone.NAME]` has (the rest are in [`RawCommon`] and
/// [`RawZoneShared`]).
#[derive(Debug, Deserialize)]
pub struct RawZone {
    pub root: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub template_mode: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub hostname: Option<Spanned<String>>,
    pub workdir: Option<Spanned<String>>,
    pub mounts: Option<Vec<Spanned<RawMount>>>,
    pub address: Option<Spanned<String>>,
    pub ports: Option<Vec<Spanned<String>>>,
    pub after: Option<Vec<Spanned<String>>>,
}

/// The keys only a `[guest.NAME]` has (the rest are in [`RawCommon`] and
/// [`RawGuestShared`]). A guest's `ready` and `health` have no default.
#[derive(Debug, Deserialize)]
pub struct RawGuest {
    pub kernel: Option<Spanned<String>>,
    pub initrd: Option<Spanned<String>>,
    pub disks: Option<Vec<Spanned<RawDisk>>>,
    pub memory_max: Option<Spanned<Size>>,
    pub cpu_max: Option<Spanned<f64>>,
    pub pids_max: Option<Spanned<i64>>,
    pub nics: Option<Vec<Spanned<RawNic>>>,
    pub ports: Option<Vec<Spanned<String>>>,
    pub after: Option<Vec<Spanned<String>>>,
    pub ready: Option<Spanned<RawReady>>,
    pub health: Option<Spanned<RawHealth>>,
}

/// `[interface.NAME]`: a host NIC.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub address: Option<Spanned<OneOrMany>>,
    pub gateway: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
}

/// `[network.NAME]`: a bridge zonit owns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub address: Option<Spanned<String>>,
    pub address6: Option<Spanned<String>>,
    pub nat: Option<Spanned<bool>>,
    pub dns: Option<Vec<Spanned<String>>>,
    pub dhcp: Option<Spanned<bool>>,
}

/// One entry of a guest's `nics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNic {
    pub network: Spanned<String>,
    pub mac: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
}

/// `backoff = { initial, max, reset_after }`; any subset may be given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Spanned<String>>,
    pub max: Option<Spanned<String>>,
    pub reset_after: Option<Spanned<String>>,
}

/// `start_limit = { burst, interval }`; both are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStartLimit {
    pub burst: Spanned<i64>,
    pub interval: Spanned<String>,
}

/// One entry of a zone's `mounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub source: Spanned<String>,
    pub target: Spanned<String>,
    pub readonly: Option<bool>,
}

/// One entry of a guest's `disks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub path: Spanned<String>,
    pub readonly: Option<bool>,
}

/// A size as written: `"64M"` or a plain integer of bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Size {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"64M\" or an integer number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                i64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A string or an array of strings (`address = "dhcp"` or a list of
/// CIDRs). Problems are reported at the span of the whole value.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// Every string, in order.
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(list) => list,
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// A resource limit as written: an integer or `"unlimited"`.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl Visitor<'_> for LimitVisitor {
            type Value = Limit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-negative integer or \"unlimited\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Limit, E> {
                Ok(Limit::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Limit, E> {
                Ok(Limit::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Limit, E> {
                i64::try_from(v)
                    .map(Limit::Number)
                    .map_err(|_| E::custom("limit is too large; write \"unlimited\""))
            }
        }
        deserializer.deserialize_any(LimitVisitor)
    }
}

/// The field names serde derived for `T`, so the unknown-key check and the
/// `expected one of` lists can never drift from the structs above.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The probe fails by design once it has seen the field list.
    let _ = T::deserialize(FieldProbe {
        fields: &mut fields,
    });
    fields
}

/// A deserializer that records what `deserialize_struct` is asked for.
struct FieldProbe<'a> {
    fields: &'a mut &'static [&'static str],
}

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.fields = fields;
        Err(de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn field_probe_sees_the_derived_field_list() {
        assert_eq!(fields_of::<RawDisk>(), ["path", "readonly"]);
        assert!(fields_of::<RawZone>().contains(&"root"));
        assert!(fields_of::<RawGuest>().contains(&"kernel"));
    }
}
