//! Qualified function names (`OrderService.place`, `outer.<locals>.inner`) recovered from Python source files.
//!
//! CPython 3.11+ code objects carry `co_qualname`, but 3.8–3.10 only have `co_name`. The qualified name
//! lives on the function object (`__qualname__`), and from a frame in those versions the function object
//! cannot be reached (frames point at the code object, not at the function). What the agent does have is the
//! code object's file, `co_firstlineno` and `co_name`, so the qualified name is rebuilt from the file the way
//! the compiler builds it (PEP 3155): the enclosing `def`/`class` statements, found by indentation, and the
//! enclosing lambdas and comprehensions on the same logical line.
//!
//! This is a line scanner, not a parser: it masks string literals and comments, follows bracket depth and
//! line continuations to know where logical lines start, and gives up (falls back to `co_name`) whenever
//! the line does not look like what the code object says was there, e.g. because the file changed on disk.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many scanned files are kept. Each costs about the size of its source, so this bounds memory.
const MAX_CACHED_FILES: usize = 256;
/// Larger files are not read: they are almost certainly generated, and scanning them costs more than the
/// name is worth.
const MAX_SOURCE_BYTES: u64 = 4 << 20;
/// Python's tokenizer advances a tab to the next multiple of 8 when measuring indentation.
const TAB_SIZE: u32 = 8;

/// Qualified names derived from source files, cached per file.
pub struct SourceQualnames {
    /// Scanned files by path; `None` remembers a file that could not be read so it is not retried each time.
    files: HashMap<PathBuf, Option<Arc<ScannedSource>>>,
    /// Paths in the order they were loaded, oldest first, to evict when the cache is full.
    loaded: VecDeque<PathBuf>,
}

impl Default for SourceQualnames {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceQualnames {
    pub fn new() -> Self {
        Self { files: HashMap::new(), loaded: VecDeque::new() }
    }

    /// The qualified name of the function named `name` whose `def` (or `async def`, possibly preceded by
    /// decorators: since 3.8 `co_firstlineno` of a decorated function is the first decorator's line) starts at
    /// `first_line` in the file at `path` (a path the agent can open, e.g. under `/proc/PID/root`).
    /// Lambdas and comprehensions get their enclosing scopes too (`f.<locals>.<lambda>`). Falls back to `name`
    /// when the file cannot be read or does not match (it changed since the code was compiled).
    pub fn qualname(&mut self, path: &Path, first_line: u32, name: &str) -> String {
        if !needs_source(name) {
            return name.to_string();
        }
        self.scanned(path).and_then(|source| source.qualname(first_line, name)).unwrap_or_else(|| name.to_string())
    }

    fn scanned(&mut self, path: &Path) -> Option<Arc<ScannedSource>> {
        if let Some(cached) = self.files.get(path) {
            return cached.clone();
        }
        let scanned = read_source(path).map(|text| Arc::new(ScannedSource::new(&text)));
        self.make_room();
        self.files.insert(path.to_path_buf(), scanned.clone());
        self.loaded.push_back(path.to_path_buf());
        scanned
    }

    fn make_room(&mut self) {
        while self.files.len() >= MAX_CACHED_FILES {
            match self.loaded.pop_front() {
                Some(oldest) => {
                    self.files.remove(&oldest);
                }
                None => {
                    // Only reachable if the two collections disagree; start over rather than grow.
                    self.files.clear();
                }
            }
        }
    }

    #[cfg(test)]
    fn cached_files(&self) -> usize {
        self.files.len()
    }
}

/// The qualified name of the code object named `name` starting at `first_line` (1-based) in `source`, or
/// `None` when the source does not show such a definition there. When several lambdas or comprehensions of
/// that kind start on the line with different qualified names, the outermost one is returned. (The cache
/// scans each file once and answers from that scan; this does the same on one text, for tests.)
#[cfg(test)]
pub fn qualname_in_source(source: &str, first_line: u32, name: &str) -> Option<String> {
    ScannedSource::new(source).qualname(first_line, name)
}

/// Whether the source file can say more than `name` itself: a module's qualname is just `<module>`.
fn needs_source(name: &str) -> bool {
    name != "<module>"
}

fn read_source(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_SOURCE_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES).read_to_end(&mut bytes).ok()?;
    // A non-UTF-8 file (a `# coding: latin-1` one) still has ASCII keywords and indentation.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Code objects the compiler names with angle brackets and gives their own scope.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Anonymous {
    Lambda,
    ListComp,
    SetComp,
    DictComp,
    GenExpr,
}

impl Anonymous {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "<lambda>" => Self::Lambda,
            "<listcomp>" => Self::ListComp,
            "<setcomp>" => Self::SetComp,
            "<dictcomp>" => Self::DictComp,
            "<genexpr>" => Self::GenExpr,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lambda => "<lambda>",
            Self::ListComp => "<listcomp>",
            Self::SetComp => "<setcomp>",
            Self::DictComp => "<dictcomp>",
            Self::GenExpr => "<genexpr>",
        }
    }

    fn scope_kind(self) -> ScopeKind {
        match self {
            Self::Lambda => ScopeKind::Function,
            _ => ScopeKind::Comprehension,
        }
    }
}

/// What an enclosing scope adds to a qualified name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ScopeKind {
    /// `def`, `async def` and `lambda`: names inside are followed by `.<locals>`.
    Function,
    /// A class body: just `Class.`.
    Class,
    /// The compiler does not add `.<locals>` after a comprehension (`f.<locals>.<listcomp>.<lambda>`).
    Comprehension,
}

#[derive(Clone, Debug)]
struct Scope {
    name: String,
    kind: ScopeKind,
    /// Index of the `def`/`class` line, for looking for `global` statements in its body.
    header_line: Option<usize>,
}

fn join_qualname(scopes: &[Scope], name: &str) -> String {
    let mut qualname = String::new();
    for scope in scopes {
        qualname.push_str(&scope.name);
        if scope.kind == ScopeKind::Function {
            qualname.push_str(".<locals>");
        }
        qualname.push('.');
    }
    qualname.push_str(name);
    qualname
}

/// A `def`, `async def` or `class` statement's name.
struct DefinitionHeader<'a> {
    name: &'a str,
    kind: ScopeKind,
}

/// The definition a (masked) logical line starts with, if any.
fn definition_header(code: &str) -> Option<DefinitionHeader<'_>> {
    let code = code.trim_start();
    let (rest, kind) = if let Some(rest) = strip_keyword(code, "async") {
        (strip_keyword(rest, "def")?, ScopeKind::Function)
    } else if let Some(rest) = strip_keyword(code, "def") {
        (rest, ScopeKind::Function)
    } else {
        (strip_keyword(code, "class")?, ScopeKind::Class)
    };
    Some(DefinitionHeader { name: leading_identifier(rest)?, kind })
}

/// `text` after `keyword` and the whitespace that must follow it.
fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(keyword)?;
    let trimmed = rest.trim_start_matches([' ', '\t', '\x0c']);
    (trimmed.len() < rest.len()).then_some(trimmed)
}

fn is_identifier_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn leading_identifier(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !is_identifier_char(c)).unwrap_or(text.len());
    let identifier = &text[..end];
    let first = identifier.chars().next()?;
    (!first.is_ascii_digit()).then_some(identifier)
}

/// Whether a (masked) statement line declares `name` global, e.g. `global a, name`.
fn declares_global(code: &str, name: &str) -> bool {
    code.split(';').any(|statement| {
        strip_keyword(statement.trim_start(), "global")
            .is_some_and(|names| names.split(',').any(|declared| declared.trim() == name))
    })
}

/// Per physical line: where its masked code is and how it relates to logical lines.
#[derive(Clone, Copy, Debug)]
struct LineInfo {
    /// Byte offset of the line's masked code in `ScannedSource::code`.
    code_start: u32,
    /// Index of the physical line on which the logical line containing this one starts.
    statement_start: u32,
    /// Indentation of a line that starts a logical line with code on it; `None` for continuation lines and
    /// for blank or comment-only lines, which Python ignores for indentation.
    indent: Option<u32>,
}

/// A source file reduced to what the qualified-name search needs: each line's code with string contents
/// and comments blanked out (so `def` in a docstring is not a definition), and where logical lines start.
struct ScannedSource {
    code: String,
    lines: Vec<LineInfo>,
}

impl ScannedSource {
    fn new(source: &str) -> Self {
        // Python skips a UTF-8 byte order mark.
        let source = source.strip_prefix('\u{feff}').unwrap_or(source);
        let mut masker = Masker::default();
        let mut code = String::with_capacity(source.len());
        let mut lines = Vec::new();
        let mut statement_start = 0;
        for (index, line) in split_lines(source).into_iter().enumerate() {
            let starts_statement = masker.at_statement_boundary();
            if starts_statement {
                statement_start = index;
            }
            let code_start = to_u32(code.len());
            masker.mask_line(line, &mut code);
            let indent = if starts_statement { indentation(&code[code_start as usize..]) } else { None };
            lines.push(LineInfo { code_start, statement_start: to_u32(statement_start), indent });
        }
        Self { code, lines }
    }

    fn code(&self, index: usize) -> &str {
        let Some(line) = self.lines.get(index) else { return "" };
        let end = self.lines.get(index + 1).map_or(self.code.len(), |next| next.code_start as usize);
        self.code.get(line.code_start as usize..end).unwrap_or("")
    }

    fn starts_statement(&self, index: usize) -> bool {
        self.lines.get(index).is_some_and(|line| line.statement_start as usize == index)
    }

    /// Indentation of a line starting a non-blank logical line.
    fn statement_indent(&self, index: usize) -> Option<u32> {
        if self.starts_statement(index) {
            self.lines.get(index)?.indent
        } else {
            None
        }
    }

    fn qualname(&self, first_line: u32, name: &str) -> Option<String> {
        if !needs_source(name) {
            return Some(name.to_string());
        }
        let index = usize::try_from(first_line).ok()?.checked_sub(1)?;
        if index >= self.lines.len() {
            return None;
        }
        match Anonymous::from_name(name) {
            Some(kind) => self.anonymous_qualname(index, kind),
            // Other compiler-made names (`<module>`-like) have no definition to find.
            None if name.starts_with('<') => None,
            None => self.definition_qualname(index, name),
        }
    }

    /// Qualified name of a `def`/`class` named `name` whose first line (decorators included) is `index`.
    fn definition_qualname(&self, index: usize, name: &str) -> Option<String> {
        let def_line = self.definition_after_decorators(index)?;
        let header = definition_header(self.code(def_line))?;
        if header.name != name {
            return None;
        }
        let mut scopes = self.enclosing_scopes(def_line);
        scopes.push(Scope { name: name.to_string(), kind: header.kind, header_line: Some(def_line) });
        let mut scopes = self.without_global_parents(scopes);
        scopes.pop();
        Some(join_qualname(&scopes, name))
    }

    /// The `def`/`class` line a code object starting at `index` begins with: the line itself, or the first
    /// statement after the decorators starting there (3.8+ counts a decorated function from its first
    /// decorator; older versions from the `def`, which this also accepts).
    fn definition_after_decorators(&self, index: usize) -> Option<usize> {
        let mut line = index;
        let mut after_decorator = false;
        loop {
            if !self.starts_statement(line) {
                return None;
            }
            match self.lines.get(line)?.indent {
                // Blank and comment lines may separate decorators from the `def`.
                None if after_decorator => line += 1,
                None => return None,
                Some(_) if self.code(line).trim_start().starts_with('@') => {
                    after_decorator = true;
                    line = self.next_statement(line);
                }
                Some(_) => return Some(line),
            }
        }
    }

    /// The first line after the logical line starting at `index` (skipping e.g. a multi-line decorator call).
    fn next_statement(&self, index: usize) -> usize {
        let mut line = index + 1;
        while line < self.lines.len() && !self.starts_statement(line) {
            line += 1;
        }
        line
    }

    /// The `def`/`class` scopes around the statement starting at `index`, outermost first: walking back, each
    /// statement indented less than everything since is the header of a block containing it.
    fn enclosing_scopes(&self, index: usize) -> Vec<Scope> {
        let mut scopes = Vec::new();
        let Some(mut threshold) = self.statement_indent(index) else { return scopes };
        let mut line = index;
        while threshold > 0 && line > 0 {
            line -= 1;
            let Some(indent) = self.statement_indent(line) else { continue };
            if indent >= threshold {
                continue;
            }
            threshold = indent;
            if let Some(header) = definition_header(self.code(line)) {
                scopes.push(Scope { name: header.name.to_string(), kind: header.kind, header_line: Some(line) });
            }
        }
        scopes.reverse();
        scopes
    }

    /// `scopes` without those outside the innermost definition that its parent declares `global`: the compiler
    /// names such a definition as if it were at module level, and what is inside it from there.
    fn without_global_parents(&self, mut scopes: Vec<Scope>) -> Vec<Scope> {
        for child in (1..scopes.len()).rev() {
            let (Some(parent_line), Some(child_line)) = (scopes[child - 1].header_line, scopes[child].header_line)
            else {
                continue;
            };
            if self.declares_global_before(parent_line, child_line, &scopes[child].name) {
                scopes.drain(..child);
                break;
            }
        }
        scopes
    }

    /// Whether the body of the definition at `parent_line` declares `name` global before `child_line`, in its
    /// own body (not in a nested `def`/`class`, whose `global` statements are theirs).
    fn declares_global_before(&self, parent_line: usize, child_line: usize, name: &str) -> bool {
        let mut nested_indent = None;
        for line in parent_line + 1..child_line {
            let Some(indent) = self.statement_indent(line) else { continue };
            if nested_indent.is_some_and(|nested| indent > nested) {
                continue;
            }
            nested_indent = None;
            let code = self.code(line);
            if definition_header(code).is_some() {
                nested_indent = Some(indent);
            } else if declares_global(code, name) {
                return true;
            }
        }
        false
    }

    /// Qualified name of a lambda or comprehension starting on line `index`: the scopes around its logical
    /// line, plus the lambdas, comprehensions and one-line `def` body enclosing it within that line.
    fn anonymous_qualname(&self, index: usize, kind: Anonymous) -> Option<String> {
        let start = self.lines.get(index)?.statement_start as usize;
        let outer = self.enclosing_scopes(start);
        let header = definition_header(self.code(start));
        let tokens = self.logical_line_tokens(start);
        let line_number = to_u32(index + 1);
        let constructs = find_constructs(&tokens);
        let body_start = header.as_ref().and_then(|_| header_end(&tokens)).map(|colon| colon + 1);

        // Several lambdas or comprehensions of the kind may start on the line, and the line alone cannot tell
        // which one this is. When their qualified names differ, the outermost one is taken: its prefix holds for
        // all of them (`f.<locals>.<listcomp>` for `[[y for y in r] for r in rows]`), so the function is right.
        constructs
            .iter()
            .filter(|c| c.kind == kind && tokens.get(c.start).is_some_and(|token| token.line == line_number))
            .map(|candidate| {
                let mut scopes = outer.clone();
                if let (Some(header), Some(body_start)) = (&header, body_start) {
                    // Defaults, annotations and base classes belong to the enclosing scope; only a body written
                    // on the header line is inside the definition.
                    if candidate.start >= body_start {
                        scopes.push(Scope {
                            name: header.name.to_string(),
                            kind: header.kind,
                            header_line: Some(start),
                        });
                    }
                }
                let mut enclosing: Vec<&Construct> =
                    constructs.iter().filter(|c| c.encloses(candidate.start)).collect();
                enclosing.sort_by_key(|c| c.start);
                scopes.extend(enclosing.iter().map(|c| Scope {
                    name: c.kind.name().to_string(),
                    kind: c.kind.scope_kind(),
                    header_line: None,
                }));
                let scopes = self.without_global_parents(scopes);
                (scopes.len(), candidate.start, join_qualname(&scopes, kind.name()))
            })
            .min()
            .map(|(_, _, qualname)| qualname)
    }

    /// The tokens that matter for scopes within the logical line starting at `start`.
    fn logical_line_tokens(&self, start: usize) -> Vec<Token> {
        let mut tokens = Vec::new();
        let mut line = start;
        while line < self.lines.len() && (line == start || !self.starts_statement(line)) {
            tokenize_line(self.code(line), to_u32(line + 1), &mut tokens);
            line += 1;
        }
        tokens
    }
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Physical lines, split the way Python reads source: at `\n`, `\r\n` or a lone `\r`.
fn split_lines(source: &str) -> Vec<&str> {
    let bytes = source.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\n' => {
                lines.push(&source[start..at]);
                at += 1;
                start = at;
            }
            b'\r' => {
                lines.push(&source[start..at]);
                at += if bytes.get(at + 1) == Some(&b'\n') { 2 } else { 1 };
                start = at;
            }
            _ => at += 1,
        }
    }
    if start < bytes.len() {
        lines.push(&source[start..]);
    }
    lines
}

/// Indentation of a line as Python's tokenizer measures it, or `None` for a blank or comment-only line
/// (`code` is masked, so a comment is already gone).
fn indentation(code: &str) -> Option<u32> {
    let mut column = 0u32;
    for c in code.chars() {
        match c {
            ' ' => column = column.saturating_add(1),
            '\t' => column = (column / TAB_SIZE).saturating_add(1).saturating_mul(TAB_SIZE),
            // The tokenizer resets the column at a form feed.
            '\x0c' => column = 0,
            _ => return Some(column),
        }
    }
    None
}

/// Where the masker is, inside what spans characters or lines.
#[derive(Clone, Copy, Debug)]
enum Context {
    /// Inside a string literal.
    String { quote: char, triple: bool, formatted: bool },
    /// Inside an f-string's `{...}` replacement field, which is code (comprehensions and lambdas in
    /// `__repr__` f-strings are common); `depth` counts the brackets opened in it.
    Field { depth: u32 },
    /// In a replacement field's conversion or format spec (`!r:>{width}`): text, with nested fields.
    Spec,
}

/// Tracks what spans lines: strings (triple-quoted, or with an escaped newline), brackets and backslash
/// continuations.
#[derive(Default, Debug)]
struct Masker {
    contexts: Vec<Context>,
    bracket_depth: u32,
    backslash_continued: bool,
}

impl Masker {
    fn at_statement_boundary(&self) -> bool {
        self.contexts.is_empty() && self.bracket_depth == 0 && !self.backslash_continued
    }

    /// Appends `line` to `out` with string contents blanked (quotes and f-string fields kept) and the comment
    /// dropped, and updates what carries over to the next line.
    fn mask_line(&mut self, line: &str, out: &mut String) {
        let chars: Vec<char> = line.chars().collect();
        self.backslash_continued = false;
        let mut escaped_newline = false;
        let mut at = 0;
        while at < chars.len() {
            at += match self.contexts.last().copied() {
                Some(Context::String { quote, triple, formatted }) => {
                    if chars[at] == '\\' && at + 1 == chars.len() {
                        escaped_newline = true;
                    }
                    self.mask_in_string(&chars, at, quote, triple, formatted, out)
                }
                Some(Context::Spec) => self.mask_in_spec(&chars, at, out),
                Some(Context::Field { depth }) => self.mask_in_code(&chars, at, Some(depth), out),
                None => self.mask_in_code(&chars, at, None, out),
            };
        }
        // A single-quoted string cannot span lines unless the newline is escaped; if it does not, the line was
        // a syntax error and the next line starts fresh.
        if !escaped_newline {
            let single_quoted =
                self.contexts.iter().position(|context| matches!(context, Context::String { triple: false, .. }));
            if let Some(position) = single_quoted {
                self.contexts.truncate(position);
            }
        }
    }

    /// Masks code at `chars[at]` (at statement level when `field` is `None`); returns the characters used.
    fn mask_in_code(&mut self, chars: &[char], at: usize, field: Option<u32>, out: &mut String) -> usize {
        let c = chars[at];
        match c {
            '#' => return chars.len() - at,
            '\'' | '"' => {
                let triple = is_triple_quote(chars, at, c);
                let formatted = has_format_prefix(chars, at);
                self.contexts.push(Context::String { quote: c, triple, formatted });
                return push_quotes(out, c, triple);
            }
            '(' | '[' | '{' => match field {
                Some(depth) => self.set_field_depth(depth.saturating_add(1)),
                None => self.bracket_depth = self.bracket_depth.saturating_add(1),
            },
            ')' | ']' | '}' => match field {
                Some(0) if c == '}' => {
                    self.contexts.pop();
                }
                Some(depth) => self.set_field_depth(depth.saturating_sub(1)),
                None => self.bracket_depth = self.bracket_depth.saturating_sub(1),
            },
            // At a field's top level these end the expression (`{x!r}`, `{x:>10}`), except for `!=`.
            ':' | '!' if field == Some(0) && !(c == '!' && chars.get(at + 1) == Some(&'=')) => {
                self.contexts.push(Context::Spec);
                out.push(' ');
                return 1;
            }
            '\\' if at + 1 == chars.len() && field.is_none() => {
                self.backslash_continued = true;
                return 1;
            }
            _ => {}
        }
        out.push(c);
        1
    }

    fn set_field_depth(&mut self, depth: u32) {
        if let Some(Context::Field { depth: field_depth }) = self.contexts.last_mut() {
            *field_depth = depth;
        }
    }

    /// Masks string contents at `chars[at]`; returns the characters used.
    fn mask_in_string(
        &mut self,
        chars: &[char],
        at: usize,
        quote: char,
        triple: bool,
        formatted: bool,
        out: &mut String,
    ) -> usize {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        if c == '\\' {
            // Also right for raw strings: a backslash there still keeps the next quote from closing.
            return blank(out, if next.is_some() { 2 } else { 1 });
        }
        if c == quote && (!triple || is_triple_quote(chars, at, c)) {
            self.contexts.pop();
            return push_quotes(out, c, triple);
        }
        if formatted && c == '{' && next != Some('{') {
            self.contexts.push(Context::Field { depth: 0 });
            out.push(c);
            return 1;
        }
        // `{{` and `}}` are literal braces.
        if formatted && (c == '{' || c == '}') && next == Some(c) {
            return blank(out, 2);
        }
        blank(out, 1)
    }

    /// Masks a field's conversion or format spec at `chars[at]`; returns the characters used.
    fn mask_in_spec(&mut self, chars: &[char], at: usize, out: &mut String) -> usize {
        match chars[at] {
            '{' => {
                self.contexts.push(Context::Field { depth: 0 });
                out.push('{');
                1
            }
            '}' => {
                // The spec ends its field too.
                self.contexts.pop();
                if matches!(self.contexts.last(), Some(Context::Field { .. })) {
                    self.contexts.pop();
                }
                out.push('}');
                1
            }
            _ => blank(out, 1),
        }
    }
}

fn blank(out: &mut String, width: usize) -> usize {
    (0..width).for_each(|_| out.push(' '));
    width
}

fn push_quotes(out: &mut String, quote: char, triple: bool) -> usize {
    let width = if triple { 3 } else { 1 };
    (0..width).for_each(|_| out.push(quote));
    width
}

fn is_triple_quote(chars: &[char], at: usize, quote: char) -> bool {
    chars.get(at + 1) == Some(&quote) && chars.get(at + 2) == Some(&quote)
}

/// Whether the string whose opening quote is `chars[quote_at]` is an f-string (`f"`, `rf'`, `Fr"""`).
fn has_format_prefix(chars: &[char], quote_at: usize) -> bool {
    let mut start = quote_at;
    while start > 0 && is_identifier_char(chars[start - 1]) {
        start -= 1;
    }
    let prefix = &chars[start..quote_at];
    prefix.len() <= 3 && prefix.iter().all(|c| "rRbBuUfF".contains(*c)) && prefix.iter().any(|c| matches!(c, 'f' | 'F'))
}

/// What a logical line is reduced to for finding lambdas and comprehensions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TokenKind {
    Open(char),
    Close,
    Colon,
    Comma,
    Semicolon,
    Lambda,
    For,
    In,
    If,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: TokenKind,
    /// 1-based physical line.
    line: u32,
    /// Bracket nesting the token sits at; a bracket counts as outside the pair it opens or closes.
    depth: u32,
}

/// Appends the tokens of one masked physical line; `depth` continues from the tokens already there.
fn tokenize_line(code: &str, line: u32, tokens: &mut Vec<Token>) {
    let mut depth = tokens.last().map_or(0, |last| match last.kind {
        TokenKind::Open(_) => last.depth + 1,
        _ => last.depth,
    });
    let mut chars = code.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let kind = match c {
            '(' | '[' | '{' => {
                tokens.push(Token { kind: TokenKind::Open(c), line, depth });
                depth = depth.saturating_add(1);
                continue;
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                TokenKind::Close
            }
            // `:=` is an assignment, not the colon of a lambda or a definition.
            ':' if chars.peek().map(|&(_, next)| next) == Some('=') => continue,
            ':' => TokenKind::Colon,
            ',' => TokenKind::Comma,
            ';' => TokenKind::Semicolon,
            c if is_identifier_char(c) => {
                let mut end = at + c.len_utf8();
                while let Some(&(next_at, next)) = chars.peek() {
                    if !is_identifier_char(next) {
                        break;
                    }
                    end = next_at + next.len_utf8();
                    chars.next();
                }
                match &code[at..end] {
                    "lambda" => TokenKind::Lambda,
                    "for" => TokenKind::For,
                    "in" => TokenKind::In,
                    "if" => TokenKind::If,
                    _ => continue,
                }
            }
            _ => continue,
        };
        tokens.push(Token { kind, line, depth });
    }
}

/// Index of the colon ending a `def`/`class` header: the first one outside brackets that is not a lambda's.
fn header_end(tokens: &[Token]) -> Option<usize> {
    let mut pending_lambdas = 0u32;
    for (index, token) in tokens.iter().enumerate().filter(|(_, token)| token.depth == 0) {
        match token.kind {
            TokenKind::Lambda => pending_lambdas += 1,
            TokenKind::Colon if pending_lambdas > 0 => pending_lambdas -= 1,
            TokenKind::Colon => return Some(index),
            _ => {}
        }
    }
    None
}

/// A lambda or comprehension within a logical line.
#[derive(Debug)]
struct Construct {
    kind: Anonymous,
    /// Token where it starts, whose line is its `co_firstlineno` (the `lambda` keyword or the opening bracket).
    start: usize,
    /// Token ranges (end exclusive) evaluated inside its scope. A lambda's defaults and a comprehension's
    /// first iterable are evaluated by the enclosing scope, so they are left out.
    inner: Vec<(usize, usize)>,
}

impl Construct {
    fn encloses(&self, token: usize) -> bool {
        self.inner.iter().any(|&(from, to)| from <= token && token < to)
    }
}

fn find_constructs(tokens: &[Token]) -> Vec<Construct> {
    let mut constructs = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let construct = match token.kind {
            TokenKind::Lambda => lambda_at(tokens, index),
            TokenKind::Open(bracket) => comprehension_at(tokens, index, bracket),
            _ => None,
        };
        constructs.extend(construct);
    }
    constructs
}

/// The lambda whose keyword is `tokens[start]`: parameters up to its colon, body up to what ends an
/// expression at its nesting (a comma, a closing bracket, a comprehension's `for`, a statement's end).
fn lambda_at(tokens: &[Token], start: usize) -> Option<Construct> {
    let depth = tokens[start].depth;
    let mut pending_lambdas = 0u32;
    let mut colon = None;
    for (index, token) in tokens.iter().enumerate().skip(start + 1) {
        if token.depth < depth {
            return None;
        }
        if token.depth > depth {
            continue;
        }
        match token.kind {
            TokenKind::Lambda => pending_lambdas += 1,
            TokenKind::Colon if pending_lambdas > 0 => pending_lambdas -= 1,
            TokenKind::Colon => {
                colon = Some(index);
                break;
            }
            _ => {}
        }
    }
    let body_start = colon? + 1;
    let mut body_end = tokens.len();
    pending_lambdas = 0;
    for (index, token) in tokens.iter().enumerate().skip(body_start) {
        if token.depth < depth {
            body_end = index;
            break;
        }
        if token.depth > depth {
            continue;
        }
        match token.kind {
            TokenKind::Lambda => pending_lambdas += 1,
            TokenKind::Colon if pending_lambdas > 0 => pending_lambdas -= 1,
            // A closing bracket at this depth closes a pair inside the body, so only ones below count (above).
            TokenKind::Colon | TokenKind::Comma | TokenKind::Semicolon | TokenKind::For => {
                body_end = index;
                break;
            }
            _ => {}
        }
    }
    Some(Construct { kind: Anonymous::Lambda, start, inner: vec![(body_start, body_end)] })
}

/// The comprehension opened by the bracket at `tokens[open]`, if a `for` follows directly inside it.
fn comprehension_at(tokens: &[Token], open: usize, bracket: char) -> Option<Construct> {
    let inside = tokens[open].depth + 1;
    let close = closing_bracket(tokens, open);
    let children = || (open + 1..close).filter(|&index| tokens[index].depth == inside);

    let mut first_for = None;
    let mut dict_colon = false;
    let mut pending_lambdas = 0u32;
    for index in children() {
        match tokens[index].kind {
            TokenKind::Lambda => pending_lambdas += 1,
            TokenKind::Colon if pending_lambdas > 0 => pending_lambdas -= 1,
            TokenKind::Colon => dict_colon = true,
            TokenKind::For => {
                first_for = Some(index);
                break;
            }
            _ => {}
        }
    }
    let first_for = first_for?;
    let kind = match bracket {
        '[' => Anonymous::ListComp,
        '{' if dict_colon => Anonymous::DictComp,
        '{' => Anonymous::SetComp,
        _ => Anonymous::GenExpr,
    };
    // The first iterable, from its `in` to the next `for`/`if` clause, is evaluated outside.
    let first_in = children().find(|&index| index > first_for && tokens[index].kind == TokenKind::In);
    let inner = match first_in {
        Some(first_in) => {
            let iterable_end = children()
                .find(|&index| index > first_in && matches!(tokens[index].kind, TokenKind::For | TokenKind::If))
                .unwrap_or(close);
            vec![(open + 1, first_in + 1), (iterable_end, close)]
        }
        None => vec![(open + 1, close)],
    };
    Some(Construct { kind, start: open, inner })
}

/// Index of the bracket closing `tokens[open]`, or the end when the line is cut short.
fn closing_bracket(tokens: &[Token], open: usize) -> usize {
    let depth = tokens[open].depth;
    tokens
        .iter()
        .enumerate()
        .skip(open + 1)
        .find(|(_, token)| token.kind == TokenKind::Close && token.depth == depth)
        .map_or(tokens.len(), |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The `*_QUALNAMES` tables were produced by compiling each sample with CPython 3.11.7 and printing
    // `(co_firstlineno, co_name, co_qualname)` for every code object, recursing through `co_consts`:
    //
    //     code = compile(open(path, "rb").read(), path, "exec")
    //     def walk(c):
    //         print((c.co_firstlineno, c.co_name, c.co_qualname))
    //         for k in c.co_consts:
    //             if isinstance(k, types.CodeType): walk(k)
    //
    // 3.11 is the newest version with both `co_qualname` and separate comprehension code objects (3.12 inlines
    // list/set/dict comprehensions). 3.8.18, 3.9.18 and 3.10.13 gave the same `(co_firstlineno, co_name)` pairs
    // for every sample, and 3.12.1 the same qualnames for everything but the inlined comprehensions.

    const SERVICES: &str = r#"import functools


def route(*args, **kwargs):
    def wrap(fn):
        return fn
    return wrap


class OrderService:
    """Places orders."""

    retry = staticmethod(lambda attempt: attempt * 2)
    limits = {name: len(name) for name in ("a", "bb")}

    def place(self, order, key=lambda o: o.id, seen=[n for n in range(3)]):
        totals = [line.price * line.qty for line in order.lines]
        return sum(totals)

    @route("/orders")
    async def fetch(self, order_id):
        async def load():
            return order_id
        return await load()

    @functools.lru_cache(
        maxsize=128,
        typed=False,
    )
    @staticmethod

    # a comment between decorators and the def
    def cached(x): return (lambda y: [y for _ in range(x)])(x)

    class Inner:
        def method(self):
            class Local:
                def deep(self):
                    return {v for v in (1, 2)}
            return Local

        @property
        def value(self): return 1


def outer(items):
    def inner(x):
        def innermost():
            return x
        return innermost
    nested = [[y for y in row] for row in [z for z in items]]
    pick = sorted(items, key=lambda r: [q for q in
                                        r])
    return inner, nested, pick, (i for i in items)


def make_global():
    global registered
    def registered():
        return 1
    def unregistered():
        return 2
    return registered, unregistered


handlers = [lambda: 1, lambda: 2]
squares = [n * n for n in range(10)]
"#;
    const SERVICES_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<module>", "<module>"),
        (4, "route", "route"),
        (5, "wrap", "route.<locals>.wrap"),
        (10, "OrderService", "OrderService"),
        (13, "<lambda>", "OrderService.<lambda>"),
        (14, "<dictcomp>", "OrderService.<dictcomp>"),
        (16, "<lambda>", "OrderService.<lambda>"),
        (16, "<listcomp>", "OrderService.<listcomp>"),
        (16, "place", "OrderService.place"),
        (17, "<listcomp>", "OrderService.place.<locals>.<listcomp>"),
        (20, "fetch", "OrderService.fetch"),
        (22, "load", "OrderService.fetch.<locals>.load"),
        (26, "cached", "OrderService.cached"),
        (33, "<lambda>", "OrderService.cached.<locals>.<lambda>"),
        (33, "<listcomp>", "OrderService.cached.<locals>.<lambda>.<locals>.<listcomp>"),
        (35, "Inner", "OrderService.Inner"),
        (36, "method", "OrderService.Inner.method"),
        (37, "Local", "OrderService.Inner.method.<locals>.Local"),
        (38, "deep", "OrderService.Inner.method.<locals>.Local.deep"),
        (39, "<setcomp>", "OrderService.Inner.method.<locals>.Local.deep.<locals>.<setcomp>"),
        (42, "value", "OrderService.Inner.value"),
        (46, "outer", "outer"),
        (47, "inner", "outer.<locals>.inner"),
        (48, "innermost", "outer.<locals>.inner.<locals>.innermost"),
        (51, "<listcomp>", "outer.<locals>.<listcomp>"),
        (51, "<listcomp>", "outer.<locals>.<listcomp>"),
        (51, "<listcomp>", "outer.<locals>.<listcomp>.<listcomp>"),
        (52, "<lambda>", "outer.<locals>.<lambda>"),
        (52, "<listcomp>", "outer.<locals>.<lambda>.<locals>.<listcomp>"),
        (54, "<genexpr>", "outer.<locals>.<genexpr>"),
        (57, "make_global", "make_global"),
        (59, "registered", "registered"),
        (61, "unregistered", "make_global.<locals>.unregistered"),
        (66, "<lambda>", "<lambda>"),
        (66, "<lambda>", "<lambda>"),
        (67, "<listcomp>", "<listcomp>"),
    ];
    const DOCSTRINGS: &str = r#"def helper():
    """Example:

def fake():
    pass
"""
    return 1


class Repository:
    '''Stores rows, used like this:

def fake():
    class Fake:
        "not code"
    '''

    query = ("SELECT ( FROM t"  # ( unbalanced in a string and a comment (
             )
    path = r"C:\dir\"  # still a string\
def not_a_def(): "

    def find(self, key,
             default=None):
        sql = """
def also_fake():
    pass
"""
        def inner():
            return sql
        return inner, \
            key

    def save(self, row):
        return row
"#;
    const DOCSTRINGS_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<module>", "<module>"),
        (1, "helper", "helper"),
        (10, "Repository", "Repository"),
        (23, "find", "Repository.find"),
        (29, "inner", "Repository.find.<locals>.inner"),
        (34, "save", "Repository.save"),
    ];
    const TABS: &str = concat!(
        "class Tabbed:\n",
        "\tdef method(self):\n",
        "\t\tdef local():\n",
        "\t\t    return [x for x in ()]\n",
        "\t\treturn local\n",
        "\n",
        "\tdef other(self):\n",
        "\t    return lambda: 1\n",
        "\n",
        "def spaced():\n",
        "        return 1\n",
    );
    const TABS_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<module>", "<module>"),
        (1, "Tabbed", "Tabbed"),
        (2, "method", "Tabbed.method"),
        (3, "local", "Tabbed.method.<locals>.local"),
        (4, "<listcomp>", "Tabbed.method.<locals>.local.<locals>.<listcomp>"),
        (7, "other", "Tabbed.other"),
        (8, "<lambda>", "Tabbed.other.<locals>.<lambda>"),
        (10, "spaced", "spaced"),
    ];
    /// Written with `\n`; the test adds the byte order mark and `\r\n` line endings Python was given.
    const WINDOWS: &str = r#"class Windows:
    def first(self):
        return 1

    @property
    def second(self):
        return [c for c in "ab"]

def top():
    return lambda: 0
"#;
    const WINDOWS_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<module>", "<module>"),
        (1, "Windows", "Windows"),
        (2, "first", "Windows.first"),
        (5, "second", "Windows.second"),
        (7, "<listcomp>", "Windows.second.<locals>.<listcomp>"),
        (9, "top", "top"),
        (10, "<lambda>", "top.<locals>.<lambda>"),
    ];
    const ONE_LINERS: &str = r#"def f(x=lambda: 0,
      y=1): return lambda: 1
class K:
    global g
    def g(self): pass
    def h(self): pass
"#;
    const ONE_LINERS_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<lambda>", "<lambda>"),
        (1, "<module>", "<module>"),
        (1, "f", "f"),
        (2, "<lambda>", "f.<locals>.<lambda>"),
        (3, "K", "K"),
        (5, "g", "g"),
        (6, "h", "K.h"),
    ];

    const FSTRINGS: &str = r#"class Point:
    width = 4

    def __repr__(self):
        return f"Point({', '.join(f'{k}={v!r:>{self.width}}' for k, v in vars(self).items())})"

    def labels(self):
        return [f"{{lambda}} {x:{'>'}10}" for x in "lambda: [y for y in z]"]

    def sort(self, rows):
        return sorted(rows, key=lambda r: f"{r!s} {[c for c in r]}")

    def report(self, rows):
        return f"""
def not_code(): {len([r for r in rows])}
"""
"#;
    const FSTRINGS_QUALNAMES: &[(u32, &str, &str)] = &[
        (1, "<module>", "<module>"),
        (1, "Point", "Point"),
        (4, "__repr__", "Point.__repr__"),
        (5, "<genexpr>", "Point.__repr__.<locals>.<genexpr>"),
        (7, "labels", "Point.labels"),
        (8, "<listcomp>", "Point.labels.<locals>.<listcomp>"),
        (10, "sort", "Point.sort"),
        (11, "<lambda>", "Point.sort.<locals>.<lambda>"),
        (11, "<listcomp>", "Point.sort.<locals>.<lambda>.<locals>.<listcomp>"),
        (13, "report", "Point.report"),
        (15, "<listcomp>", "Point.report.<locals>.<listcomp>"),
    ];

    /// Checks every code object of a sample. Where several share a line and name (`[[y for y in r] for r in
    /// rows]`), the line cannot tell them apart and the outermost (shortest) qualified name is expected.
    fn check(source: &str, expected: &[(u32, &str, &str)]) {
        let mut failures = Vec::new();
        for &(line, name, _) in expected {
            let same_place = expected.iter().filter(|&&(l, n, _)| l == line && n == name).map(|&(_, _, q)| q);
            let wanted = same_place.min_by_key(|q| q.len()).unwrap();
            let got = qualname_in_source(source, line, name);
            if got.as_deref() != Some(wanted) {
                failures.push(format!("line {line} {name}: expected {wanted}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn methods_nested_classes_closures_decorators_lambdas_and_comprehensions() {
        check(SERVICES, SERVICES_QUALNAMES);
    }

    #[test]
    fn definitions_inside_strings_are_not_scopes() {
        check(DOCSTRINGS, DOCSTRINGS_QUALNAMES);
        // Lines that only look like definitions, inside strings, are not taken for one.
        assert_eq!(qualname_in_source(DOCSTRINGS, 4, "fake"), None);
        assert_eq!(qualname_in_source(DOCSTRINGS, 13, "fake"), None);
        assert_eq!(qualname_in_source(DOCSTRINGS, 21, "not_a_def"), None);
        assert_eq!(qualname_in_source(DOCSTRINGS, 26, "also_fake"), None);
    }

    #[test]
    fn comprehensions_and_lambdas_in_f_strings() {
        check(FSTRINGS, FSTRINGS_QUALNAMES);
        // Inside the f-string's text, not its fields.
        assert_eq!(qualname_in_source(FSTRINGS, 14, "not_code"), None);
    }

    #[test]
    fn tab_indentation() {
        check(TABS, TABS_QUALNAMES);
    }

    #[test]
    fn byte_order_mark_and_crlf() {
        let source = format!("\u{feff}{}", WINDOWS.replace('\n', "\r\n"));
        check(&source, WINDOWS_QUALNAMES);
        // Lone carriage returns end lines for Python too.
        check(&WINDOWS.replace('\n', "\r"), WINDOWS_QUALNAMES);
    }

    #[test]
    fn one_line_bodies_and_globals_in_classes() {
        check(ONE_LINERS, ONE_LINERS_QUALNAMES);
    }

    #[test]
    fn stale_source_gives_none() {
        // The line holds something else than a definition of that name: the file changed since compiling.
        assert_eq!(qualname_in_source(SERVICES, 16, "cancel"), None);
        assert_eq!(qualname_in_source(SERVICES, 17, "place"), None);
        assert_eq!(qualname_in_source(SERVICES, 18, "<lambda>"), None);
        assert_eq!(qualname_in_source(SERVICES, 13, "<listcomp>"), None);
        assert_eq!(qualname_in_source(SERVICES, 2, "route"), None);
        assert_eq!(qualname_in_source(SERVICES, 0, "route"), None);
        assert_eq!(qualname_in_source(SERVICES, 10_000, "route"), None);
        assert_eq!(qualname_in_source(SERVICES, 16, "<unknown>"), None);
        assert_eq!(qualname_in_source("", 1, "f"), None);
    }

    #[test]
    fn cached_lookup_reads_the_file_and_falls_back_to_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.py");
        std::fs::write(&path, SERVICES).unwrap();
        let mut qualnames = SourceQualnames::new();
        assert_eq!(qualnames.qualname(&path, 16, "place"), "OrderService.place");
        assert_eq!(qualnames.qualname(&path, 47, "inner"), "outer.<locals>.inner");
        // Stale line, module code, unreadable paths: the name as it is.
        assert_eq!(qualnames.qualname(&path, 17, "place"), "place");
        assert_eq!(qualnames.qualname(&path, 1, "<module>"), "<module>");
        assert_eq!(qualnames.qualname(&dir.path().join("missing.py"), 16, "place"), "place");
        assert_eq!(qualnames.qualname(dir.path(), 16, "place"), "place");
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut qualnames = SourceQualnames::new();
        for file in 0..MAX_CACHED_FILES + 10 {
            let path = dir.path().join(format!("m{file}.py"));
            std::fs::write(&path, "class C:\n    def f(self):\n        pass\n").unwrap();
            assert_eq!(qualnames.qualname(&path, 2, "f"), "C.f");
            assert!(qualnames.cached_files() <= MAX_CACHED_FILES);
        }
        assert_eq!(qualnames.cached_files(), MAX_CACHED_FILES);
        // An evicted file is read again.
        assert_eq!(qualnames.qualname(&dir.path().join("m0.py"), 2, "f"), "C.f");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "",
            "\u{feff}",
            "def",
            "def \n",
            "async def",
            "@",
            "@deco(\n",
            "class ((((:\n  def f(): pass",
            ")))]]]}}}\n  def f(): pass",
            "'''\n  def f(): pass",
            "\"unterminated\\\n  def f(): pass",
            "x = lambda\n",
            "x = lambda: [for",
            "f = [x for x in\n",
            "def f(x=lambda: [y for y in\n",
            "\t\t\x0c def f(): ...\r",
            "\\\n\\\n\\",
            "é = lambda: ('ü' for ü in 'ß')",
            "  \n    \n\t\n",
        ];
        let names = ["f", "<lambda>", "<listcomp>", "<genexpr>", "<module>", "", "é"];
        for source in odd {
            for line in 0..5 {
                for name in names {
                    let _ = qualname_in_source(source, line, name);
                }
            }
        }
    }
}
