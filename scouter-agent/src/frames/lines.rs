//! Source lines from CPython line-number tables, decoded in userspace from bytes read out of the target process.
//!
//! A code object maps bytecode positions to lines with a compact table whose format changed twice:
//!
//! - 3.8, 3.9: `co_lnotab`, pairs `(address increment: u8, line increment: i8)`. An instruction's line is the
//!   line reached after applying every pair whose cumulated address is at or before the instruction.
//! - 3.10: `co_linetable`, pairs `(range length in bytes: u8, line delta: i8)` describing consecutive address
//!   ranges; a line delta of -128 marks a range without a line (and leaves the running line untouched).
//! - 3.11 and later: the "location table" (`InternalDocs/locations.md`), variable-length entries that each cover
//!   1 to 8 code units. Only the header byte (high bit set) and, for two forms, a varint line delta matter for
//!   lines; column information is skipped.
//!
//! Lines always accumulate from `co_firstlineno`. Decoding never trusts the table: malformed input yields `None`,
//! and every walk is linear in the table's length.

/// Which line-table format a version uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// `co_lnotab` of 3.8 and 3.9.
    Lnotab,
    /// `co_linetable` of 3.10.
    Linetable310,
    /// The location table (`co_linetable`) of 3.11 and later.
    Locations,
}

impl LineTableFormat {
    /// The format of CPython 3.`minor`; None outside 8..=14.
    pub fn for_minor(minor: u8) -> Option<Self> {
        match minor {
            8 | 9 => Some(Self::Lnotab),
            10 => Some(Self::Linetable310),
            // 3.14 kept the location table introduced in 3.11, so it decodes the same way.
            11..=14 => Some(Self::Locations),
            _ => None,
        }
    }
}

/// The source line of the instruction at byte offset `offset` into the code's bytecode (for 3.11+: offset in bytes
/// into co_code_adaptive, i.e. 2 * code-unit index), given `first_line` (co_firstlineno) and the raw table bytes.
/// None when the table says the instruction has no line (or the table is malformed / offset past its end).
///
/// `co_lnotab` does not record where the bytecode ends, so with [`LineTableFormat::Lnotab`] an offset past the end
/// of the code gets the last line; callers must bound the offset by the code's size themselves.
pub fn line_at(format: LineTableFormat, table: &[u8], first_line: u32, offset: u32) -> Option<u32> {
    match format {
        LineTableFormat::Lnotab => lnotab_line(table, first_line, offset),
        LineTableFormat::Linetable310 => linetable310_line(table, first_line, offset),
        LineTableFormat::Locations => location_table_line(table, first_line, offset),
    }
}

/// Lines are carried as i64 while walking because deltas may be negative; a result outside u32 means the table
/// (or the first line we were given) is garbage.
fn as_line(line: i64) -> Option<u32> {
    u32::try_from(line).ok()
}

fn lnotab_line(table: &[u8], first_line: u32, offset: u32) -> Option<u32> {
    let offset = u64::from(offset);
    let mut address = 0u64;
    let mut line = i64::from(first_line);
    // A trailing odd byte is not a pair; CPython ignores it too.
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        // Signed since 3.6, so that lines can go backwards (loops, multi-line expressions).
        line += i64::from(pair[1] as i8);
    }
    as_line(line)
}

/// The 3.10 line delta meaning "this range has no line".
const NO_LINE_310: i8 = -128;

fn linetable310_line(table: &[u8], first_line: u32, offset: u32) -> Option<u32> {
    let offset = u64::from(offset);
    let mut range_end = 0u64;
    let mut line = i64::from(first_line);
    for pair in table.chunks_exact(2) {
        range_end += u64::from(pair[0]);
        let line_delta = pair[1] as i8;
        // A range without a line must not move the running line: later ranges are relative to the last real one.
        let range_line = if line_delta == NO_LINE_310 {
            None
        } else {
            line += i64::from(line_delta);
            Some(line)
        };
        // Ranges are contiguous and walked in order, so the first one ending after the offset contains it.
        // Zero-length ranges (used to split big line jumps) never contain anything.
        if offset < range_end {
            return range_line.and_then(as_line);
        }
    }
    None
}

/// Bytes per code unit (`_Py_CODEUNIT`): location entries count code units, callers give bytes.
const CODE_UNIT_BYTES: u32 = 2;
/// Set on the first byte of each location entry and on no other byte of the table.
const ENTRY_START: u8 = 0x80;
/// Location codes (`_PyCodeLocationInfoKind`); 0..=9 are the short forms, which stay on the current line.
const ONE_LINE_0: u8 = 10;
const ONE_LINE_2: u8 = 12;
const NO_COLUMNS: u8 = 13;
const LONG: u8 = 14;
const NO_LOCATION: u8 = 15;

/// One entry of a 3.11+ location table: its first byte and the bytes up to the next entry.
struct LocationEntry<'a> {
    header: u8,
    body: &'a [u8],
}

impl LocationEntry<'_> {
    fn code(&self) -> u8 {
        (self.header >> 3) & 0x0f
    }

    fn code_units(&self) -> u64 {
        u64::from(self.header & 0x07) + 1
    }

    fn has_line(&self) -> bool {
        self.code() != NO_LOCATION
    }

    /// How far this entry moves the running line; None when its varint is broken.
    fn line_delta(&self) -> Option<i64> {
        match self.code() {
            code @ ONE_LINE_0..=ONE_LINE_2 => Some(i64::from(code - ONE_LINE_0)),
            // Both forms start with the line delta; the long form's columns and end line follow and do not matter.
            NO_COLUMNS | LONG => read_signed_varint(self.body),
            _ => Some(0),
        }
    }
}

/// Splits the next entry off `table`; None at the end of the table or when the table does not start with an
/// entry's first byte (we would have no idea where we are).
fn next_location_entry(table: &[u8]) -> Option<(LocationEntry<'_>, &[u8])> {
    let (&header, after_header) = table.split_first()?;
    if header & ENTRY_START == 0 {
        return None;
    }
    // Finding the next entry by its marker bit rather than by parsing the body is what CPython does, and it keeps
    // us in sync even on forms whose body we do not care about.
    let body_len = after_header.iter().position(|byte| byte & ENTRY_START != 0).unwrap_or(after_header.len());
    let (body, rest) = after_header.split_at(body_len);
    Some((LocationEntry { header, body }, rest))
}

fn location_table_line(table: &[u8], first_line: u32, offset: u32) -> Option<u32> {
    let target_unit = u64::from(offset / CODE_UNIT_BYTES);
    let mut units_end = 0u64;
    let mut line = i64::from(first_line);
    let mut rest = table;
    while let Some((entry, after)) = next_location_entry(rest) {
        // "No location" entries carry no delta, so the running line is unaffected by them.
        line = line.checked_add(entry.line_delta()?)?;
        units_end += entry.code_units();
        if target_unit < units_end {
            return if entry.has_line() { as_line(line) } else { None };
        }
        rest = after;
    }
    None
}

/// Varint chunks are 6 bits, 0x40 says another chunk follows.
const VARINT_CHUNK_BITS: u32 = 6;
const VARINT_CHUNK_MASK: u8 = 0x3f;
const VARINT_CONTINUES: u8 = 0x40;
/// CPython decodes into a 32-bit unsigned int: 6 chunks cover it, anything longer is not a real table.
const VARINT_MAX_CHUNKS: usize = 6;

fn read_varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    for &byte in bytes.iter().take(VARINT_MAX_CHUNKS) {
        value |= u64::from(byte & VARINT_CHUNK_MASK) << shift;
        if byte & VARINT_CONTINUES == 0 {
            return Some(value);
        }
        shift += VARINT_CHUNK_BITS;
    }
    // Ran out of bytes (or of plausible length) while the varint said it continues.
    None
}

/// Signed varints keep the sign in the lowest bit and the magnitude above it.
fn read_signed_varint(bytes: &[u8]) -> Option<i64> {
    let raw = read_varint(bytes)?;
    let magnitude = i64::try_from(raw >> 1).ok()?;
    Some(if raw & 1 == 1 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        python: String,
        minor: u8,
        codes: Vec<FixtureCode>,
    }

    #[derive(Deserialize)]
    struct FixtureCode {
        name: String,
        first_line: u32,
        table: String,
        code_bytes: u32,
        /// The line CPython reports for each 2-byte code unit, in order.
        lines: Vec<Option<u32>>,
    }

    fn load_fixture(json: &str) -> Fixture {
        serde_json::from_str(json).expect("fixture is valid JSON")
    }

    fn fixture_table(code: &FixtureCode) -> Vec<u8> {
        hex::decode(&code.table).expect("fixture table is hex")
    }

    /// Every code unit of every fixture code object must decode to the interpreter's line; mismatches are
    /// collected so that a failure shows the whole picture rather than the first offset.
    fn check_fixture(json: &str, minor: u8, format: LineTableFormat) {
        let fixture = load_fixture(json);
        assert_eq!(fixture.minor, minor);
        assert_eq!(LineTableFormat::for_minor(minor), Some(format));
        assert!(!fixture.codes.is_empty());

        let mut mismatches = Vec::new();
        let mut checked = 0usize;
        for code in &fixture.codes {
            let table = fixture_table(code);
            assert_eq!(code.lines.len() as u32 * 2, code.code_bytes, "{}", code.name);
            for (unit, expected) in code.lines.iter().enumerate() {
                let offset = unit as u32 * 2;
                // The odd byte belongs to the same code unit; a caller handing us one must get the same answer.
                for probe in [offset, offset + 1] {
                    let got = line_at(format, &table, code.first_line, probe);
                    checked += 1;
                    if got != *expected {
                        mismatches.push(format!("{} offset {probe}: expected {expected:?}, got {got:?}", code.name));
                    }
                }
            }
            if format != LineTableFormat::Lnotab {
                let past_end = line_at(format, &table, code.first_line, code.code_bytes);
                if past_end.is_some() {
                    mismatches.push(format!("{} past the end: got {past_end:?}", code.name));
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "Python {}: {} of {checked} offsets wrong, first ones:\n{}",
            fixture.python,
            mismatches.len(),
            mismatches.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    const FIXTURES: [(&str, u8, LineTableFormat); 6] = [
        (include_str!("testdata/lines_38.json"), 8, LineTableFormat::Lnotab),
        (include_str!("testdata/lines_39.json"), 9, LineTableFormat::Lnotab),
        (include_str!("testdata/lines_310.json"), 10, LineTableFormat::Linetable310),
        (include_str!("testdata/lines_311.json"), 11, LineTableFormat::Locations),
        (include_str!("testdata/lines_312.json"), 12, LineTableFormat::Locations),
        (include_str!("testdata/lines_313.json"), 13, LineTableFormat::Locations),
    ];

    #[test]
    fn fixture_38() {
        let (json, minor, format) = FIXTURES[0];
        check_fixture(json, minor, format);
    }

    #[test]
    fn fixture_39() {
        let (json, minor, format) = FIXTURES[1];
        check_fixture(json, minor, format);
    }

    #[test]
    fn fixture_310() {
        let (json, minor, format) = FIXTURES[2];
        check_fixture(json, minor, format);
    }

    #[test]
    fn fixture_311() {
        let (json, minor, format) = FIXTURES[3];
        check_fixture(json, minor, format);
    }

    #[test]
    fn fixture_312() {
        let (json, minor, format) = FIXTURES[4];
        check_fixture(json, minor, format);
    }

    #[test]
    fn fixture_313() {
        let (json, minor, format) = FIXTURES[5];
        check_fixture(json, minor, format);
    }

    /// Guards the fixtures themselves: if regenerated with sources that lose the corner cases, the tests above
    /// would pass without proving much.
    #[test]
    fn fixtures_cover_corner_cases() {
        for (json, minor, _) in FIXTURES {
            let fixture = load_fixture(json);
            let known_lines: Vec<Vec<i64>> = fixture
                .codes
                .iter()
                .map(|code| code.lines.iter().flatten().map(|&line| i64::from(line)).collect())
                .collect();
            let deltas: Vec<i64> =
                known_lines.iter().flat_map(|lines| lines.windows(2).map(|pair| pair[1] - pair[0])).collect();
            assert!(deltas.iter().any(|&delta| delta > 127), "3.{minor}: no line delta > 127");
            assert!(deltas.iter().any(|&delta| delta < -128), "3.{minor}: no line delta < -128");
            assert!(fixture.codes.iter().any(|code| code.first_line > 1000), "3.{minor}: no code far down a file");
            assert!(fixture.codes.iter().any(|code| code.code_bytes > 2 * 254), "3.{minor}: no long code");
            if minor >= 10 {
                assert!(
                    fixture.codes.iter().any(|code| code.lines.contains(&None)),
                    "3.{minor}: no instruction without a line"
                );
            }
        }
    }

    #[test]
    fn formats_by_minor_version() {
        assert_eq!(LineTableFormat::for_minor(7), None);
        assert_eq!(LineTableFormat::for_minor(8), Some(LineTableFormat::Lnotab));
        assert_eq!(LineTableFormat::for_minor(9), Some(LineTableFormat::Lnotab));
        assert_eq!(LineTableFormat::for_minor(10), Some(LineTableFormat::Linetable310));
        for minor in 11..=14 {
            assert_eq!(LineTableFormat::for_minor(minor), Some(LineTableFormat::Locations));
        }
        assert_eq!(LineTableFormat::for_minor(15), None);
        assert_eq!(LineTableFormat::for_minor(0), None);
    }

    #[test]
    fn lnotab_applies_pairs_up_to_the_offset() {
        // Offsets 0..6 on line 10, 6..10 on line 11, from 10 on line 9 (back edge), from 300 on line 9 + 200.
        let table = [0, 0, 6, 1, 4, (-2i8) as u8, 255, 0, 35, 127, 0, 73];
        let line = |offset| line_at(LineTableFormat::Lnotab, &table, 10, offset);
        assert_eq!(line(0), Some(10));
        assert_eq!(line(5), Some(10));
        assert_eq!(line(6), Some(11));
        assert_eq!(line(9), Some(11));
        assert_eq!(line(10), Some(9));
        assert_eq!(line(299), Some(9));
        assert_eq!(line(300), Some(209));
        // The table does not know where the code ends: past the end is the last line.
        assert_eq!(line(u32::MAX), Some(209));
    }

    #[test]
    fn lnotab_edge_cases() {
        assert_eq!(line_at(LineTableFormat::Lnotab, &[], 42, 0), Some(42));
        assert_eq!(line_at(LineTableFormat::Lnotab, &[], 42, 1000), Some(42));
        // The dangling byte of an odd-length table is ignored.
        assert_eq!(line_at(LineTableFormat::Lnotab, &[0, 3, 7], 42, 10), Some(45));
        // Going below line 0 is not a line.
        assert_eq!(line_at(LineTableFormat::Lnotab, &[0, (-5i8) as u8], 2, 0), None);
    }

    #[test]
    fn linetable310_ranges_and_missing_lines() {
        // [0, 4) line 5; [4, 8) no line; [8, 10) line 5 + 3 (relative to the last real line);
        // zero-length entries split a +200 jump, then [10, 264) and [264, 270) on line 208, [270, 272) no line.
        let table = [4, 0, 4, 0x80, 2, 3, 0, 127, 254, 73, 6, 0, 2, 0x80];
        let line = |offset| line_at(LineTableFormat::Linetable310, &table, 5, offset);
        assert_eq!(line(0), Some(5));
        assert_eq!(line(3), Some(5));
        assert_eq!(line(4), None);
        assert_eq!(line(7), None);
        assert_eq!(line(8), Some(8));
        assert_eq!(line(10), Some(208));
        assert_eq!(line(263), Some(208));
        assert_eq!(line(264), Some(208));
        assert_eq!(line(270), None);
        assert_eq!(line(272), None);
        assert_eq!(line(u32::MAX), None);
    }

    #[test]
    fn linetable310_malformed() {
        assert_eq!(line_at(LineTableFormat::Linetable310, &[], 1, 0), None);
        assert_eq!(line_at(LineTableFormat::Linetable310, &[2], 1, 0), None);
        assert_eq!(line_at(LineTableFormat::Linetable310, &[2, 0, 2], 1, 2), None);
        assert_eq!(line_at(LineTableFormat::Linetable310, &[2, (-3i8) as u8], 1, 0), None);
    }

    /// Builds a location entry header: `code` and the number of code units it covers (1..=8).
    fn header(code: u8, units: u8) -> u8 {
        ENTRY_START | (code << 3) | (units - 1)
    }

    #[test]
    fn location_table_forms() {
        let table = [
            // Code units 0..2: short form, line stays 100 (one column byte follows).
            header(3, 2),
            0x12,
            // 2..3: one-line form, +1 (start and end column bytes follow).
            header(ONE_LINE_0 + 1, 1),
            4,
            9,
            // 3..11: one-line form +2 over 8 units.
            header(ONE_LINE_0 + 2, 8),
            0,
            1,
            // 11..12: no location: no line, and the running line (103) does not move.
            header(NO_LOCATION, 1),
            // 12..13: no-column form, -3 as a signed varint (3 << 1 | 1 = 7).
            header(NO_COLUMNS, 1),
            7,
            // 13..14: long form, +200: 400 = 0b110_010000 needs two chunks; then end line delta, cols.
            header(LONG, 1),
            0x40 | 0x10,
            6,
            0,
            5,
            7,
            // 14..16: one-line form 0, same line.
            header(ONE_LINE_0, 2),
            1,
            2,
        ];
        let line = |unit: u32| line_at(LineTableFormat::Locations, &table, 100, unit * 2);
        assert_eq!(line(0), Some(100));
        assert_eq!(line(1), Some(100));
        assert_eq!(line(2), Some(101));
        assert_eq!(line(3), Some(103));
        assert_eq!(line(10), Some(103));
        assert_eq!(line(11), None);
        assert_eq!(line(12), Some(100));
        assert_eq!(line(13), Some(300));
        assert_eq!(line(14), Some(300));
        assert_eq!(line(15), Some(300));
        assert_eq!(line(16), None);
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, 29), Some(300));
        assert_eq!(line_at(LineTableFormat::Locations, &table, 100, u32::MAX), None);
    }

    #[test]
    fn location_table_malformed() {
        let line = |table: &[u8], offset| line_at(LineTableFormat::Locations, table, 10, offset);
        assert_eq!(line(&[], 0), None);
        // Does not start with an entry header.
        assert_eq!(line(&[0x12, header(0, 1)], 0), None);
        // Varint cut off by the end of the table, or by the next entry.
        assert_eq!(line(&[header(LONG, 1), 0x40], 0), None);
        assert_eq!(line(&[header(NO_COLUMNS, 1), 0x41, header(0, 1)], 0), None);
        assert_eq!(line(&[header(NO_COLUMNS, 1)], 0), None);
        // A varint longer than any 32-bit value.
        assert_eq!(line(&[header(NO_COLUMNS, 1), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x00], 0), None);
        // Below line 0.
        assert_eq!(line(&[header(NO_COLUMNS, 1), 2 * 11 + 1], 0), None);
        // A broken entry after the target does not matter: we stop before parsing it.
        assert_eq!(line(&[header(0, 1), 0, header(LONG, 1), 0x40], 0), Some(10));
    }

    #[test]
    fn varints() {
        assert_eq!(read_varint(&[0]), Some(0));
        assert_eq!(read_varint(&[0x3f]), Some(63));
        assert_eq!(read_varint(&[0x40 | 0x01, 0x01]), Some(1 | 1 << 6));
        assert_eq!(read_varint(&[0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x0f]), Some((1 << 34) - 1));
        assert_eq!(read_varint(&[0x40]), None);
        assert_eq!(read_signed_varint(&[4]), Some(2));
        assert_eq!(read_signed_varint(&[5]), Some(-2));
        assert_eq!(read_signed_varint(&[1]), Some(0));
    }

    /// A small deterministic generator: tests must be reproducible, and a crate for this would be overkill.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    const ALL_FORMATS: [LineTableFormat; 3] =
        [LineTableFormat::Lnotab, LineTableFormat::Linetable310, LineTableFormat::Locations];

    #[test]
    fn random_tables_do_not_panic() {
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = random.below(96) as usize;
            let table = random.bytes(len);
            let first_line = random.next() as u32;
            let offset = if random.below(4) == 0 { random.next() as u32 } else { random.below(512) as u32 };
            for format in ALL_FORMATS {
                let _ = line_at(format, &table, first_line, offset);
            }
        }
    }

    #[test]
    fn mutated_real_tables_do_not_panic() {
        let mut random = XorShift(0x1234_5678_9abc_def1);
        for (json, _, format) in FIXTURES {
            for code in load_fixture(json).codes {
                let mut table = fixture_table(&code);
                if table.is_empty() {
                    continue;
                }
                for _ in 0..8 {
                    let at = random.below(table.len() as u64) as usize;
                    table[at] = random.next() as u8;
                    let cut = random.below(table.len() as u64 + 1) as usize;
                    let offset = random.below(u64::from(code.code_bytes) + 16) as u32;
                    for any_format in ALL_FORMATS {
                        let _ = line_at(any_format, &table[..cut], code.first_line, offset);
                        let _ = line_at(any_format, &table, code.first_line, offset);
                    }
                    let _ = line_at(format, &table, u32::MAX, u32::MAX);
                }
            }
        }
    }

    #[test]
    fn huge_tables_decode_in_linear_time() {
        // 4 MiB of maximal entries: each walk is one pass, so this stays well under a second even unoptimized.
        let big = vec![0xff; 4 << 20];
        for format in ALL_FORMATS {
            let _ = line_at(format, &big, u32::MAX, u32::MAX);
        }
        let long_entries: Vec<u8> = [header(LONG, 8), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x3f].repeat(1 << 19);
        assert!(line_at(LineTableFormat::Locations, &long_entries, 1, u32::MAX).is_none());
    }
}
