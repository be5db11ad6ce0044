//! Reading CPython objects in place: strings, ints, tuples, dicts and instance attributes, laid
//! out as the process's interpreter version lays them out ([`ObjectLayout`]).
//!
//! Each read first checks the object's type flags (a dict is a dict subclass, an id is an int),
//! so memory that moved or was reused reads as "no answer", never as another object's value.
//! Lookups compare keys by their characters (compact ASCII strings only), not by hash: the
//! kernel cannot hash, and the few keys it looks for are short.

use aya_ebpf::helpers::bpf_probe_read_user;
use scouter_ebpf::{instance_dict, ObjectLayout};

use super::python_stack::{read_pointer, read_u64};

const OB_TYPE: u64 = 8;
/// `ob_size` of variable-size objects (tuples, ints up to 3.11), `lv_tag` of ints on 3.12+.
const OB_SIZE: u64 = 16;
const TUPLE_ITEMS: u64 = 24;
const LONG_DIGITS: u64 = 24;
const TYPE_BASICSIZE: u64 = 32;
const TYPE_FLAGS: u64 = 168;
const TYPE_DICTOFFSET: u64 = 288;
const DICT_KEYS: u64 = 32;
/// A split dict's values, apart from its (shared) keys; 0 for a combined dict.
const DICT_VALUES: u64 = 40;
/// `state` of a string: bit 5 compact, bit 6 ASCII, the same in every supported version.
const UNICODE_STATE: u64 = 32;
const COMPACT_ASCII: u32 = 0b11 << 5;

const LONG_SUBCLASS: u64 = 1 << 24;
const TUPLE_SUBCLASS: u64 = 1 << 26;
const DICT_SUBCLASS: u64 = 1 << 29;
/// 3.11, 3.12: attributes in a managed dict or values before the object.
const MANAGED_DICT: u64 = 1 << 4;
/// 3.13: attributes in values after the object.
const INLINE_VALUES: u64 = 1 << 2;

/// Dict entries looked at: the contexts and spans the kernel reads hold far fewer.
const MAX_ENTRIES: u64 = 32;
/// Bits in an int digit (CPython's default on 64-bit builds).
const DIGIT_BITS: u32 = 30;
const DIGIT_MASK: u64 = (1 << DIGIT_BITS) - 1;
/// Digits of an int below 2^128.
const MAX_DIGITS: usize = 5;

/// A key the kernel looks for: its first `len` bytes (a trailing NUL in them makes the match
/// exact, since compact strings end with one), kept as two little-endian words and the masks
/// of the bytes that count, so a comparison is two word operations rather than a byte loop.
#[derive(Clone, Copy)]
pub struct Key {
    pub words: [u64; 2],
    pub masks: [u64; 2],
}

impl Key {
    /// Only the first `len` bytes of `bytes` count.
    pub const fn new(bytes: [u8; 16], len: usize) -> Self {
        let mut words = [0u64; 2];
        let mut masks = [0u64; 2];
        let mut index = 0;
        while index < len && index < 16 {
            words[index / 8] |= (bytes[index] as u64) << (8 * (index % 8));
            masks[index / 8] |= 0xff << (8 * (index % 8));
            index += 1;
        }
        Self { words, masks }
    }

    /// Whether the 16 bytes `text` (as two little-endian words) start with the key.
    #[inline(always)]
    pub fn starts(&self, text: [u64; 2]) -> bool {
        (text[0] ^ self.words[0]) & self.masks[0] == 0 && (text[1] ^ self.words[1]) & self.masks[1] == 0
    }
}

/// Whether `object`'s type has every bit of `flags`.
#[inline(always)]
pub fn has_type_flags(object: u64, flags: u64) -> bool {
    read_pointer(object + OB_TYPE)
        .and_then(|ty| read_u64(ty + TYPE_FLAGS))
        .is_some_and(|type_flags| type_flags & flags == flags)
}

#[inline(always)]
pub fn is_dict(object: u64) -> bool {
    has_type_flags(object, DICT_SUBCLASS)
}

/// Whether the string at `string` is compact ASCII and starts with `key`'s bytes.
#[inline(always)]
pub fn string_starts_with(layout: &ObjectLayout, string: u64, key: &Key) -> bool {
    // SAFETY: reads of the process's memory through the helper; failures are no match.
    let state = unsafe { bpf_probe_read_user((string + UNICODE_STATE) as *const u32) };
    if state.map_or(true, |state| state & COMPACT_ASCII != COMPACT_ASCII) {
        return false;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_user((string + layout.ascii_data as u64) as *const [u64; 2]) }
        .is_ok_and(|text| key.starts(text))
}

/// Where a dict keys object's entries are: (first entry, count, entry size, key's place in
/// an entry).
#[inline(always)]
fn entries_of(layout: &ObjectLayout, keys: u64) -> Option<(u64, u64, u64, u64)> {
    if layout.compact_dict_keys != 0 {
        // 3.11+: log2 of the index bytes at 9, the kind at 10 (0: any keys, entries carry
        // the hash; else string keys, entries of key and value), the entry count at 24.
        // SAFETY: reads of the process's memory through the helper.
        let sizes = unsafe { bpf_probe_read_user((keys + 8) as *const [u8; 3]) }.ok()?;
        let count = read_u64(keys + 24)?;
        let indices = 1u64 << (sizes[1] & 31);
        let (stride, key_at) = if sizes[2] == 0 { (24, 8) } else { (16, 0) };
        Some((keys + 32 + indices, count, stride, key_at))
    } else {
        // 3.8–3.10: the table size at 8, the entry count at 32, indices from 40, each as wide
        // as the size needs; entries of hash, key and value.
        let size = read_u64(keys + 8)?;
        let count = read_u64(keys + 32)?;
        let width = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        Some((keys + 40 + size * width, count, 24, 8))
    }
}

/// The value under `key` among `keys`' entries: from the entry itself, or from `values`
/// (a split table's values, in the same order as the shared keys) when not 0.
#[inline(never)]
fn lookup_in_keys(layout: &ObjectLayout, keys: u64, values: u64, key: &Key) -> u64 {
    let Some((entries, count, stride, key_at)) = entries_of(layout, keys) else { return 0 };
    for index in 0..MAX_ENTRIES {
        if index >= count {
            return 0;
        }
        let entry = entries + index * stride;
        // A deleted entry has no key.
        let Some(name) = read_pointer(entry + key_at) else { continue };
        if string_starts_with(layout, name, key) {
            let at = if values != 0 { values + index * 8 } else { entry + key_at + 8 };
            return read_u64(at).unwrap_or(0);
        }
    }
    0
}

/// The value `dict` (a dict or a dict subclass) holds under the first key starting with `key`.
#[inline(always)]
pub fn dict_item(layout: &ObjectLayout, dict: u64, key: &Key) -> Option<u64> {
    if !is_dict(dict) {
        return None;
    }
    let keys = read_pointer(dict + DICT_KEYS)?;
    let values = read_u64(dict + DICT_VALUES)?;
    let value = lookup_in_keys(layout, keys, values, key);
    (value != 0).then_some(value)
}

/// The attribute `key` an instance of a Python class holds in its own attributes (not its
/// class's), wherever this version keeps them.
#[inline(always)]
pub fn attribute(layout: &ObjectLayout, object: u64, key: &Key) -> Option<u64> {
    let ty = read_pointer(object + OB_TYPE)?;
    let flags = read_u64(ty + TYPE_FLAGS)?;
    match layout.instance_dict {
        instance_dict::AT_DICT_OFFSET => {
            let offset = read_u64(ty + TYPE_DICTOFFSET)? as i64;
            if offset <= 0 {
                return None;
            }
            dict_item(layout, read_pointer(object + offset as u64)?, key)
        }
        instance_dict::VALUES_BEFORE if flags & MANAGED_DICT != 0 => match read_pointer(object - 32) {
            Some(values) => shared_keys_item(layout, ty, values, key),
            None => dict_item(layout, read_pointer(object - 24)?, key),
        },
        instance_dict::TAGGED_BEFORE if flags & MANAGED_DICT != 0 => {
            let word = read_pointer(object - 24)?;
            if word & 1 != 0 {
                shared_keys_item(layout, ty, word + 1, key)
            } else {
                dict_item(layout, word, key)
            }
        }
        instance_dict::INLINE_AFTER if flags & INLINE_VALUES != 0 => {
            let values = object + read_u64(ty + TYPE_BASICSIZE)?;
            // The values' header: capacity, size, embedded, valid; the values follow it.
            // SAFETY: a read of the process's memory through the helper.
            let valid = unsafe { bpf_probe_read_user((values + 3) as *const u8) }.ok()?;
            if valid != 0 {
                shared_keys_item(layout, ty, values + 8, key)
            } else {
                dict_item(layout, read_pointer(object - 24)?, key)
            }
        }
        _ => None,
    }
}

/// The value at `key`'s place in `values`, laid out by the keys `ty`'s instances share.
#[inline(always)]
fn shared_keys_item(layout: &ObjectLayout, ty: u64, values: u64, key: &Key) -> Option<u64> {
    let keys = read_pointer(ty + layout.heap_type_cached_keys as u64)?;
    let value = lookup_in_keys(layout, keys, values, key);
    (value != 0).then_some(value)
}

/// Item `index` (0 or 1) of a tuple (or tuple subclass) that has at least that many.
#[inline(always)]
pub fn tuple_item(tuple: u64, index: u64) -> Option<u64> {
    if !has_type_flags(tuple, TUPLE_SUBCLASS) || read_u64(tuple + OB_SIZE)? <= index {
        return None;
    }
    read_pointer(tuple + TUPLE_ITEMS + index * 8)
}

/// A non-negative int below 2^128, as (high, low) 64-bit halves.
#[inline(always)]
pub fn int_u128(layout: &ObjectLayout, int: u64) -> Option<(u64, u64)> {
    if !has_type_flags(int, LONG_SUBCLASS) {
        return None;
    }
    let size = read_u64(int + OB_SIZE)?;
    let digits = if layout.long_tagged_size != 0 {
        // Sign in the low two bits: 0 positive, 1 zero, 2 negative.
        if size & 3 == 2 {
            return None;
        }
        size >> 3
    } else {
        // Negative ints have a negative size.
        if size as i64 > MAX_DIGITS as i64 || (size as i64) < 0 {
            return None;
        }
        size
    };
    if digits > MAX_DIGITS as u64 {
        return None;
    }
    // Only the digits the int has: reading past a small int could cross into unmapped memory.
    // SAFETY: reads of the process's memory through the helper.
    let first = unsafe { bpf_probe_read_user((int + LONG_DIGITS) as *const [u32; 3]) }.ok()?;
    let rest = if digits > 3 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user((int + LONG_DIGITS + 12) as *const [u32; 2]) }.ok()?
    } else {
        [0; 2]
    };
    let raw = [first[0], first[1], first[2], rest[0], rest[1]];
    let digit = |index: usize| if (index as u64) < digits { raw[index] as u64 & DIGIT_MASK } else { 0 };
    let low = digit(0) | digit(1) << 30 | digit(2) << 60;
    let high = digit(2) >> 4 | digit(3) << 26 | digit(4) << 56;
    Some((high, low))
}
