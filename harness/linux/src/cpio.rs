//! A writer (and a reader, for tests and checks) of the "newc" cpio format the Linux kernel
//! unpacks as an initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the NUL
//! terminated name padded to a multiple of 4, then the data padded to a multiple of 4. The
//! archive ends with an entry named `TRAILER!!!`. Names carry no leading `/`. Timestamps and
//! owners are 0 so the archive is reproducible.

use std::io::{self, Write};

use crate::error::{Error, Result};

/// File type bits of `st_mode`.
pub mod mode {
    /// Regular file.
    pub const REG: u32 = 0o100000;
    /// Directory.
    pub const DIR: u32 = 0o040000;
    /// Symbolic link.
    pub const LNK: u32 = 0o120000;
    /// Character device.
    pub const CHR: u32 = 0o020000;
    /// Mask of the type bits.
    pub const TYPE: u32 = 0o170000;
}

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

/// Streams a newc archive into `W`.
pub struct CpioWriter<W: Write> {
    w: W,
    ino: u32,
    offset: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer at the start of an archive.
    pub fn new(w: W) -> Self {
        CpioWriter {
            w,
            ino: 1,
            offset: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(
        &mut self,
        name: &str,
        st_mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let ino = if name == TRAILER { 0 } else { self.ino };
        self.ino += 1;
        let fields = [
            ino,
            st_mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.put(&header)?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }

    /// A directory (`perm` like 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, mode::DIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, mode::REG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A symbolic link `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, mode::LNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, mode::CHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer, pads the archive to 512 bytes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        let pad = (512 - (self.offset % 512) as usize) % 512;
        self.put(&vec![0u8; pad])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive (no leading `/`).
    pub name: String,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device number of a device node.
    pub rdev: (u32, u32),
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

/// Parses a newc archive (up to its trailer); used by tests and to sanity-check images.
pub fn read_archive(mut buf: &[u8]) -> Result<Vec<Entry>> {
    let bad = |d: String| Error::invalid("cpio archive", d);
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        if buf.len() < HEADER_LEN {
            return Err(bad(format!("truncated header at offset {off}")));
        }
        if &buf[..6] != MAGIC {
            return Err(bad(format!("bad magic at offset {off}")));
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad(format!("non-ASCII header at {off}")))?;
            u32::from_str_radix(s, 16)
                .map_err(|_| bad(format!("bad hex field {i} at offset {off}")))
        };
        let st_mode = field(1)?;
        let size = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        if namesize == 0 {
            return Err(bad(format!("empty name at offset {off}")));
        }
        let name_end = HEADER_LEN + namesize;
        let data_start = (name_end + 3) & !3;
        let data_end = data_start + size;
        if buf.len() < data_end {
            return Err(bad(format!("truncated entry at offset {off}")));
        }
        let name = String::from_utf8_lossy(&buf[HEADER_LEN..name_end - 1]).into_owned();
        if name == TRAILER {
            return Ok(out);
        }
        out.push(Entry {
            name,
            mode: st_mode,
            rdev,
            data: buf[data_start..data_end].to_vec(),
        });
        let next = ((data_end + 3) & !3).min(buf.len());
        off += next;
        buf = &buf[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(&bytes[..6], b"070701");
        let entries = read_archive(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "empty", "bin/sh", "dev/console"]
        );
        assert_eq!(entries[1].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[1].mode, mode::REG | 0o755);
        assert_eq!(entries[0].mode & mode::TYPE, mode::DIR);
        assert_eq!(entries[3].mode & mode::TYPE, mode::LNK);
        assert_eq!(entries[3].data, b"busybox");
        assert_eq!(entries[4].rdev, (5, 1));
        assert!(entries[2].data.is_empty());
    }

    #[test]
    fn header_layout_is_newc() {
        let bytes = sample();
        // First header: ino 1, mode 040755, nlink 2, namesize 4 ("bin\0").
        let h = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&h[6..14], "00000001");
        assert_eq!(&h[14..22], "000041ed");
        assert_eq!(&h[38..46], "00000002");
        assert_eq!(&h[94..102], "00000004");
        // Name plus padding: 110 + 4 = 114 -> next header at 116.
        assert_eq!(&bytes[116..122], b"070701");
    }

    #[test]
    fn rejects_bad_names_and_garbage() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"x").is_err());
        assert!(w.file("a\0b", 0o644, b"x").is_err());
        assert!(read_archive(b"070701garbage").is_err());
        assert!(read_archive(&[0u8; 200]).is_err());
    }

    /// GNU cpio (when installed) lists what we wrote.
    #[test]
    fn gnu_cpio_agrees() {
        let Ok(out) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(&sample())?;
                child.wait_with_output()
            })
        else {
            eprintln!("skipping: cpio is not installed (apt-get install cpio)");
            return;
        };
        assert!(out.status.success());
        let listed = String::from_utf8_lossy(&out.stdout);
        let names: Vec<_> = listed.lines().collect();
        assert_eq!(
            names,
            ["bin", "bin/hello", "empty", "bin/sh", "dev/console"]
        );
    }
}
