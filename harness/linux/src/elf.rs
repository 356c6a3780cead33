//! Just enough ELF64 (little endian) reading for the harness: a named section's bytes (a kernel
//! module's `.modinfo`) and whether an executable asks for a dynamic loader (`PT_INTERP`), which
//! tells a static busybox or workload binary from a dynamic one.

use crate::error::{Error, Result};

fn bad(detail: impl Into<String>) -> Error {
    Error::invalid("ELF file", detail)
}

fn u16_at(d: &[u8], off: usize) -> Result<u16> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| bad("truncated"))
}
fn u32_at(d: &[u8], off: usize) -> Result<u32> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| bad("truncated"))
}
fn u64_at(d: &[u8], off: usize) -> Result<u64> {
    d.get(off..off + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| bad("truncated"))
}
fn usize_at(d: &[u8], off: usize) -> Result<usize> {
    usize::try_from(u64_at(d, off)?).map_err(|_| bad("offset out of range"))
}

fn check_header(d: &[u8]) -> Result<()> {
    if d.len() < 64 || &d[..4] != b"\x7fELF" {
        return Err(bad("no ELF magic"));
    }
    if d[4] != 2 || d[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF"));
    }
    Ok(())
}

/// The contents of the section named `name`, if present.
pub fn section<'a>(d: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    check_header(d)?;
    let shoff = usize_at(d, 0x28)?;
    let shentsize = u16_at(d, 0x3a)? as usize;
    let shnum = u16_at(d, 0x3c)? as usize;
    let shstrndx = u16_at(d, 0x3e)? as usize;
    if shoff == 0 || shnum == 0 {
        return Ok(None);
    }
    if shentsize < 64 || shstrndx >= shnum {
        return Err(bad("bad section header table"));
    }
    let sh = |i: usize| -> Result<(u32, usize, usize)> {
        let base = shoff
            .checked_add(i.checked_mul(shentsize).ok_or_else(|| bad("overflow"))?)
            .ok_or_else(|| bad("overflow"))?;
        Ok((
            u32_at(d, base)?,
            usize_at(d, base + 0x18)?,
            usize_at(d, base + 0x20)?,
        ))
    };
    let slice = |off: usize, size: usize| -> Result<&'a [u8]> {
        d.get(off..off.checked_add(size).ok_or_else(|| bad("overflow"))?)
            .ok_or_else(|| bad("section out of file"))
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = slice(stroff, strsize)?;
    for i in 0..shnum {
        let (name_off, off, size) = sh(i)?;
        let Some(rest) = strtab.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return slice(off, size).map(Some);
        }
    }
    Ok(None)
}

/// Whether the executable has a `PT_INTERP` program header (needs a dynamic loader).
pub fn has_interp(d: &[u8]) -> Result<bool> {
    check_header(d)?;
    let phoff = usize_at(d, 0x20)?;
    let phentsize = u16_at(d, 0x36)? as usize;
    let phnum = u16_at(d, 0x38)? as usize;
    for i in 0..phnum {
        if u32_at(d, phoff + i * phentsize)? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `key=value` pairs of a kernel module's `.modinfo` section (NUL separated strings).
pub fn modinfo(d: &[u8]) -> Result<Vec<(String, String)>> {
    let Some(sec) = section(d, ".modinfo")? else {
        return Err(bad("no .modinfo section (not a kernel module?)"));
    };
    Ok(sec
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running test binary is an ELF with sections; it is dynamic unless built static.
    #[test]
    fn reads_own_executable() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(section(&exe, ".text").unwrap().is_some());
        assert!(section(&exe, ".no-such-section").unwrap().is_none());
        has_interp(&exe).unwrap();
    }

    #[test]
    fn rejects_non_elf() {
        assert!(section(b"hello", ".text").is_err());
        assert!(has_interp(&[0u8; 100]).is_err());
        let mut fake = vec![0u8; 64];
        fake[..4].copy_from_slice(b"\x7fELF");
        fake[4] = 2;
        fake[5] = 1;
        // No section table: nothing found, no panic.
        assert_eq!(section(&fake, ".modinfo").unwrap(), None);
        assert!(modinfo(&fake).is_err());
        // Section table pointing outside the file: an error, no panic.
        fake[0x28] = 0xff;
        fake[0x3c] = 3;
        fake[0x3a] = 64;
        assert!(section(&fake, ".modinfo").is_err());
    }
}
