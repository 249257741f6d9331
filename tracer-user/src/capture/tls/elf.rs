//! What a mapped file offers to the TLS probes: OpenSSL's API (exported symbols) or Go's
//! `crypto/tls` (symbol table, build version, RET instructions), as file offsets for uprobes.
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// OpenSSL functions probed: (symbol, entry program). Each but `SSL_free` also gets the
/// `ssl_ret` uretprobe.
pub const OPENSSL_FUNCTIONS: &[(&str, &str)] = &[
    ("SSL_read", "ssl_read_entry"),
    ("SSL_write", "ssl_write_entry"),
    ("SSL_read_ex", "ssl_read_ex_entry"),
    ("SSL_write_ex", "ssl_write_ex_entry"),
    ("SSL_do_handshake", "ssl_handshake_entry"),
    ("SSL_free", "ssl_free_entry"),
];

pub const GO_TLS_READ: &str = "crypto/tls.(*Conn).Read";
pub const GO_TLS_WRITE: &str = "crypto/tls.(*Conn).Write";

/// Where to put uprobes in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTarget {
    /// OpenSSL API: (symbol, file offset) of each function found (`SSL_read` and `SSL_write`
    /// always among them).
    OpenSsl(Vec<(&'static str, u64)>),
    /// Go crypto/tls: entry offsets, and the offsets of every RET of `Read` (`Write` is
    /// captured at its entry).
    Go {
        version: String,
        read: u64,
        read_rets: Vec<u64>,
        write: u64,
    },
}

/// What inspecting a file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Nothing TLS-related (most files).
    None,
    Target(TlsTarget),
    /// TLS code that cannot be probed, and why (e.g. a stripped Go binary).
    Unsupported(String),
}

/// Inspects an ELF file (the path may go through `/proc/PID/root`).
pub fn inspect(path: &Path) -> Result<Inspection> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only private mapping; a file changed underneath can only yield wrong
    // offsets (the kernel then rejects or misplaces the probe), not memory unsafety in safe
    // code reading the slice... except truncation, which would SIGBUS: mapped executables
    // are not truncated in place (ETXTBSY); libraries are replaced by rename.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    inspect_bytes(&map)
}

pub fn inspect_bytes(data: &[u8]) -> Result<Inspection> {
    let Ok(obj) = object::File::parse(data) else {
        return Ok(Inspection::None);
    };
    if let Some(section) = obj.section_by_name(".go.buildinfo") {
        return inspect_go(&obj, data, section.data().unwrap_or(&[]));
    }
    // OpenSSL API: exported (dynamic) symbols, in one pass (large binaries have many).
    let mut found: Vec<(&'static str, u64)> = Vec::new();
    for sym in obj.dynamic_symbols() {
        let Ok(name) = sym.name() else { continue };
        if !name.starts_with("SSL_") || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        if let Some((known, _)) = OPENSSL_FUNCTIONS.iter().find(|(n, _)| *n == name)
            && !found.iter().any(|(f, _)| f == known)
            && let Some(off) = file_offset(&obj, sym.address())
        {
            found.push((known, off));
        }
    }
    // Stable order (the table's), for logs.
    found.sort_by_key(|(n, _)| OPENSSL_FUNCTIONS.iter().position(|(f, _)| f == n));
    let has = |n: &str| found.iter().any(|(f, _)| *f == n);
    if has("SSL_read") && has("SSL_write") {
        return Ok(Inspection::Target(TlsTarget::OpenSsl(found)));
    }
    Ok(Inspection::None)
}

/// The shared libraries an ELF file names (`DT_NEEDED`) and its own search paths
/// (`DT_RUNPATH`, else `DT_RPATH`, with `$ORIGIN` replaced by `origin`, the file's directory).
/// Empty for static executables and non-ELF files.
pub fn dynamic_deps(data: &[u8], origin: &str) -> (Vec<String>, Vec<String>) {
    use object::{elf, read::elf::ElfFile64};
    let Ok(file) = ElfFile64::<object::Endianness>::parse(data) else {
        return Default::default();
    };
    let Ok(table) = file.elf_section_table().dynamic_table(file.endian(), data) else {
        return Default::default();
    };
    let (mut needed, mut runpath, mut rpath) = (Vec::new(), Vec::new(), Vec::new());
    for d in table.iter() {
        let Ok(value) = table.string(d) else { continue };
        let value = String::from_utf8_lossy(value).into_owned();
        match d.tag {
            elf::DT_NEEDED => needed.push(value),
            elf::DT_RUNPATH => runpath.push(value),
            elf::DT_RPATH => rpath.push(value),
            _ => {}
        }
    }
    let search = if runpath.is_empty() { rpath } else { runpath };
    let dirs = search
        .iter()
        .flat_map(|s| s.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        .collect();
    (needed, dirs)
}

/// The file offset of a virtual address, from the loadable segment that contains it.
fn file_offset(obj: &object::File<'_>, addr: u64) -> Option<u64> {
    obj.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (file_start, file_size) = seg.file_range();
        (addr >= start && addr < start + size && addr - start < file_size)
            .then(|| file_start + (addr - start))
    })
}

/// The Go version a binary was built with, from its `.go.buildinfo` section: `None` when the
/// format is not one we know.
pub fn go_version(obj: &object::File<'_>, buildinfo: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if buildinfo.len() < 32 || &buildinfo[..14] != MAGIC {
        return None;
    }
    let ptr_size = buildinfo[14] as usize;
    let flags = buildinfo[15];
    if flags & 2 != 0 {
        // Go ≥ 1.18: the version string follows inline, length as a uvarint.
        let (len, n) = uvarint(&buildinfo[32..])?;
        let start = 32 + n;
        let bytes = buildinfo.get(start..start.checked_add(len as usize)?)?;
        return String::from_utf8(bytes.to_vec()).ok();
    }
    // Go 1.13–1.17: a pointer to a Go string header (pointer, length).
    if ptr_size != 8 || flags & 1 != 0 {
        return None; // big-endian or 32-bit: not amd64
    }
    let hdr = u64::from_le_bytes(buildinfo[16..24].try_into().ok()?);
    let read = |addr: u64, len: usize| -> Option<Vec<u8>> {
        obj.sections().find_map(|s| {
            let (a, sz) = (s.address(), s.size());
            if addr >= a && addr + len as u64 <= a + sz {
                let d = s.data().ok()?;
                let off = (addr - a) as usize;
                d.get(off..off + len).map(<[u8]>::to_vec)
            } else {
                None
            }
        })
    };
    let h = read(hdr, 16)?;
    let ptr = u64::from_le_bytes(h[..8].try_into().ok()?);
    let len = u64::from_le_bytes(h[8..].try_into().ok()?) as usize;
    if len > 64 {
        return None;
    }
    String::from_utf8(read(ptr, len)?).ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `go1.19.8` → (1, 19). Development versions (`devel ...`) are `None`.
pub fn parse_go_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn inspect_go(obj: &object::File<'_>, data: &[u8], buildinfo: &[u8]) -> Result<Inspection> {
    let uses_tls = memchr::memmem::find(data, GO_TLS_READ.as_bytes()).is_some();
    if !uses_tls {
        return Ok(Inspection::None);
    }
    let Some(version) = go_version(obj, buildinfo) else {
        return Ok(Inspection::Unsupported(
            "Go binary with crypto/tls: build version not readable".into(),
        ));
    };
    match parse_go_version(&version) {
        Some(v) if v >= (1, 17) => {}
        _ => {
            return Ok(Inspection::Unsupported(format!(
                "Go binary with crypto/tls built by {version}: Go ≥ 1.17 (register ABI) is required"
            )));
        }
    }
    if obj.architecture() != object::Architecture::X86_64 {
        return Ok(Inspection::Unsupported(format!(
            "Go binary with crypto/tls ({version}) for {:?}: only x86_64 is supported",
            obj.architecture()
        )));
    }
    let (Some(read_sym), Some(write_sym)) =
        (go_symbol(obj, GO_TLS_READ), go_symbol(obj, GO_TLS_WRITE))
    else {
        return Ok(Inspection::Unsupported(format!(
            "Go binary with crypto/tls ({version}) is stripped: no symbol table to find {GO_TLS_READ}"
        )));
    };
    let (read_addr, read_size) = read_sym;
    let read =
        file_offset(obj, read_addr).ok_or_else(|| anyhow!("{read_addr:#x} not in a segment"))?;
    let write = file_offset(obj, write_sym.0)
        .ok_or_else(|| anyhow!("{:#x} not in a segment", write_sym.0))?;
    let code = data
        .get(read as usize..(read + read_size) as usize)
        .ok_or_else(|| anyhow!("function at {read_addr:#x} past the end of the file"))?;
    let read_rets: Vec<u64> = ret_offsets(code, read_addr)
        .into_iter()
        .map(|r| read + r)
        .collect();
    if read_rets.is_empty() {
        return Ok(Inspection::Unsupported(format!(
            "Go binary ({version}): no RET instruction found in {GO_TLS_READ}"
        )));
    }
    Ok(Inspection::Target(TlsTarget::Go {
        version,
        read,
        read_rets,
        write,
    }))
}

/// Address and size of a function in the symbol table.
fn go_symbol(obj: &object::File<'_>, name: &str) -> Option<(u64, u64)> {
    obj.symbols()
        .find(|s| s.name() == Ok(name) && s.is_definition())
        .map(|s| (s.address(), s.size()))
        .filter(|(a, s)| *a != 0 && *s != 0)
}

/// Offsets (from the function's start) of every RET instruction in `code`, decoded as x86-64
/// instructions from the start (never a byte scan: 0xC3 occurs inside other instructions).
pub fn ret_offsets(code: &[u8], addr: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            continue;
        }
        if insn.mnemonic() == Mnemonic::Ret {
            rets.push(insn.ip() - addr);
        }
    }
    rets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rets_are_found_by_decoding_not_by_byte() {
        // mov eax, 0xc3 (b8 c3 00 00 00); ret (c3); nop; ret imm16 (c2 08 00)
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0x90, 0xc2, 0x08, 0x00];
        assert_eq!(ret_offsets(&code, 0x1000), vec![5, 7]);
    }

    #[test]
    fn go_versions() {
        assert_eq!(parse_go_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_go_version("go1.17"), Some((1, 17)));
        assert_eq!(parse_go_version("go1.22rc1"), Some((1, 22)));
        assert_eq!(parse_go_version("devel +abc"), None);
        assert!(parse_go_version("go1.16.5").unwrap() < (1, 17));
    }

    #[test]
    fn uvarints() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn system_libssl_exports_the_openssl_api() {
        for p in [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ] {
            let path = Path::new(p);
            if !path.exists() {
                continue;
            }
            match inspect(path).unwrap() {
                Inspection::Target(TlsTarget::OpenSsl(found)) => {
                    assert!(found.iter().any(|(n, _)| *n == "SSL_read_ex"), "{found:?}");
                }
                other => panic!("{other:?}"),
            }
            return;
        }
    }

    #[test]
    fn needed_libraries_of_a_system_binary() {
        let data = std::fs::read("/bin/ls").unwrap();
        let (needed, _) = dynamic_deps(&data, "/bin");
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert_eq!(dynamic_deps(b"not elf", "/"), (vec![], vec![]));
    }

    #[test]
    fn non_elf_is_nothing() {
        assert_eq!(inspect_bytes(b"#!/bin/sh\n").unwrap(), Inspection::None);
    }
}
