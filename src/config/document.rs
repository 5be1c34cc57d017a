//! From TOML text to raw sections, reporting every syntax error, every
//! unknown key and every wrongly typed value with its position.
//!
//! serde stops at the first error of a value, so each section (`[host]`,
//! `[defaults]`, each `[zone.NAME]` and `[guest.NAME]`) is deserialized on its
//! own; inside a section, unknown keys are found by comparing the keys with
//! the derived field lists before serde runs, and each type error removes
//! the offending key and retries, so one bad value never hides another.
//! Keys removed that way are remembered, so that `validate` does not also
//! call them missing.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Diagnostic;
use super::names;
use super::raw::{
    RawBackoff, RawCommon, RawDefaults, RawDisk, RawGuest, RawGuestShared, RawHealth, RawHost,
    RawHostMount, RawInterface, RawMount, RawNetwork, RawNic, RawReady, RawStartLimit, RawWatchdog,
    RawZone, RawZoneShared, fields_of,
};

/// Collects diagnostics and turns byte spans into 1-based line and column.
pub struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    /// Everything reported so far.
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reporter {
            file,
            text,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    /// Reports `message` at the start of `span`.
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let col = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - start,
        };
        (line, col + 1)
    }
}

/// A zone or guest as written.
pub struct RawUnit {
    /// The `NAME` of `[zone.NAME]`, with the span of the name in the header.
    pub name: Spanned<String>,
    /// The settings every unit has, which `[defaults]` may also set.
    pub common: RawCommon,
    /// Its kind's settings.
    pub kind: RawUnitKind,
    /// Keys that were present but could not be read (already reported).
    pub broken: BTreeSet<String>,
}

/// Zone or guest settings as written: the kind's own keys, and those
/// `[defaults]` may also set.
pub enum RawUnitKind {
    Zone(Box<RawZone>, Box<RawZoneShared>),
    Guest(Box<RawGuest>, Box<RawGuestShared>),
}

/// The whole file as written, sections in file order.
#[derive(Default)]
pub struct RawDocument {
    pub host: Option<RawHost>,
    pub defaults: Option<RawDefaults>,
    /// Zones and guests, in the order their headers appear in the file.
    pub units: Vec<RawUnit>,
    /// `[interface.NAME]` sections, in file order.
    pub interfaces: Vec<(Spanned<String>, RawInterface)>,
    /// `[network.NAME]` sections, in file order.
    pub networks: Vec<(Spanned<String>, RawNetwork)>,
}

/// The parser's errors as (span, message), one per mistake: a table whose
/// header appears twice is one error at the second header, not one more
/// "duplicate key" for every key under it.
fn syntax_errors(text: &str, errors: &[toml::de::Error]) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let mut repeated_bodies: Vec<Range<usize>> = Vec::new();
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end().replace('\n', "; ");
        let duplicate = message.starts_with("duplicate key");
        if duplicate && repeated_bodies.iter().any(|b| b.contains(&span.start)) {
            continue;
        }
        let line_start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let line = text[line_start..line_end].trim();
        if duplicate && line.starts_with('[') {
            let body_end = next_header(text, line_end);
            repeated_bodies.push(line_end..body_end);
            let header = line.split('#').next().unwrap_or(line).trim();
            out.push((
                line_start..line_end,
                format!(
                    "table {header} appears twice in the file; merge its keys into the first {header}"
                ),
            ));
            continue;
        }
        out.push((span, format!("TOML syntax: {message}")));
    }
    out
}

/// Byte offset of the start of the first line after `from` that is a table
/// header (`[` first), or the end of `text`.
fn next_header(text: &str, from: usize) -> usize {
    let mut at = from;
    for line in text[from..].split_inclusive('\n') {
        if line.trim_start().starts_with('[') && at > from {
            return at;
        }
        at += line.len();
    }
    text.len()
}

/// Parses `text`. Returns `None` when the TOML itself is malformed: what the
/// parser recovers from a broken file is a guess, and checking a guess would
/// report errors that are not in the file.
pub fn read(text: &str, rep: &mut Reporter<'_>) -> Option<RawDocument> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for (span, message) in syntax_errors(text, &errors) {
            rep.at(span, message);
        }
        return None;
    }

    let mut doc = RawDocument::default();
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "host" => {
                doc.host = section::<RawHost>(value, "[host]", &host_schema(), rep).map(|s| s.0);
            }
            "defaults" => doc.defaults = read_defaults(value, rep),
            kind @ ("zone" | "guest") => read_units(kind, value, rep, &mut doc.units),
            "interface" => {
                let schema = Schema::of(fields_of::<RawInterface>());
                doc.interfaces = read_named("interface", value, &schema, rep);
            }
            "network" => {
                let schema = Schema::of(fields_of::<RawNetwork>());
                doc.networks = read_named("network", value, &schema, rep);
            }
            other => {
                let hint = names::closest(other, &SECTIONS)
                    .map(|c| format!("did you mean [{c}]? "))
                    .unwrap_or_default();
                rep.at(
                    key_span,
                    format!(
                        "unknown section `{other}`; {hint}expected one of: [host], [defaults], [interface.NAME], [network.NAME], [zone.NAME], [guest.NAME]"
                    ),
                );
            }
        }
    }
    doc.units.sort_by_key(|u| u.name.span().start);
    doc.interfaces.sort_by_key(|(n, _)| n.span().start);
    doc.networks.sort_by_key(|(n, _)| n.span().start);
    Some(doc)
}

const SECTIONS: [&str; 6] = ["host", "defaults", "interface", "network", "zone", "guest"];

/// Reads `[kind.NAME]` sections that are not units (interfaces, networks).
fn read_named<'i, T: Deserialize<'i>>(
    kind: &str,
    value: Spanned<DeValue<'i>>,
    schema: &Schema,
    rep: &mut Reporter<'_>,
) -> Vec<(Spanned<String>, T)> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        rep.at(
            span,
            format!("`{kind}` must be a table; write each one as [{kind}.NAME]"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, body) in table {
        let name = Spanned::new(name.span(), name.into_inner().into_owned());
        let label = format!("[{kind}.{}]", name.get_ref());
        if let Some((raw, _)) = section::<T>(body, &label, schema, rep) {
            out.push((name, raw));
        }
    }
    out
}

fn read_units(
    kind: &str,
    value: Spanned<DeValue<'_>>,
    rep: &mut Reporter<'_>,
    units: &mut Vec<RawUnit>,
) {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        rep.at(
            span,
            format!("`{kind}` must be a table of {kind}s; write each one as [{kind}.NAME]"),
        );
        return;
    };
    for (name, body) in table {
        let name = Spanned::new(name.span(), name.into_inner().into_owned());
        let label = format!("[{kind}.{}]", name.get_ref());
        let schema = if kind == "zone" {
            zone_schema()
        } else {
            guest_schema()
        };
        let Some((span, mut table)) = checked_table(body, &label, &schema, rep) else {
            continue;
        };
        let mut part = Part {
            span,
            label: &label,
            broken: BTreeSet::new(),
        };
        let common = part.read::<RawCommon>(&mut table, rep);
        let kind = if kind == "zone" {
            let own = part.read::<RawZone>(&mut table, rep);
            let shared = part.read::<RawZoneShared>(&mut table, rep);
            own.zip(shared)
                .map(|(own, shared)| RawUnitKind::Zone(Box::new(own), Box::new(shared)))
        } else {
            let own = part.read::<RawGuest>(&mut table, rep);
            let shared = part.read::<RawGuestShared>(&mut table, rep);
            own.zip(shared)
                .map(|(own, shared)| RawUnitKind::Guest(Box::new(own), Box::new(shared)))
        };
        if let (Some(common), Some(kind)) = (common, kind) {
            units.push(RawUnit {
                name,
                common,
                kind,
                broken: part.broken,
            });
        }
    }
}

/// `[defaults]`, read from one table into the three shared structs.
fn read_defaults(value: Spanned<DeValue<'_>>, rep: &mut Reporter<'_>) -> Option<RawDefaults> {
    let label = "[defaults]";
    let (span, mut table) = checked_table(value, label, &defaults_schema(), rep)?;
    let mut part = Part {
        span,
        label,
        broken: BTreeSet::new(),
    };
    let common = part.read::<RawCommon>(&mut table, rep);
    let zone = part.read::<RawZoneShared>(&mut table, rep);
    let guest = part.read::<RawGuestShared>(&mut table, rep);
    Some(RawDefaults {
        common: common?,
        zone: zone?,
        guest: guest?,
    })
}

/// The keys a table may hold, and the tables nested in it that have a fixed
/// set of keys too.
struct Schema {
    keys: Vec<&'static str>,
    nested: Vec<Nested>,
    /// Extra advice for a key that is known elsewhere but not allowed here.
    advice: fn(&str) -> Option<&'static str>,
}

struct Nested {
    key: &'static str,
    /// An array of tables (`mounts = [{...}]`) rather than one table.
    array: bool,
    schema: Schema,
}

impl Schema {
    fn of(keys: &[&'static str]) -> Self {
        Schema {
            keys: keys.to_vec(),
            nested: Vec::new(),
            advice: |_| None,
        }
    }

    fn with(mut self, key: &'static str, array: bool, schema: Schema) -> Self {
        self.nested.push(Nested { key, array, schema });
        self
    }
}

fn common_nested(schema: Schema) -> Schema {
    schema
        .with("backoff", false, Schema::of(fields_of::<RawBackoff>()))
        .with(
            "start_limit",
            false,
            Schema::of(fields_of::<RawStartLimit>()),
        )
        .with("ready", false, Schema::of(fields_of::<RawReady>()))
}

fn health_nested(schema: Schema) -> Schema {
    schema.with("health", false, Schema::of(fields_of::<RawHealth>()))
}

fn rlimits_schema() -> Schema {
    let names: Vec<&'static str> = names::RLIMITS.iter().map(|&(n, _)| n).collect();
    Schema::of(&names)
}

fn host_schema() -> Schema {
    Schema::of(fields_of::<RawHost>())
        .with("mounts", true, Schema::of(fields_of::<RawHostMount>()))
        .with("watchdog", false, Schema::of(fields_of::<RawWatchdog>()))
}

/// The keys of `[defaults]`.
fn defaults_keys() -> Vec<&'static str> {
    [
        fields_of::<RawCommon>(),
        fields_of::<RawZoneShared>(),
        fields_of::<RawGuestShared>(),
    ]
    .concat()
}

/// The keys of a `[zone.NAME]`.
fn zone_keys() -> Vec<&'static str> {
    [
        fields_of::<RawZone>(),
        fields_of::<RawZoneShared>(),
        fields_of::<RawCommon>(),
    ]
    .concat()
}

/// The keys of a `[guest.NAME]`.
fn guest_keys() -> Vec<&'static str> {
    [
        fields_of::<RawGuest>(),
        fields_of::<RawGuestShared>(),
        fields_of::<RawCommon>(),
    ]
    .concat()
}

fn defaults_schema() -> Schema {
    let mut schema = health_nested(common_nested(Schema::of(&defaults_keys()))).with(
        "rlimits",
        false,
        rlimits_schema(),
    );
    schema.advice = |key| {
        (zone_keys().contains(&key) || guest_keys().contains(&key))
            .then_some("this key is specific to each unit and has no default; set it in the unit")
    };
    schema
}

fn zone_schema() -> Schema {
    let mut schema = health_nested(common_nested(Schema::of(&zone_keys())))
        .with("mounts", true, Schema::of(fields_of::<RawMount>()))
        .with("rlimits", false, rlimits_schema());
    schema.advice = |key| {
        guest_keys()
            .contains(&key)
            .then_some("it is a guest setting, zones do not have it")
    };
    schema
}

fn guest_schema() -> Schema {
    let mut schema = health_nested(common_nested(Schema::of(&guest_keys())))
        .with("disks", true, Schema::of(fields_of::<RawDisk>()))
        .with("nics", true, Schema::of(fields_of::<RawNic>()));
    schema.advice = |key| {
        zone_keys()
            .contains(&key)
            .then_some("it is a zone setting, guests do not have it")
    };
    schema
}

/// Deserializes one section into one struct, reporting every problem in
/// it. Returns the section with the unreadable keys left out, and the
/// names of those keys.
fn section<'i, T: Deserialize<'i>>(
    value: Spanned<DeValue<'i>>,
    label: &str,
    schema: &Schema,
    rep: &mut Reporter<'_>,
) -> Option<(T, BTreeSet<String>)> {
    let (span, mut table) = checked_table(value, label, schema, rep)?;
    let mut part = Part {
        span,
        label,
        broken: BTreeSet::new(),
    };
    let parsed = part.read(&mut table, rep)?;
    Some((parsed, part.broken))
}

/// The table of a section, its unknown keys reported and removed.
fn checked_table<'i>(
    value: Spanned<DeValue<'i>>,
    label: &str,
    schema: &Schema,
    rep: &mut Reporter<'_>,
) -> Option<(Range<usize>, DeTable<'i>)> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        rep.at(
            span,
            format!("{label} must be a table; write it as a section header with keys below it"),
        );
        return None;
    };
    check_keys(&mut table, schema, label, rep);
    Some((span, table))
}

/// Reads a section's table into one or more structs, each taking the keys
/// it knows; the keys none could read are remembered in `broken`.
struct Part<'l> {
    span: Range<usize>,
    label: &'l str,
    broken: BTreeSet<String>,
}

impl Part<'_> {
    /// Deserializes `T` from `table`, reporting every value it cannot read
    /// and removing that key, so one bad value never hides another.
    fn read<'i, T: Deserialize<'i>>(
        &mut self,
        table: &mut DeTable<'i>,
        rep: &mut Reporter<'_>,
    ) -> Option<T> {
        let (span, label) = (&self.span, self.label);
        // Each failed attempt removes one key, so this ends within len + 1 rounds.
        for _ in 0..=table.len() {
            let value = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let err = match T::deserialize(ValueDeserializer::from(value)) {
                Ok(parsed) => return Some(parsed),
                Err(err) => err,
            };
            let err_span = err.span().unwrap_or_else(|| span.clone());
            let Some((key, path)) = locate(table, &err_span) else {
                rep.at(
                    err_span,
                    format!("in {label}: {}", in_toml_terms(err.message())),
                );
                return None;
            };
            rep.at(
                err_span,
                format!(
                    "invalid `{path}` in {label}: {}",
                    in_toml_terms(err.message())
                ),
            );
            table.remove(key.as_str());
            self.broken.insert(key);
        }
        None
    }
}

/// serde describes what it wanted in Rust terms (`i64`, `struct
/// RawBackoff`); the person reading the message writes TOML.
fn in_toml_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 8] = [
        (" as i128", ""),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        (
            "expected struct RawBackoff",
            "expected a table such as { initial = \"100ms\", max = \"30s\" }",
        ),
        (
            "expected struct RawStartLimit",
            "expected a table such as { burst = 5, interval = \"10s\" }",
        ),
        ("missing field", "missing key"),
    ];
    let mut text = message.trim_end().to_owned();
    for (from, to) in TERMS {
        text = text.replace(from, to);
    }
    if let Some(start) = text.find("expected struct Raw") {
        text.replace_range(start.., "expected a table");
    }
    text
}

/// Finds the top-level key of `table` whose entry contains `span`, and the
/// full dotted path down to the innermost key (for the message).
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<(String, String)> {
    let (key, value) = table
        .iter()
        .find(|(k, v)| contains(&k.span(), span) || contains(&v.span(), span))?;
    let top = key.get_ref().to_string();
    let mut path = top.clone();
    append_path(value, span, &mut path);
    Some((top, path))
}

fn append_path(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut String) {
    match value.get_ref() {
        DeValue::Table(inner) => {
            if let Some((k, v)) = inner
                .iter()
                .find(|(k, v)| contains(&k.span(), span) || contains(&v.span(), span))
            {
                path.push('.');
                path.push_str(k.get_ref());
                append_path(v, span, path);
            }
        }
        DeValue::Array(items) => {
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, item)| contains(&item.span(), span))
            {
                path.push_str(&format!("[{i}]"));
                append_path(item, span, path);
            }
        }
        _ => {}
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Reports every key of `table` (and of its fixed-shape nested tables) that
/// `schema` does not know, and removes it so serde sees only known keys.
fn check_keys(table: &mut DeTable<'_>, schema: &Schema, context: &str, rep: &mut Reporter<'_>) {
    let unknown: Vec<(String, Range<usize>)> = table
        .keys()
        .filter(|k| !schema.keys.contains(&k.get_ref().as_ref()))
        .map(|k| (k.get_ref().to_string(), k.span()))
        .collect();
    for (key, span) in &unknown {
        let advice = match ((schema.advice)(key), names::closest(key, &schema.keys)) {
            (Some(advice), _) => format!("{advice}; "),
            (None, Some(close)) => format!("did you mean `{close}`? "),
            (None, None) => String::new(),
        };
        rep.at(
            span.clone(),
            format!(
                "unknown key `{key}` in {context}; {advice}expected one of: {}",
                schema.keys.join(", ")
            ),
        );
    }
    for (key, _) in &unknown {
        table.remove(key.as_str());
    }

    for nested in &schema.nested {
        let Some(value) = table.get_mut(nested.key) else {
            continue;
        };
        match (value.get_mut(), nested.array) {
            (DeValue::Table(inner), false) => {
                let context = format!("`{}` of {context}", nested.key);
                check_keys(inner, &nested.schema, &context, rep);
            }
            (DeValue::Array(items), true) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let DeValue::Table(inner) = item.get_mut() {
                        let context = format!("`{}[{i}]` of {context}", nested.key);
                        check_keys(inner, &nested.schema, &context, rep);
                    }
                }
            }
            // A value of the wrong shape is reported by serde with its type.
            _ => {}
        }
    }
}
