//! How a unit's settings are declared: its own keys, and the keys
//! `[defaults]` may also set, each of those written once with everything
//! about it.
//!
//! [`unit_settings!`] takes a unit's struct (its own keys, as they end up
//! in the [`super::Config`]) and one row per key `[defaults]` shares with
//! it:
//!
//! ```text
//! /// What it is.
//! key: RAW => TYPE = BUILT_IN_DEFAULT, check CHECK;
//! ```
//!
//! `RAW` is the value as written (a field of the `Raw*` struct serde reads
//! from the unit's table and from `[defaults]`), `CHECK` turns it into
//! `TYPE` (`fn(&mut Checker, key, Option<&RAW>) -> Option<T>` with `T`
//! into `TYPE`, reporting at the value and returning `None` for a bad or
//! absent one), and the key becomes a field of the unit holding the
//! unit's value, else `[defaults]`', else `BUILT_IN_DEFAULT`. A row may add
//! `merged as PART` when a unit's value and `[defaults]`' combine (tables
//! entry by entry, `backoff` field by field, through [`Merge`]); `CHECK`
//! then returns `PART`, and `PART` into `TYPE` gives the unit's value. A
//! row without `= BUILT_IN_DEFAULT` is only checked and merged: it is no
//! field of the unit, and `validate` resolves it where it needs more than
//! the value (a zone's `network` against the networks, a zone's `ready`
//! and `health`, which land in [`super::Common`]).
//!
//! From the rows the macro makes the raw struct (fields in row order,
//! which is the order of the `expected one of` lists), the checked struct
//! with `check` (every row's check, in row order) and `or` (the unit's
//! value first), the struct of the unit's own keys, and `build`, which
//! puts the unit together.

/// How a unit's value and `[defaults]`' combine when both are set, for the
/// rows declared `merged as`; the unit's part wins.
pub(super) trait Merge: Clone {
    fn merge(self, defaults: &Self) -> Self;
}

/// Tables (`env`, `rlimits`) merge entry by entry.
impl<K: Ord + Clone, V: Clone> Merge for std::collections::BTreeMap<K, V> {
    fn merge(self, defaults: &Self) -> Self {
        let mut merged = defaults.clone();
        merged.extend(self);
        merged
    }
}

/// Declares a unit's struct and the keys `[defaults]` shares with it (see
/// the module's header).
macro_rules! unit_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$own_meta:meta])* pub $own:ident: $own_ty:ty, )*
        }
        $(#[$raw_meta:meta])*
        shared $raw:ident, checked $part:ident, own $own_struct:ident {
            $(
                $(#[$key_meta:meta])*
                $key:ident: $raw_ty:ty => $ty:ty $(= $default:expr)?,
                    check $check:path $(, merged as $merged:ty)?;
            )*
        }
    ) => {
        $crate::config::shared::unit_struct! {
            [$(#[$meta])*] $name, $own_struct, $part, part, own,
            own { $( $(#[$own_meta])* $own: $own_ty, )* }
            keys {}
            [ $( ($(#[$key_meta])* $key: $ty $(= $default)?) )* ]
        }

        /// The unit's own keys, checked, for `build`.
        struct $own_struct {
            $( $own: $own_ty, )*
        }

        $(#[$raw_meta])*
        #[derive(Debug, Default, ::serde::Deserialize)]
        pub(super) struct $raw {
            $( pub $key: Option<$raw_ty>, )*
        }

        /// The shared keys checked, each unset until merged.
        #[derive(Debug, Clone, Default)]
        struct $part {
            $( $(#[$key_meta])* $key: Option<$crate::config::shared::checked_type!($ty $(, $merged)?)>, )*
        }

        impl $part {
            /// Checks every key written in `raw`; a bad value is reported
            /// and left unset.
            fn check(c: &mut validate::Checker<'_, '_>, raw: &$raw) -> Self {
                $part {
                    $( $key: $check(c, stringify!($key), raw.$key.as_ref()).map(Into::into), )*
                }
            }

            /// Each key of `self` (a unit's), else of `defaults`.
            fn or(self, defaults: &Self) -> Self {
                $part {
                    $( $key: $crate::config::shared::merge_key!(
                        self.$key, &defaults.$key $(, $merged)?
                    ), )*
                }
            }
        }
    };
}

/// The struct of [`unit_settings!`] and its `build`: sorts the rows one at
/// a time into the unit's fields (those with a built-in default) and the
/// ones only checked, then writes both out. `$p` and `$o` name the
/// checked keys and the own keys inside `build`.
macro_rules! unit_struct {
    (
        [$(#[$meta:meta])*] $name:ident, $own_struct:ident, $part:ident, $p:ident, $o:ident,
        own { $( $(#[$own_meta:meta])* $own:ident: $own_ty:ty, )* }
        keys { $( $(#[$key_meta:meta])* $key:ident: $ty:ty = $default:expr, )* }
        []
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$own_meta])* pub $own: $own_ty, )*
            $( $(#[$key_meta])* pub $key: $ty, )*
        }

        impl $part {
            /// The unit: its own keys, and each shared key as merged or,
            /// where neither the unit nor `[defaults]` set it, its
            /// built-in default.
            fn build(self, $o: $own_struct) -> $name {
                let $p = self;
                $name {
                    $( $own: $o.$own, )*
                    $( $key: $p.$key.map(Into::into).unwrap_or_else(|| $default), )*
                }
            }
        }
    };
    // A row with a built-in default: a field of the unit.
    (
        [$($head:tt)*] $name:ident, $own_struct:ident, $part:ident, $p:ident, $o:ident,
        own { $($own:tt)* }
        keys { $($keys:tt)* }
        [ ($(#[$key_meta:meta])* $key:ident: $ty:ty = $default:expr) $($rest:tt)* ]
    ) => {
        $crate::config::shared::unit_struct! {
            [$($head)*] $name, $own_struct, $part, $p, $o,
            own { $($own)* }
            keys { $($keys)* $(#[$key_meta])* $key: $ty = $default, }
            [ $($rest)* ]
        }
    };
    // A row without one: only checked.
    (
        [$($head:tt)*] $name:ident, $own_struct:ident, $part:ident, $p:ident, $o:ident,
        own { $($own:tt)* }
        keys { $($keys:tt)* }
        [ ($(#[$key_meta:meta])* $key:ident: $ty:ty) $($rest:tt)* ]
    ) => {
        $crate::config::shared::unit_struct! {
            [$($head)*] $name, $own_struct, $part, $p, $o,
            own { $($own)* }
            keys { $($keys)* }
            [ $($rest)* ]
        }
    };
}

/// The checked type of a row: `TYPE`, or `PART` for a `merged as` row.
macro_rules! checked_type {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $merged:ty) => {
        $merged
    };
}

/// `or` for one row: the unit's value wins whole, or, for a `merged as`
/// row, combines with `[defaults]`' through [`Merge`].
macro_rules! merge_key {
    ($unit:expr, $defaults:expr) => {
        $unit.or_else(|| $defaults.clone())
    };
    ($unit:expr, $defaults:expr, $merged:ty) => {
        match ($unit, $defaults) {
            (Some(unit), Some(defaults)) => {
                Some($crate::config::shared::Merge::merge(unit, defaults))
            }
            (unit, defaults) => unit.or_else(|| defaults.clone()),
        }
    };
}

pub(super) use {checked_type, merge_key, unit_settings, unit_struct};

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use toml::Spanned;

    use crate::config::document::Reporter;
    use crate::config::raw::fields_of;
    use crate::config::validate::{self, Checker};

    unit_settings! {
        /// A unit with one key of each kind.
        pub struct Sample {
            /// Its own key.
            pub name: String,
        }
        /// Its shared keys, in an order no sort would give.
        shared RawSample, checked SamplePart, own SampleOwn {
            /// With a built-in default.
            zeta: Spanned<bool> => bool = true, check validate::flag;
            /// Only checked.
            alpha: Spanned<String> => Spanned<String>, check validate::as_written;
            /// Merged entry by entry.
            env: BTreeMap<String, Spanned<String>> => BTreeMap<String, String> = BTreeMap::new(),
                check validate::env, merged as BTreeMap<String, String>;
        }
    }

    /// `SamplePart` of `text` as a unit's table, with the diagnostics.
    fn checked(text: &str) -> (SamplePart, usize) {
        let raw: RawSample = toml::from_str(text).unwrap();
        let mut rep = Reporter::new(Path::new("t.toml"), text);
        let part = SamplePart::check(&mut Checker::new(&mut rep, "[sample.x]"), &raw);
        (part, rep.diagnostics.len())
    }

    fn sample(part: SamplePart) -> Sample {
        part.build(SampleOwn { name: "x".into() })
    }

    #[test]
    fn raw_keys_keep_the_order_of_the_rows() {
        // The order of the `expected one of` lists.
        assert_eq!(fields_of::<RawSample>(), ["zeta", "alpha", "env"]);
    }

    #[test]
    fn built_in_defaults_fill_keys_no_one_set() {
        let (part, errors) = checked("");
        assert_eq!(errors, 0);
        let unit = sample(part.or(&SamplePart::default()));
        assert_eq!(
            unit,
            Sample {
                name: "x".into(),
                zeta: true,
                env: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn the_unit_wins_and_tables_merge_entry_by_entry() {
        let (defaults, _) =
            checked("zeta = false\nalpha = \"d\"\nenv = { A = \"1\", B = \"2\" }\n");
        let (unit, _) = checked("zeta = true\nenv = { B = \"3\" }\n");
        let merged = unit.or(&defaults);
        // A row without a built-in default is merged but is no field.
        assert_eq!(
            merged.alpha.as_ref().map(|a| a.get_ref().as_str()),
            Some("d")
        );
        let unit = sample(merged);
        assert!(unit.zeta);
        let env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "3".into())]);
        assert_eq!(unit.env, env);
    }

    #[test]
    fn a_bad_value_is_reported_and_leaves_the_default() {
        let (defaults, _) = checked("env = { A = \"1\" }\n");
        let (unit, errors) = checked("env = { \"=\" = \"x\" }\n");
        assert_eq!(errors, 1);
        let env = sample(unit.or(&defaults)).env;
        assert_eq!(env, BTreeMap::from([("A".into(), "1".into())]));
    }
}
