//! A minimal writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Written in-process (rather than with `cpio -o`) so that the archive is
//! deterministic and needs no staging directory.

/// Builds an uncompressed `newc` archive in memory.
#[derive(Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

impl CpioWriter {
    /// Creates an empty archive.
    pub fn new() -> Self {
        CpioWriter {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// Adds a directory (parents must be added first).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, &[], (0, 0));
    }

    /// Adds a regular file with the given permission bits.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, data, (0, 0));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, &[], (major, minor));
    }

    /// Adds a symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        // Pad to a 512-byte boundary like cpio(1) does.
        self.buf.resize(self.buf.len().next_multiple_of(512), 0);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut w = CpioWriter::new();
        w.file("/init", 0o755, b"hello");
        let out = w.finish();
        assert_eq!(&out[..6], b"070701");
        // name "init\0" starts right after the 110-byte header.
        assert_eq!(&out[110..115], b"init\0");
        // header + name = 115, padded to 116; data follows.
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(out.len() % 512, 0);
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
