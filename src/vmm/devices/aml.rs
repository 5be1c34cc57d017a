//! A small encoder for ACPI Machine Language, enough for the DSDT the
//! monitor gives its guests: names, scopes, devices, packages, buffers
//! holding resource templates, and a method that sends a notification.
//!
//! Owns: the byte encodings of ACPI 6.5 §20 (AML) and §6.4 (resource
//! descriptors) that the DSDT uses. Invariants: every function returns a
//! complete, self-delimiting AML term, so terms concatenate freely; name
//! segments are padded to four characters with `_` as the spec requires.

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const NOTIFY_OP: u8 = 0x86;

/// Encodes a PkgLength for `content_len` bytes that follow it; the encoded
/// length counts its own bytes too (ACPI 6.5 §20.2.4).
pub fn pkg_length(content_len: usize) -> Vec<u8> {
    if content_len + 1 < 0x40 {
        return vec![(content_len + 1) as u8];
    }
    let mut extra = 1;
    while extra < 3 && content_len + 1 + extra >= 1 << (4 + 8 * extra) {
        extra += 1;
    }
    let total = content_len + 1 + extra;
    let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
    for i in 0..extra {
        out.push((total >> (4 + 8 * i)) as u8);
    }
    out
}

/// Encodes a name path such as `_S5_`, `PWRB` or `\_SB_.PWRB`.
pub fn name_string(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let rest = match path.strip_prefix('\\') {
        Some(rest) => {
            out.push(ROOT_CHAR);
            rest
        }
        None => path,
    };
    let segments: Vec<[u8; 4]> = rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut seg = [b'_'; 4];
            for (dst, src) in seg.iter_mut().zip(s.bytes()) {
                *dst = src;
            }
            seg
        })
        .collect();
    match segments.len() {
        0 => out.push(0), // NullName
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n => {
            out.push(MULTI_NAME_PREFIX);
            out.push(n as u8);
        }
    }
    for seg in segments {
        out.extend_from_slice(&seg);
    }
    out
}

/// An integer constant in its shortest encoding.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        v if v <= 0xff => vec![BYTE_PREFIX, v as u8],
        v if v <= 0xffff => {
            let mut out = vec![WORD_PREFIX];
            out.extend_from_slice(&(v as u16).to_le_bytes());
            out
        }
        v if v <= 0xffff_ffff => {
            let mut out = vec![DWORD_PREFIX];
            out.extend_from_slice(&(v as u32).to_le_bytes());
            out
        }
        v => {
            let mut out = vec![QWORD_PREFIX];
            out.extend_from_slice(&v.to_le_bytes());
            out
        }
    }
}

/// A string constant (ASCII, NUL-terminated).
pub fn string(s: &str) -> Vec<u8> {
    let mut out = vec![STRING_PREFIX];
    out.extend(s.bytes().filter(|&b| b != 0 && b < 0x80));
    out.push(0);
    out
}

/// A compressed EISA id such as `PNP0C0C`, as a DWORD integer.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |i: usize| u16::from(b.get(i).copied().unwrap_or(b'@') & 0x1f);
    let mfg = (letter(0) << 10) | (letter(1) << 5) | letter(2);
    let hex = |i: usize| -> u8 {
        b.get(i)
            .and_then(|&c| char::from(c).to_digit(16))
            .unwrap_or(0) as u8
    };
    let bytes = [
        (mfg >> 8) as u8,
        mfg as u8,
        (hex(3) << 4) | hex(4),
        (hex(5) << 4) | hex(6),
    ];
    let mut out = vec![DWORD_PREFIX];
    out.extend_from_slice(&bytes);
    out
}

/// `Name(path, value)`.
pub fn name(path: &str, value: Vec<u8>) -> Vec<u8> {
    let mut out = vec![NAME_OP];
    out.extend(name_string(path));
    out.extend(value);
    out
}

fn with_pkg_length(op: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend(body);
    out
}

/// `Scope(path) { terms }`.
pub fn scope(path: &str, terms: Vec<Vec<u8>>) -> Vec<u8> {
    let mut body = name_string(path);
    body.extend(terms.into_iter().flatten());
    with_pkg_length(&[SCOPE_OP], body)
}

/// `Device(path) { terms }`.
pub fn device(path: &str, terms: Vec<Vec<u8>>) -> Vec<u8> {
    let mut body = name_string(path);
    body.extend(terms.into_iter().flatten());
    with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], body)
}

/// `Method(path, args, NotSerialized) { terms }`.
pub fn method(path: &str, args: u8, terms: Vec<Vec<u8>>) -> Vec<u8> {
    let mut body = name_string(path);
    body.push(args & 0x7);
    body.extend(terms.into_iter().flatten());
    with_pkg_length(&[METHOD_OP], body)
}

/// `Notify(path, value)`.
pub fn notify(path: &str, value: u64) -> Vec<u8> {
    let mut out = vec![NOTIFY_OP];
    out.extend(name_string(path));
    out.extend(integer(value));
    out
}

/// `Package() { elements }`.
pub fn package(elements: Vec<Vec<u8>>) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    body.extend(elements.into_iter().flatten());
    with_pkg_length(&[PACKAGE_OP], body)
}

/// `Buffer() { bytes }`.
pub fn buffer(bytes: Vec<u8>) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend(bytes);
    with_pkg_length(&[BUFFER_OP], body)
}

/// `ResourceTemplate() { descriptors }`: a buffer closed by an end tag.
pub fn resource_template(descriptors: Vec<Vec<u8>>) -> Vec<u8> {
    let mut bytes: Vec<u8> = descriptors.into_iter().flatten().collect();
    // End tag; a zero checksum means "treat as valid".
    bytes.extend_from_slice(&[0x79, 0x00]);
    buffer(bytes)
}

/// `IO(Decode16, base, base, 1, len)`.
pub fn io_port(base: u16, len: u8) -> Vec<u8> {
    let [lo, hi] = base.to_le_bytes();
    vec![0x47, 0x01, lo, hi, lo, hi, 0x01, len]
}

/// `Memory32Fixed(ReadWrite, base, len)`.
pub fn memory32_fixed(base: u32, len: u32) -> Vec<u8> {
    let mut out = vec![0x86, 0x09, 0x00, 0x01];
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`.
pub fn edge_interrupt(gsi: u32) -> Vec<u8> {
    // Flags: bit 0 consumer, bit 1 edge-triggered; active-high, exclusive.
    let mut out = vec![0x89, 0x06, 0x00, 0x03, 0x01];
    out.extend_from_slice(&gsi.to_le_bytes());
    out
}

/// `IRQNoFlags() { irq }`: an ISA interrupt, edge-triggered, active-high.
pub fn isa_irq(irq: u8) -> Vec<u8> {
    let mask = 1u16 << (irq & 0xf);
    let [lo, hi] = mask.to_le_bytes();
    vec![0x22, lo, hi]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_uses_one_to_four_bytes() {
        assert_eq!(pkg_length(0), vec![1]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 content bytes + 2 length bytes = 65 = 0x41.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        // 4093 + 2 = 4095 still fits 12 bits; 4094 + 3 needs 20 bits.
        assert_eq!(pkg_length(4093), vec![0x4f, 0xff]);
        assert_eq!(pkg_length(4094), vec![0x81, 0x00, 0x01]);
        assert_eq!(pkg_length(1 << 20), vec![0xc4, 0x00, 0x00, 0x01]);
    }

    #[test]
    fn name_strings_are_padded_and_prefixed() {
        assert_eq!(name_string("_S5"), b"_S5_".to_vec());
        assert_eq!(name_string("\\_SB_"), b"\\_SB_".to_vec());
        assert_eq!(name_string("\\_SB_.PWRB"), b"\\\x2e_SB_PWRB".to_vec());
        assert_eq!(name_string("\\A.B.C"), b"\\\x2f\x03A___B___C___".to_vec());
    }

    #[test]
    fn integers_take_their_shortest_form() {
        assert_eq!(integer(0), vec![0x00]);
        assert_eq!(integer(1), vec![0x01]);
        assert_eq!(integer(5), vec![0x0a, 5]);
        assert_eq!(integer(0x505), vec![0x0b, 0x05, 0x05]);
        assert_eq!(integer(0xd000_0000), vec![0x0c, 0, 0, 0, 0xd0]);
        assert_eq!(integer(1 << 32)[0], 0x0e);
    }

    #[test]
    fn eisa_ids_compress_like_the_spec_example() {
        // PNP0C0C is 0x0C0CD041 as a little-endian DWORD.
        assert_eq!(eisa_id("PNP0C0C"), vec![0x0c, 0x41, 0xd0, 0x0c, 0x0c]);
        assert_eq!(eisa_id("PNP0303"), vec![0x0c, 0x41, 0xd0, 0x03, 0x03]);
    }

    #[test]
    fn s5_package_encodes_as_expected() {
        let s5 = name(
            "_S5_",
            package(vec![integer(5), integer(0), integer(0), integer(0)]),
        );
        assert_eq!(
            s5,
            vec![
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0
            ]
        );
    }

    #[test]
    fn device_and_method_wrap_their_bodies() {
        let d = device("PWRB", vec![name("_HID", eisa_id("PNP0C0C"))]);
        assert_eq!(&d[..3], &[0x5b, 0x82, 1 + 4 + 10]);
        assert_eq!(&d[3..7], b"PWRB");
        let m = method("_EVT", 1, vec![notify("\\_SB_.PWRB", 0x80)]);
        assert_eq!(m[0], 0x14);
        assert_eq!(m[1] as usize, m.len() - 1);
        assert_eq!(&m[2..6], b"_EVT");
        assert_eq!(m[6], 1);
        assert_eq!(m[7], 0x86);
    }

    #[test]
    fn resource_template_ends_with_end_tag() {
        let b = resource_template(vec![io_port(0x505, 1)]);
        // BufferOp, PkgLength, BufferSize (byte 10), 8 + 2 descriptor bytes.
        assert_eq!(
            b,
            vec![0x11, 0x0d, 0x0a, 0x0a, 0x47, 1, 5, 5, 5, 5, 1, 1, 0x79, 0]
        );
        assert_eq!(edge_interrupt(9), vec![0x89, 6, 0, 3, 1, 9, 0, 0, 0]);
        assert_eq!(isa_irq(4), vec![0x22, 0x10, 0x00]);
        assert_eq!(memory32_fixed(0xd000_0000, 0x200)[..4], [0x86, 9, 0, 1]);
    }
}
