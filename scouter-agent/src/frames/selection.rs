//! Which Python functions become spans: `module:qualname` patterns, from the command line
//! (`--function`) and the configuration file (`[[functions]]`).
//!
//! A pattern is `MODULE:QUALNAME`, optionally followed by the names of the arguments to
//! capture in parentheses: `shop.orders:OrderService.place*(order_id,quantity)`. Both halves
//! are globs: `*` matches any run of characters (dots included), `?` exactly one. A rule may
//! be limited to some services (globs on `service.name`); without that it applies to every
//! traced process.

use std::fmt;

/// A glob over a name: `*` any run of characters, `?` one character, anything else itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_owned())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_matches(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative matching with one backtrack point (the last `*`): linear in practice, never
/// exponential.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("function pattern {0:?} has no ':' between the module and the qualified name (e.g. shop.orders:OrderService.place*)")]
    NoColon(String),
    #[error("function pattern {0:?} has an empty module or qualified name")]
    Empty(String),
    #[error("function pattern {0:?}: the argument list must end the pattern, as in name(arg1,arg2)")]
    BadArguments(String),
    #[error("function pattern {pattern:?}: {argument:?} is not a Python identifier")]
    BadArgumentName { pattern: String, argument: String },
}

/// One selection: which functions, and which of their arguments to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionPattern {
    pub module: Glob,
    pub qualname: Glob,
    pub arguments: Vec<String>,
}

impl FunctionPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.trim();
        let (target, arguments) = match text.split_once('(') {
            Some((target, rest)) => {
                let list = rest.strip_suffix(')').ok_or_else(|| PatternError::BadArguments(text.into()))?;
                (target, parse_arguments(text, list)?)
            }
            None => (text, Vec::new()),
        };
        let (module, qualname) = target.split_once(':').ok_or_else(|| PatternError::NoColon(text.into()))?;
        if module.trim().is_empty() || qualname.trim().is_empty() {
            return Err(PatternError::Empty(text.into()));
        }
        Ok(Self { module: Glob::new(module.trim()), qualname: Glob::new(qualname.trim()), arguments })
    }

    pub fn matches(&self, module: &str, qualname: &str) -> bool {
        self.module.matches(module) && self.qualname.matches(qualname)
    }

    /// Captures `names` too (the configuration file lists them apart from the pattern);
    /// `pattern` is the pattern as written, for the error.
    pub fn add_arguments(&mut self, pattern: &str, names: &[String]) -> Result<(), PatternError> {
        for name in names {
            let name = argument_name(pattern, name.trim())?;
            if !self.arguments.contains(&name) {
                self.arguments.push(name);
            }
        }
        Ok(())
    }
}

fn parse_arguments(pattern: &str, list: &str) -> Result<Vec<String>, PatternError> {
    list.split(',').map(str::trim).filter(|name| !name.is_empty()).map(|name| argument_name(pattern, name)).collect()
}

fn argument_name(pattern: &str, name: &str) -> Result<String, PatternError> {
    if is_identifier(name) {
        Ok(name.to_owned())
    } else {
        Err(PatternError::BadArgumentName { pattern: pattern.into(), argument: name.into() })
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// A pattern and the services it applies to (all when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRule {
    pub pattern: FunctionPattern,
    pub services: Vec<Glob>,
}

impl FunctionRule {
    fn applies_to(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|glob| glob.matches(service))
    }
}

/// Every rule the agent was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionSelection {
    pub rules: Vec<FunctionRule>,
}

impl FunctionSelection {
    /// Whether any rule may select functions in processes of `service`: only those get the
    /// per-call hook.
    pub fn applies_to(&self, service: &str) -> bool {
        self.rules.iter().any(|rule| rule.applies_to(service))
    }

    /// The arguments to capture if `module:qualname` is selected in `service`, `None` if not
    /// selected. Several matching rules capture the union of their arguments.
    pub fn select(&self, service: &str, module: &str, qualname: &str) -> Option<Vec<String>> {
        let mut selected = None;
        for rule in self.rules.iter().filter(|rule| rule.applies_to(service) && rule.pattern.matches(module, qualname))
        {
            let arguments: &mut Vec<String> = selected.get_or_insert_with(Vec::new);
            for name in &rule.pattern.arguments {
                if !arguments.contains(name) {
                    arguments.push(name.clone());
                }
            }
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_single_characters_and_dots() {
        let glob = Glob::new("OrderService.place*");
        assert!(glob.matches("OrderService.place"));
        assert!(glob.matches("OrderService.place_order"));
        assert!(!glob.matches("OrderService.cancel"));
        assert!(Glob::new("*").matches("a.b.<locals>.c"));
        assert!(Glob::new("shop.*").matches("shop.orders.db"));
        assert!(Glob::new("fib?").matches("fib2"));
        assert!(!Glob::new("fib?").matches("fib"));
        assert!(Glob::new("*a*b*c").matches("xxaxxbxxbxc"));
        assert!(!Glob::new("*a*b*c").matches("xxaxxbxxbx"));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exactly"));
    }

    #[test]
    fn patterns_parse_with_and_without_arguments() {
        let plain = FunctionPattern::parse("shop.orders:OrderService.place*").unwrap();
        assert_eq!(plain.module, Glob::new("shop.orders"));
        assert_eq!(plain.qualname, Glob::new("OrderService.place*"));
        assert!(plain.arguments.is_empty());
        let with = FunctionPattern::parse("app:fib(n, depth)").unwrap();
        assert_eq!(with.arguments, vec!["n".to_owned(), "depth".to_owned()]);
        assert!(with.matches("app", "fib"));
        assert!(!with.matches("app2", "fib"));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        assert_eq!(FunctionPattern::parse("fib"), Err(PatternError::NoColon("fib".into())));
        assert_eq!(FunctionPattern::parse(":fib"), Err(PatternError::Empty(":fib".into())));
        assert!(matches!(FunctionPattern::parse("a:fib(n"), Err(PatternError::BadArguments(_))));
        assert!(matches!(FunctionPattern::parse("a:fib(n-1)"), Err(PatternError::BadArgumentName { .. })));
    }

    #[test]
    fn arguments_listed_apart_are_checked_and_added_once() {
        let mut pattern = FunctionPattern::parse("app:fib(n)").unwrap();
        pattern.add_arguments("app:fib(n)", &["depth".into(), " n ".into()]).unwrap();
        assert_eq!(pattern.arguments, vec!["n".to_owned(), "depth".to_owned()]);
        assert!(matches!(
            pattern.add_arguments("app:fib(n)", &["not-a-name".into()]),
            Err(PatternError::BadArgumentName { .. })
        ));
    }

    #[test]
    fn rules_apply_to_their_services_and_merge_arguments() {
        let rule = |pattern: &str, services: &[&str]| FunctionRule {
            pattern: FunctionPattern::parse(pattern).unwrap(),
            services: services.iter().map(|s| Glob::new(s)).collect(),
        };
        let selection = FunctionSelection {
            rules: vec![rule("shop:Orders.*(order_id)", &["shop*"]), rule("shop:Orders.place(quantity)", &[])],
        };
        assert!(selection.applies_to("anything"));
        assert_eq!(
            selection.select("shop-api", "shop", "Orders.place"),
            Some(vec!["order_id".to_owned(), "quantity".to_owned()])
        );
        assert_eq!(selection.select("billing", "shop", "Orders.place"), Some(vec!["quantity".to_owned()]));
        assert_eq!(selection.select("billing", "shop", "Orders.cancel"), None);
        let narrow = FunctionSelection { rules: vec![rule("shop:*", &["shop"])] };
        assert!(!narrow.applies_to("billing"));
        assert!(FunctionSelection::default().select("shop", "shop", "x").is_none());
    }
}
