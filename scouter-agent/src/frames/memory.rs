//! Reading a traced process's memory from userspace (`/proc/PID/mem`), for what the kernel's
//! event only points at: code objects and their strings, and the interpreter's runtime state
//! when a layout is checked. Reads never write, and every length is bounded.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Longest string read from a process (file paths, qualified names).
pub const MAX_STRING: usize = 4096;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot open the memory of process {pid}: {source}")]
    Open { pid: u32, source: std::io::Error },
    #[error("cannot read {len} bytes at {address:#x}: {source}")]
    Read { address: u64, len: usize, source: std::io::Error },
    #[error("short read at {address:#x}")]
    Short { address: u64 },
    #[error("not a string object at {address:#x}")]
    NotAString { address: u64 },
}

/// An open `/proc/PID/mem`.
pub struct ProcessMemory {
    file: File,
}

impl ProcessMemory {
    pub fn open(pid: u32) -> Result<Self, MemoryError> {
        File::open(format!("/proc/{pid}/mem"))
            .map(|file| Self { file })
            .map_err(|source| MemoryError::Open { pid, source })
    }

    pub fn bytes(&self, address: u64, len: usize) -> Result<Vec<u8>, MemoryError> {
        let mut buffer = vec![0u8; len];
        let read =
            self.file.read_at(&mut buffer, address).map_err(|source| MemoryError::Read { address, len, source })?;
        if read != len {
            return Err(MemoryError::Short { address });
        }
        Ok(buffer)
    }

    /// Up to `max` bytes at `address`, stopping where the mapping ends: for structures that
    /// sit at the very end of their mapping (a thread's `struct pthread` tops its stack).
    pub fn bytes_until_unmapped(&self, address: u64, max: usize) -> Result<Vec<u8>, MemoryError> {
        let mut buffer = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            match self.file.read_at(&mut buffer[filled..], address + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(_) if filled > 0 => break,
                Err(source) => return Err(MemoryError::Read { address, len: max, source }),
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    pub fn u64(&self, address: u64) -> Result<u64, MemoryError> {
        let bytes = self.bytes(address, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub fn u32(&self, address: u64) -> Result<u32, MemoryError> {
        let bytes = self.bytes(address, 4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// A compact `str` object (every identifier and file name the interpreter makes is one),
    /// given where its ASCII and non-ASCII data start for this version.
    pub fn unicode(&self, address: u64, ascii_data: u64, compact_data: u64) -> Result<String, MemoryError> {
        let length = self.u64(address + UNICODE_LENGTH)? as usize;
        let state = self.u32(address + UNICODE_STATE)?;
        let Some((kind, data_offset)) = compact_str(state, ascii_data, compact_data).filter(|_| length <= MAX_STRING)
        else {
            return Err(MemoryError::NotAString { address });
        };
        let data = address + data_offset;
        let raw = self.bytes(data, length * kind as usize)?;
        decode(&raw, kind).ok_or(MemoryError::NotAString { address })
    }

    /// The contents of a `bytes` object.
    pub fn bytes_object(&self, address: u64, max: usize) -> Result<Vec<u8>, MemoryError> {
        let length = self.u64(address + BYTES_SIZE)? as usize;
        if length > max {
            return Err(MemoryError::Short { address });
        }
        self.bytes(address + BYTES_DATA, length)
    }
}

/// `PyASCIIObject.length` and `.state` (the same in every supported version).
pub(super) const UNICODE_LENGTH: u64 = 16;
pub(super) const UNICODE_STATE: u64 = 32;
/// `PyBytesObject.ob_size` and `ob_sval`.
pub(super) const BYTES_SIZE: u64 = 16;
pub(super) const BYTES_DATA: u64 = 32;

/// A compact `str`'s bytes per character and where its characters start, from its `state`
/// word; `None` for anything else (a legacy string, or not a string at all). The offsets are
/// the version's `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`.
pub(super) fn compact_str(state: u32, ascii_data: u64, compact_data: u64) -> Option<(u32, u64)> {
    let kind = (state >> 2) & 0b111;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
        return None;
    }
    Some((kind, if ascii { ascii_data } else { compact_data }))
}

/// Latin-1, UCS-2 or UCS-4 code units to a string.
pub(super) fn decode(raw: &[u8], kind: u32) -> Option<String> {
    match kind {
        1 => Some(raw.iter().map(|&byte| byte as char).collect()),
        2 => raw.chunks_exact(2).map(|unit| char::from_u32(u16::from_le_bytes([unit[0], unit[1]]) as u32)).collect(),
        4 => raw
            .chunks_exact(4)
            .map(|unit| char::from_u32(u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]])))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode(b"caf\xe9", 1).as_deref(), Some("café"));
        assert_eq!(decode(&[0x3b, 0x04, 0x38, 0x04], 2).as_deref(), Some("ли"));
        assert_eq!(decode(&[0x00, 0xf6, 0x01, 0x00], 4).as_deref(), Some("😀"));
        assert_eq!(decode(&[0x00, 0xd8], 2), None, "a lone surrogate is not text");
    }

    #[test]
    fn reads_its_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let memory = ProcessMemory::open(std::process::id()).unwrap();
        assert_eq!(memory.u64(&value as *const u64 as u64).unwrap(), value);
        assert!(memory.u64(8).is_err(), "unmapped memory is an error");
    }

    #[test]
    fn reads_up_to_the_end_of_a_mapping() {
        const PAGE: usize = 4096;
        // SAFETY: a fresh anonymous mapping of two pages, the second unmapped again, so the
        // first is followed by a hole; both calls only touch memory this test owns.
        let start = unsafe {
            let start = libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(start, libc::MAP_FAILED);
            assert_eq!(libc::munmap((start as *mut u8).add(PAGE).cast(), PAGE), 0);
            start as *mut u8
        };
        // SAFETY: inside the page still mapped.
        unsafe { start.add(PAGE - 8).cast::<u64>().write(0xfeed) };
        let memory = ProcessMemory::open(std::process::id()).unwrap();
        let near_end = start as u64 + PAGE as u64 - 16;
        assert!(memory.bytes(near_end, 64).is_err(), "a whole read past the end fails");
        let prefix = memory.bytes_until_unmapped(near_end, 64).unwrap();
        assert_eq!(prefix.len(), 16);
        assert_eq!(u64::from_le_bytes(prefix[8..].try_into().unwrap()), 0xfeed);
        assert!(memory.bytes_until_unmapped(start as u64 + PAGE as u64, 64).is_err(), "nothing readable");
        // SAFETY: unmapping what this test mapped.
        unsafe { libc::munmap(start.cast(), PAGE) };
    }
}
